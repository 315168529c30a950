"""The lab's plain logic: image recipes, inventory reading, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyotp
import pytest
import yaml

from pacs_libre import lab
from pacs_libre.cli import main
from pacs_libre.errors import UserError
from pacs_libre.lab_cli import lab_totp

ROOT = Path(__file__).resolve().parents[1]
PACSCTL = str(Path(sys.executable).parent / "pacsctl")


def test_recipe_digest_is_stable_and_follows_the_recipe():
    first = lab.ImageRecipe.for_debian("13")
    assert first.digest == lab.ImageRecipe.for_debian("13").digest
    assert first.codename == "trixie"
    assert first.image == "localhost/pacs-libre-lab:debian13"
    more = lab.ImageRecipe(debian="13", codename="trixie", packages=(*first.packages, "vim"))
    assert more.digest != first.digest
    assert lab.ImageRecipe.for_debian("12").digest != first.digest


def test_the_preloaded_image_is_its_own_recipe_and_name():
    minimal = lab.ImageRecipe.for_debian("13")
    preloaded = lab.ImageRecipe.for_debian("13", preloaded=True)
    assert preloaded.image == "localhost/pacs-libre-lab:debian13-preloaded"
    assert preloaded.packages == minimal.packages
    assert preloaded.digest != minimal.digest
    assert "postgresql-17" in preloaded.preload
    assert "postgresql-15" in lab.ImageRecipe.for_debian("12", preloaded=True).preload
    assert lab.ImageRecipe.for_image(preloaded.image) == preloaded
    assert lab.ImageRecipe.for_image(minimal.image) == minimal
    with pytest.raises(UserError, match="not a lab image"):
        lab.ImageRecipe.for_image("docker.example/debian:13")


def test_each_release_takes_its_own_turn_on_the_shared_apt_cache():
    """A Debian 12 host and a Debian 13 host lock their own release's folder, never each other's."""
    twelve, thirteen = lab.apt_get_wrapper("bookworm"), lab.apt_get_wrapper("trixie")
    assert f"{lab.APT_CACHE_MOUNT}/bookworm/apt-get.lock /usr/bin/apt-get" in twelve
    assert f"{lab.APT_CACHE_MOUNT}/trixie/apt-get.lock /usr/bin/apt-get" in thirteen
    assert "{codename}" not in twelve + thirteen


def _yaml(path: str) -> dict[str, object]:
    return yaml.safe_load((ROOT / path).read_text())


@pytest.mark.parametrize("debian", ["13", "12"])
def test_the_preloaded_image_holds_every_package_of_the_archive_core(debian):
    """What base, pki, postgresql and orthanc install: a role that adds a package adds it here."""
    wanted = set()
    for role in ("base", "pki", "orthanc"):
        wanted |= set(_yaml(f"roles/{role}/vars/main.yml")[f"__{role}_packages"])
    postgresql = _yaml("roles/postgresql/vars/main.yml")
    version = str(postgresql["__postgresql_debian_versions"][debian])
    assert lab.PRELOAD_POSTGRESQL[debian] == version
    wanted |= {
        name.replace("{{ __postgresql_version }}", version)
        for name in postgresql["__postgresql_packages"]
    } | {"postgresql-common"}
    missing = wanted - set(lab.preload_packages(debian))
    assert not missing, f"add {sorted(missing)} to PRELOAD_COMMON in scripts/pacs_libre/lab.py"
    assert set(lab.PRELOAD_LOCALES) == set(_yaml("roles/base/defaults/main.yml")["base_locales"])


def test_unknown_debian_is_refused_with_the_choices():
    with pytest.raises(UserError, match="use one of 12, 13"):
        lab.ImageRecipe.for_debian("11")


def test_lab_inventory_describes_one_host_per_container():
    the_lab = lab.load_lab(ROOT / "inventories/lab")
    assert the_lab.name == "pacs-lab"
    assert the_lab.network == "pacs-lab"
    names = [h.name for h in the_lab.hosts]
    assert "pacs1" in names
    host = the_lab.hosts[names.index("pacs1")]
    assert host.container == "pacs-lab-pacs1"
    assert host.debian == "13"
    # Published ports are on 127.0.0.1 only: the model has no other address.
    assert all(isinstance(p[0], int) for p in host.ports)
    # The backup host is one more container of the same lab, with no published port.
    backup = the_lab.hosts[names.index("backup1")]
    assert backup.container == "pacs-lab-backup1"
    assert backup.ports == []


def _inventory(tmp_path: Path, body: str) -> Path:
    inv = tmp_path / "inv"
    inv.mkdir()
    (inv / "hosts.yml").write_text(body)
    return inv


def test_bad_published_port_names_the_file_host_and_key(tmp_path):
    inv = _inventory(
        tmp_path,
        "all:\n  hosts:\n    h1:\n      lab_ports:\n        - {host: web}\n",
    )
    with pytest.raises(UserError) as err:
        lab.load_lab(inv)
    message = str(err.value)
    assert "h1" in message
    assert "lab_ports[0]" in message
    assert str(inv) in message


def test_empty_inventory_is_refused(tmp_path):
    inv = _inventory(tmp_path, "all:\n  hosts: {}\n")
    with pytest.raises(UserError, match="declares no hosts"):
        lab.load_lab(inv)


def test_missing_inventory_is_refused_with_the_fix(tmp_path):
    with pytest.raises(UserError, match="--inventory"):
        lab.load_lab(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["lab", "status", "--format", "xml"], ["'--format'", "'xml'", "'table', 'json'"]),
        (["lab", "image", "--debian", "11"], ["Debian", "11", "13"]),
        (["lab", "status", "--inventory", "/nonexistent"], ["/nonexistent", "--inventory"]),
        (["lab", "nosuchcommand"], ["nosuchcommand"]),
    ],
)
def test_bad_cli_input_exits_2_with_one_line_that_names_the_fault(argv, needles):
    proc = subprocess.run([PACSCTL, *argv], capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pacsctl: error:")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} missing from: {lines[0]}"
    assert proc.stdout == ""


def test_version(capsys):
    from pacs_libre import __version__  # noqa: PLC0415

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pacsctl {__version__}"


def test_a_failed_converge_names_the_playbook_and_its_exit(tmp_path):
    """lab.converge runs the real ansible-playbook; a playbook that fails is named."""
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text("all:\n  hosts:\n    localhost: {}\n")
    playbook = tmp_path / "broken.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - not_a_module: {}\n"
    )
    with pytest.raises(lab.LabStepError, match=r"broken\.yml failed on the lab \(exit [1-9]"):
        lab.converge(inventory, playbook)


def test_containers_conf_sets_runc_and_ulimits_within_hard_limits():
    conf = (ROOT / ".config/containers/containers.conf").read_text()
    assert 'runtime = "runc"' in conf
    assert "nofile=1024:4096" in conf
    env = lab.podman_env()
    assert env["CONTAINERS_CONF"].endswith(".config/containers/containers.conf")


def test_the_virtualenv_does_not_shadow_dcmtk():
    """pynetdicom's demo apps share dcmtk's names; the Makefile removes them from .venv/bin."""
    venv_bin = Path(sys.executable).parent
    for name in ("storescu", "storescp", "findscu", "movescu", "echoscu"):
        assert not (venv_bin / name).exists(), f"{venv_bin / name} would shadow dcmtk's {name}"


def test_hosts_started_by_a_pinned_process_run_on_every_cpu() -> None:
    """Mitogen pins what Ansible starts to one CPU; the hosts must not inherit that pin.

    A process pinned to one CPU (as `pacsctl lab scenario up` is under a scenario's create
    step) calls lab.on_every_cpu(), then starts a child, as it starts podman: the child may
    run on every CPU this test may run on.
    """
    allowed = sorted(os.sched_getaffinity(0))
    code = (
        "import subprocess; from pacs_libre import lab; lab.on_every_cpu(); "
        "print(subprocess.run(['grep', 'Cpus_allowed_list', '/proc/self/status'],"
        " capture_output=True, text=True, check=True).stdout)"
    )
    proc = subprocess.run(
        ["taskset", "-c", str(allowed[-1]), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    mask = proc.stdout.split(":", 1)[1].strip()
    cpus: set[int] = set()
    for part in mask.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    assert cpus == set(allowed), f"the child runs on {mask}, not on {allowed}"


def test_status_shows_both_sites_and_their_dicom_endpoints(tmp_path, capsys):
    inv = tmp_path / "lab"
    (inv / "host_vars").mkdir(parents=True)
    (inv / "hosts.yml").write_text("all:\n  hosts:\n    pacs1:\n    relay1:\n")
    (inv / "host_vars/pacs1.yml").write_text(
        "lab_endpoints:\n  dicom: {host: 127.0.0.1, port: 4242, aet: MAIN}\n"
    )
    (inv / "host_vars/relay1.yml").write_text(
        "lab_network: lab-peripheral\nlab_site: peripheral\nlab_devices: [/dev/net/tun]\n"
        "lab_endpoints:\n  dicom_peripheral: {host: 127.0.0.1, port: 4252, aet: RELAY}\n"
    )
    the_lab = lab.load_lab(inv)
    relay = the_lab.hosts[[h.name for h in the_lab.hosts].index("relay1")]
    assert (relay.network, relay.site, relay.devices) == (
        "lab-peripheral",
        "peripheral",
        ["/dev/net/tun"],
    )
    assert main(["lab", "status", "--inventory", str(inv), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["networks"] == ["pacs-lab", "lab-peripheral"]
    sites = {h["name"]: (h["site"], h["network"]) for h in data["hosts"]}
    assert sites == {"pacs1": ("main", "pacs-lab"), "relay1": ("peripheral", "lab-peripheral")}
    assert set(data["endpoints"]) == {"dicom", "dicom_peripheral"}
    assert main(["lab", "status", "--inventory", str(inv)]) == 0
    table = capsys.readouterr().out
    assert "networks pacs-lab, lab-peripheral" in table
    assert "AE title RELAY at 127.0.0.1:4252" in table


def test_lab_totp_prints_the_code_of_the_seeded_secret(tmp_path):
    """`pacsctl lab totp` computes what a TOTP application shows for the lab's secret."""
    (tmp_path / ".credentials" / "totp").mkdir(parents=True)
    secret = pyotp.random_base32()
    (tmp_path / ".credentials" / "totp" / "lab-admin").write_text(secret + "\n")
    code, left = lab_totp(tmp_path, "lab-admin", now=1_000_000_000)
    assert code == pyotp.TOTP(secret).at(1_000_000_000)
    assert 1 <= left <= 30


def test_lab_totp_names_the_known_users_when_one_is_unknown(tmp_path):
    (tmp_path / ".credentials" / "totp").mkdir(parents=True)
    (tmp_path / ".credentials" / "totp" / "lab-admin").write_text("JBSWY3DPEHPK3PXP\n")
    with pytest.raises(UserError, match="lab-admin") as error:
        lab_totp(tmp_path, "lab-nobody")
    assert "sso_lab_totp_secrets" in str(error.value)
