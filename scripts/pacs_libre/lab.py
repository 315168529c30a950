"""The local lab: real systemd hosts in podman containers on one machine.

The lab is what ``make lab`` builds: one container per inventory host, booted
with systemd as PID 1 from a Debian root filesystem that ``debootstrap`` made
(no container registry is reachable), on a podman network of its own, with one
apt cache shared by every host of the same Debian release. Ansible then reaches
the hosts as hospitals reach their servers: over SSH at their podman network
address, with pipelining, with the lab's own key pair and pinned host keys,
kept beside the inventory (see ``lab_ssh``).

Everything that podman needs on this machine (runc, ulimits within the hard
limits) comes from the project's ``.config/containers/containers.conf``, named
by ``CONTAINERS_CONF``; nothing is written to ``/etc/containers``.

Every podman object the lab creates carries the label ``org.pacs-libre.lab``
and a name of its own, so the lab only ever touches what it made.

Why one module of about 1,030 lines: the image, the inventory's hosts and the
containers share the podman runner, the cache folder and the locks that keep two
scenarios from creating hosts at the same instant; split apart, each part would
import the other two. SSH (``lab_ssh``) and the CLI (``lab_cli``) are apart already.
The image part has grown with the preloaded image (``ImageRecipe`` to ``_stream``,
about 400 lines with its constants): it is the next to move to a module of its own,
over the runner and the cache folder, which would then be the only shared part.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacs_libre import lab_ssh
from pacs_libre.errors import UserError

LABEL = "org.pacs-libre.lab"
RECIPE_LABEL = "org.pacs-libre.recipe"
IMAGE_REPO = "localhost/pacs-libre-lab"

#: Debian major version -> codename. 13 is the default and primary target.
DEBIAN_RELEASES: dict[str, str] = {"13": "trixie", "12": "bookworm"}
DEFAULT_DEBIAN = "13"

#: Packages in the base image: what systemd needs to boot, and what Ansible needs to
#: manage a host (python3, python3-apt for the apt module, sudo for become, and
#: openssh-server, which Ansible connects to).
IMAGE_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-apt",
    "sudo",
    "iproute2",
    "ca-certificates",
    "openssh-server",
)

#: The preloaded image (``pacsctl lab image --preloaded``): the packages of the
#: archive core's roles (base, pki, postgresql, orthanc), installed and
#: configured as Debian installs them, with nothing of pacs-libre's set up, and
#: the base role's default locales generated; Orthanc and PostgreSQL are left
#: disabled. Every scenario but molecule/single-host and those of base, pki
#: and preflight starts from it, so they do not spend their time (and the
#: shared apt cache's turn) installing what molecule/single-host already
#: installs from the minimal image, on Debian 13 and 12. tests/test_lab.py checks that it
#: holds every package those roles install.
PRELOAD_COMMON: tuple[str, ...] = (
    # base
    "tzdata",
    "locales",
    "chrony",
    "nftables",
    "unattended-upgrades",
    "apt-listchanges",
    "openssh-server",
    "sudo",
    # pki
    "ca-certificates",
    "python3-cryptography",
    # postgresql (its server and client packages are per release, below)
    "postgresql-common",
    "python3-psycopg2",
    # orthanc
    "orthanc",
    "orthanc-postgresql",
    "orthanc-dicomweb",
    "orthanc-python",
    "stunnel4",
)
#: Debian's PostgreSQL major version per release (the postgresql role's table).
PRELOAD_POSTGRESQL: dict[str, str] = {"13": "17", "12": "15"}
#: Services of the preloaded packages left disabled in the image.
PRELOAD_DISABLED_UNITS: tuple[str, ...] = ("orthanc.service", "postgresql.service")
#: The base role's default locales, generated in the preloaded image.
PRELOAD_LOCALES: tuple[str, ...] = ("fr_FR.UTF-8", "en_US.UTF-8")


def preload_packages(debian: str) -> tuple[str, ...]:
    """The preloaded image's packages for one Debian release."""
    version = PRELOAD_POSTGRESQL[debian]
    return (*PRELOAD_COMMON, f"postgresql-{version}", f"postgresql-client-{version}")


#: Units that have no job in a container: masked in the image so the hosts boot to
#: `running`, not `degraded`.
IMAGE_MASKED_UNITS: tuple[str, ...] = (
    "getty.target",
    "console-getty.service",
    "systemd-remount-fs.service",
    "systemd-firstboot.service",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "proc-sys-fs-binfmt_misc.automount",
)

#: Bump when the way the image is made changes in a way the recipe does not show.
IMAGE_RECIPE_VERSION = 6

#: The hosts share one apt package cache, and apt refuses to work while another
#: apt holds its lock there (it cannot wait for it). In the lab image only,
#: apt-get (first on PATH) takes its turn through flock on the shared mount.
#: The turn is per Debian release, as the archive folder is: a Debian 12 host
#: and a Debian 13 host never share a file there, and install side by side.
APT_GET_WRAPPER = """#!/bin/sh
# pacs-libre lab image: the hosts of this Debian release share one apt cache;
# take turns using it.
exec flock --wait 900 /var/cache/pacs-libre-apt/{codename}/apt-get.lock /usr/bin/apt-get "$@"
"""


def apt_get_wrapper(codename: str) -> str:
    """The lab image's apt-get, which waits for its release's turn on the shared cache."""
    return APT_GET_WRAPPER.format(codename=codename)


#: Every host makes its own SSH host keys at first boot: keys baked into the image
#: would be the same on every host, and pinning them would prove nothing.
SSH_HOSTKEYS_UNIT = """[Unit]
Description=pacs-libre lab: make this host's own SSH host keys at first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
"""
SSH_HOSTKEYS_UNIT_NAME = "pacs-lab-ssh-hostkeys.service"

Runner = Callable[..., subprocess.CompletedProcess[str]]


def project_root() -> Path:
    """The checkout that holds this package (``scripts/pacs_libre`` -> root)."""
    env = os.environ.get("PACS_LIBRE_ROOT")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Where the lab keeps what outlives a checkout: root filesystems and apt caches.

    Shared by every clone on the machine, so CI in a fresh clone reuses the apt
    cache of earlier runs. ``PACS_LIBRE_CACHE`` overrides it.
    """
    env = os.environ.get("PACS_LIBRE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pacs-libre"


def tool(name: str) -> str:
    """A command from the project's virtualenv when pacsctl runs from it, else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def podman_env() -> dict[str, str]:
    """The environment for podman and Ansible: the project's containers.conf."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    env.setdefault("ANSIBLE_CONFIG", str(project_root() / "ansible.cfg"))
    if "CONTAINERS_CONF" not in env:
        env["CONTAINERS_CONF"] = str(project_root() / ".config/containers/containers.conf")
    return env


def run_tool(
    args: Sequence[str],
    *,
    check: bool = True,
    input_text: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run podman (or another tool) in the project's environment, output captured.

    A missing tool or a timeout is a one-line error; so is a non-zero exit when ``check``.
    """
    try:
        proc = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            env=podman_env(),
            input=input_text,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabStepError(" ".join(args[:3]), f"no answer after {timeout:.0f}s") from exc
    except FileNotFoundError as exc:
        raise UserError(
            f"'{args[0]}' is not installed: run `make prereqs` (as root) or install it with apt"
        ) from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit status {proc.returncode}"
        raise LabStepError(" ".join(args[:3]), last)
    return proc


class LabStepError(UserError):
    """A podman or image step failed; the message says which and how to retry."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"lab step '{step}' failed: {detail}")
        self.step = step


# --------------------------------------------------------------------------- image


@dataclass(frozen=True)
class ImageRecipe:
    """Everything that decides the content of a base image; its hash names the build."""

    debian: str
    codename: str
    packages: tuple[str, ...] = IMAGE_PACKAGES
    masked_units: tuple[str, ...] = IMAGE_MASKED_UNITS
    version: int = IMAGE_RECIPE_VERSION
    #: Installed after debootstrap for the preloaded image; empty for the minimal one.
    preload: tuple[str, ...] = ()
    locales: tuple[str, ...] = ()

    @classmethod
    def for_debian(cls, debian: str, *, preloaded: bool = False) -> ImageRecipe:
        if debian not in DEBIAN_RELEASES:
            known = ", ".join(sorted(DEBIAN_RELEASES))
            raise UserError(f"unknown Debian version '{debian}': use one of {known}")
        if preloaded:
            return cls(
                debian=debian,
                codename=DEBIAN_RELEASES[debian],
                preload=preload_packages(debian),
                locales=PRELOAD_LOCALES,
            )
        return cls(debian=debian, codename=DEBIAN_RELEASES[debian])

    @classmethod
    def for_image(cls, image: str) -> ImageRecipe:
        """The recipe of an image name that a scenario or inventory uses."""
        match = re.fullmatch(rf"{re.escape(IMAGE_REPO)}:debian(\d+)(-preloaded)?", image)
        if not match:
            raise UserError(
                f"'{image}' is not a lab image: use {IMAGE_REPO}:debian13 or "
                f"{IMAGE_REPO}:debian13-preloaded (or 12)"
            )
        return cls.for_debian(match.group(1), preloaded=bool(match.group(2)))

    @property
    def digest(self) -> str:
        blob = json.dumps(
            {
                "codename": self.codename,
                "packages": sorted(self.packages),
                "masked": sorted(self.masked_units),
                "version": self.version,
                "apt_get_wrapper": apt_get_wrapper(self.codename),
                "ssh_hostkeys_unit": SSH_HOSTKEYS_UNIT,
                # Only the preloaded image has these: the minimal one keeps its digest.
                **(
                    {
                        "preload": sorted(self.preload),
                        "locales": sorted(self.locales),
                        "disabled": sorted(PRELOAD_DISABLED_UNITS),
                        "createcluster": "create_main_cluster = false",
                    }
                    if self.preload
                    else {}
                ),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def image(self) -> str:
        """The image name that the lab and Molecule use."""
        return f"{IMAGE_REPO}:debian{self.debian}{'-preloaded' if self.preload else ''}"


def image_recipe_of(image: str) -> str | None:
    """The recipe digest that an existing image was built from, or None if absent."""
    proc = run_tool(["podman", "image", "inspect", image], check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout or "[]")
    if not data:
        return None
    labels = (data[0].get("Config") or {}).get("Labels") or {}
    value = labels.get(RECIPE_LABEL)
    return str(value) if value else None


def build_image(
    recipe: ImageRecipe,
    *,
    force: bool = False,
    progress: Callable[[str], None] = lambda _line: None,
) -> bool:
    """Build the base image unless one from the same recipe exists. True if built.

    Two builds of the same release (a lab and a test run) wait for each other.
    """
    if not force and image_recipe_of(recipe.image) == recipe.digest:
        return False
    with _exclusive(cache_dir() / "locks" / f"image-{recipe.codename}.lock"):
        if not force and image_recipe_of(recipe.image) == recipe.digest:
            return False
        _build_image(recipe, progress)
    return True


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_image(recipe: ImageRecipe, progress: Callable[[str], None]) -> None:
    if shutil.which("debootstrap") is None:
        raise UserError(
            "debootstrap is not installed: run `make prereqs` as root "
            "(or `apt-get install debootstrap`)"
        )
    root = cache_dir()
    debs = root / "debootstrap-debs" / recipe.codename
    debs.mkdir(parents=True, exist_ok=True)
    work = root / "rootfs"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{recipe.codename}-", dir=work) as tmp:
        target = Path(tmp) / "root"
        progress(f"debootstrap {recipe.codename} (about a minute)")
        _stream(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(recipe.packages)}",
                f"--cache-dir={debs}",
                recipe.codename,
                str(target),
            ],
            step=f"debootstrap {recipe.codename}",
            progress=progress,
        )
        progress(f"apt-get update in {recipe.codename}")
        _stream(
            ["chroot", str(target), "apt-get", "update"],
            step=f"apt-get update in {recipe.codename}",
            progress=progress,
        )
        if recipe.preload:
            _preload(target, recipe, progress)
        progress("preparing the root filesystem for systemd in a container")
        _prepare_rootfs(target, recipe)
        progress(f"importing {recipe.image}")
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(target), "-c", "."],
            stdout=subprocess.PIPE,
        )
        try:
            imported = subprocess.run(
                [
                    "podman",
                    "import",
                    "--change",
                    'CMD ["/sbin/init"]',
                    "--change",
                    "STOPSIGNAL SIGRTMIN+3",
                    "--change",
                    f"LABEL {RECIPE_LABEL}={recipe.digest}",
                    "--change",
                    f"LABEL {LABEL}=image",
                    "-",
                    recipe.image,
                ],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                env=podman_env(),
                check=False,
            )
        finally:
            if tar.stdout:
                tar.stdout.close()
            tar.wait()
        if tar.returncode != 0 or imported.returncode != 0:
            raise LabStepError("podman import", imported.stderr.strip() or "tar failed")
    run_tool(
        ["podman", "image", "prune", "--force", "--filter", f"label={LABEL}=image"], check=False
    )


#: While the preloaded image is built in its chroot, no service may start.
POLICY_RC_D = "#!/bin/sh\n# pacs-libre lab image build: start no service in the chroot.\nexit 101\n"


def _preload(target: Path, recipe: ImageRecipe, progress: Callable[[str], None]) -> None:
    """Install the preloaded image's packages in the chroot, as the roles would.

    postgresql-common goes first and is told to create no cluster, as the
    postgresql role does, so that the server package makes none. The packages
    come through the apt cache that the hosts share, bind-mounted for the time
    of the install.
    """
    policy = target / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    shared = cache_dir() / "apt"
    archives = shared / recipe.codename / "archives"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    mountpoint = target / "var/cache/apt/archives"
    # The hosts' apt-get takes its turn on the release's shared cache through
    # this lock (apt_get_wrapper); the build takes the same turn.
    turn = ["flock", "--wait", "900", str(shared / recipe.codename / "apt-get.lock")]
    env = ["env", "DEBIAN_FRONTEND=noninteractive"]
    # Recommends too, as the roles install them (apt's default).
    install = [*env, "apt-get", "install", "-y"]
    _stream(["mount", "--bind", str(archives), str(mountpoint)], step="mount", progress=progress)
    try:
        progress("installing postgresql-common (no cluster on install)")
        _stream(
            [*turn, "chroot", str(target), *install, "postgresql-common"],
            step=f"apt-get install postgresql-common in {recipe.codename}",
            progress=progress,
        )
        conf = target / "etc/postgresql-common/createcluster.conf"
        lab_note = "\n# pacs-libre lab image: no cluster on installation\n"
        conf.write_text(conf.read_text() + lab_note + "create_main_cluster = false\n")
        progress(f"installing {len(recipe.preload)} packages of the archive core")
        _stream(
            [*turn, "chroot", str(target), *install, *recipe.preload],
            step=f"apt-get install (preload) in {recipe.codename}",
            progress=progress,
        )
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)
    # Installed, not running: a host of the image that is no archive (a backup
    # or monitoring host) runs no stray Orthanc, and the roles that do want the
    # services enable them, as on a fresh server.
    _stream(
        ["chroot", str(target), "systemctl", "disable", *PRELOAD_DISABLED_UNITS],
        step="systemctl disable (preload)",
        progress=progress,
    )
    if recipe.locales:
        locale_gen = target / "etc/locale.gen"
        text = locale_gen.read_text()
        for name in recipe.locales:
            text = re.sub(rf"^# *({re.escape(name)} .*)$", r"\1", text, flags=re.MULTILINE)
        locale_gen.write_text(text)
        progress(f"generating {', '.join(recipe.locales)}")
        _stream(["chroot", str(target), "locale-gen"], step="locale-gen", progress=progress)
    policy.unlink()


def _prepare_rootfs(target: Path, recipe: ImageRecipe) -> None:
    """Make the debootstrap tree boot cleanly as a container and stay small."""
    # systemd generates a machine id at first boot when the file is empty.
    (target / "etc/machine-id").write_text("")
    (target / "etc/hostname").unlink(missing_ok=True)
    for unit in recipe.masked_units:
        link = target / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # The hosts mount one package cache shared by all (see apt_cache_mount), and
    # apt's archive folder points into it. Each host keeps its own package lists,
    # fresh from the build, like a newly installed server: check mode on a new
    # host can then tell which packages it would install.
    shared = f"{APT_CACHE_MOUNT}/{recipe.codename}"
    for binary_cache in (target / "var/cache/apt").glob("*.bin"):
        binary_cache.unlink()  # apt rebuilds them on first use
    shutil.rmtree(target / "var/cache/apt/archives")
    (target / "var/cache/apt/archives").symlink_to(f"{shared}/archives")
    (target / "etc/apt/apt.conf.d/00pacs-libre-lab-cache").write_text(
        "// pacs-libre lab: keep every package in the cache shared by all hosts.\n"
        'Binary::apt::APT::Keep-Downloaded-Packages "true";\n'
        'APT::Keep-Downloaded-Packages "true";\n'
    )
    for host_key in (target / "etc/ssh").glob("ssh_host_*"):
        host_key.unlink()
    unit_file = target / "etc/systemd/system" / SSH_HOSTKEYS_UNIT_NAME
    unit_file.write_text(SSH_HOSTKEYS_UNIT)
    wants = target / "etc/systemd/system/ssh.service.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / SSH_HOSTKEYS_UNIT_NAME).unlink(missing_ok=True)
    (wants / SSH_HOSTKEYS_UNIT_NAME).symlink_to(f"/etc/systemd/system/{SSH_HOSTKEYS_UNIT_NAME}")
    wrapper = target / "usr/local/bin/apt-get"
    wrapper.write_text(apt_get_wrapper(recipe.codename))
    wrapper.chmod(0o755)
    (target / "etc/pacs-libre-lab-recipe").write_text(
        f"debian={recipe.debian} codename={recipe.codename} recipe={recipe.digest}\n"
    )


def _stream(args: Sequence[str], *, step: str, progress: Callable[[str], None]) -> None:
    """Run a long command, passing each output line to ``progress``; keep the tail."""
    tail: list[str] = []
    with subprocess.Popen(
        list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=podman_env(),
    ) as proc:
        for raw in proc.stdout or ():
            line = raw.rstrip()
            if line:
                tail = [*tail[-19:], line]
                progress(line)
    if proc.returncode != 0:
        errors = [line for line in tail if line.startswith(("E:", "ERROR", "Error"))]
        raise LabStepError(
            step, " | ".join(errors[-2:] or tail[-3:]) or f"exit status {proc.returncode}"
        )


# ----------------------------------------------------------------------- inventory


@dataclass
class LabHost:
    """One lab host, as the inventory describes it."""

    name: str
    container: str
    debian: str = DEFAULT_DEBIAN
    #: (host_port, container_port, protocol) published on 127.0.0.1 only.
    ports: list[tuple[int, int, str]] = field(default_factory=list)
    endpoints: dict[str, Any] = field(default_factory=dict)
    #: The image to boot; empty means the lab image of ``debian``.
    image: str = ""
    #: A volume of its own on /srv (lab hosts keep their data through a recreate).
    srv_volume: bool = True
    #: More volumes (``SRC:DEST``) and capabilities (Molecule platforms name theirs).
    volumes: list[str] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=lambda: ["NET_ADMIN"])
    #: Its podman network; empty means the lab's (a peripheral site has its own).
    network: str = ""
    #: Devices passed through (``/dev/net/tun`` for a userspace WireGuard link).
    devices: list[str] = field(default_factory=list)
    #: The site of the territory it belongs to (what ``lab status`` groups by).
    site: str = "main"

    @property
    def image_name(self) -> str:
        return self.image or ImageRecipe.for_debian(self.debian).image


@dataclass
class Lab:
    """The lab described by an inventory: its hosts, network and names."""

    inventory: Path
    name: str
    network: str
    hosts: list[LabHost]
    #: Where the lab's SSH key pair, known_hosts and ssh config live (None: no SSH,
    #: as for the stock benchmark host).
    ssh_dir: Path | None = None

    @property
    def volume_prefix(self) -> str:
        return f"{self.name}-"

    def network_of(self, host: LabHost) -> str:
        """The podman network a host is on: its own, or the lab's."""
        return host.network or self.network

    @property
    def networks(self) -> list[str]:
        """Every network of the lab, the lab's own first."""
        found = [self.network]
        for host in self.hosts:
            if self.network_of(host) not in found:
                found.append(self.network_of(host))
        return found

    def host_volume(self, host: LabHost) -> str:
        return f"{host.container}-srv"


def load_lab(inventory: Path) -> Lab:
    """Read the lab's hosts and settings with ``ansible-inventory``.

    The inventory's ``lab_*`` variables say how each host is built:
    ``lab_name`` (the prefix of every podman object), ``lab_network`` (a host
    may have its own: a peripheral site's), ``lab_devices`` (passed through),
    ``lab_site`` (main, or the peripheral site's name), ``lab_debian`` (13 or
    12), ``lab_ports`` (published on 127.0.0.1) and ``lab_endpoints`` (what
    ``lab status`` shows).
    """
    if not inventory.exists():
        raise UserError(f"inventory '{inventory}' does not exist: pass --inventory inventories/lab")
    proc = run_tool(
        [tool("ansible-inventory"), "-i", str(inventory), "--list", "--export"],
        check=False,
    )
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines() or ["ansible-inventory failed"]
        raise UserError(f"cannot read inventory '{inventory}': {detail[-1]}")
    data = json.loads(proc.stdout)
    hostvars: dict[str, dict[str, Any]] = data.get("_meta", {}).get("hostvars", {})
    group_vars: dict[str, Any] = data.get("all", {}).get("vars", {})
    names = sorted(_hosts_of(data, "all"))
    if not names:
        raise UserError(f"inventory '{inventory}' declares no hosts")
    lab_name = str(group_vars.get("lab_name", "pacs-lab"))
    lab_network = str(group_vars.get("lab_network", lab_name))
    hosts: list[LabHost] = []
    for host in names:
        hv = {**group_vars, **hostvars.get(host, {})}
        ports = []
        for index, entry in enumerate(hv.get("lab_ports", []) or []):
            try:
                ports.append(
                    (int(entry["host"]), int(entry["container"]), str(entry.get("proto", "tcp")))
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise UserError(
                    f"{inventory}: host '{host}', key lab_ports[{index}]: expected "
                    "{host: PORT, container: PORT, proto: tcp|udp}"
                ) from exc
        hosts.append(
            LabHost(
                name=host,
                container=f"{lab_name}-{host}",
                debian=str(hv.get("lab_debian", DEFAULT_DEBIAN)),
                ports=ports,
                endpoints=dict(hv.get("lab_endpoints", {}) or {}),
                network=_own_network(hv, lab_network),
                devices=[str(d) for d in hv.get("lab_devices", []) or []],
                site=str(hv.get("lab_site", "main")),
            )
        )
    return Lab(
        inventory=inventory,
        name=lab_name,
        network=lab_network,
        hosts=hosts,
        ssh_dir=inventory.resolve() / ".ssh",
    )


def _own_network(hostvars: dict[str, Any], lab_network: str) -> str:
    """A host's own network, if not the lab's ("" then)."""
    own = str(hostvars.get("lab_network") or lab_network)
    return "" if own == lab_network else own


def scenario_lab(platforms: Sequence[dict[str, Any]], ssh_dir: Path) -> Lab:
    """The lab of a Molecule scenario, from its ``platforms`` (molecule.yml).

    A platform names its host (the container), its image, its network, its volumes,
    capabilities and devices, as the shared base config shows. The first platform's
    network names the scenario's podman objects; a host of another site may be on
    a network of its own (molecule/territory's peripheral site).
    """
    if not platforms:
        raise UserError("the scenario lists no platforms: molecule.yml needs at least one host")
    missing = [
        str(p.get("name", index)) for index, p in enumerate(platforms) if not p.get("network")
    ]
    if missing:
        raise UserError(f"molecule.yml: platforms {missing} need a 'network'")
    network = str(platforms[0]["network"])
    hosts = []
    for index, platform in enumerate(platforms):
        name, image = platform.get("name"), str(platform.get("image", ""))
        if not name or not image:
            raise UserError(f"molecule.yml: platforms[{index}] needs a name and an image")
        hosts.append(
            LabHost(
                name=str(name),
                container=str(name),
                debian=ImageRecipe.for_image(image).debian,
                image=image,
                srv_volume=False,
                volumes=[str(v) for v in platform.get("volumes", []) or []],
                capabilities=[str(c) for c in platform.get("capabilities", []) or []],
                network="" if str(platform["network"]) == network else str(platform["network"]),
                devices=[str(d) for d in platform.get("devices", []) or []],
            )
        )
    return Lab(inventory=ssh_dir, name=network, network=network, hosts=hosts, ssh_dir=ssh_dir)


def _hosts_of(data: dict[str, Any], group: str, seen: set[str] | None = None) -> set[str]:
    seen = seen if seen is not None else set()
    if group in seen:
        return set()
    seen.add(group)
    entry = data.get(group, {})
    hosts = set(entry.get("hosts", []))
    for child in entry.get("children", []):
        hosts |= _hosts_of(data, child, seen)
    return hosts


# --------------------------------------------------------------------- containers


APT_CACHE_MOUNT = "/var/cache/pacs-libre-apt"
#: Seconds a `podman run` of a lab host may take before it is retried once.
RUN_TIMEOUT = 120.0


def apt_cache_mount() -> str:
    """The bind mount of the apt cache shared by every lab and test host.

    The image links apt's archive folder to
    ``/var/cache/pacs-libre-apt/<codename>/archives``, one per Debian release.
    """
    base = cache_dir() / "apt"
    for codename in DEBIAN_RELEASES.values():
        (base / codename / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    return f"{base}:{APT_CACHE_MOUNT}"


def container_state(name: str) -> dict[str, Any] | None:
    proc = run_tool(["podman", "container", "inspect", name], check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout or "[]")
    return data[0] if data else None


def _image_id(image: str) -> str | None:
    proc = run_tool(["podman", "image", "inspect", "--format", "{{.Id}}", image], check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


@contextmanager
def podman_changes() -> Iterator[None]:
    """One podman creation at a time on this machine, whoever asks (a lab, a scenario).

    podman 4.3 can spin and then fail with "container creation timeout" when two
    `podman run` start at once, as when make test runs scenarios side by side.
    """
    with _exclusive(cache_dir() / "locks" / "podman-changes.lock"):
        yield


def ensure_networks(lab: Lab) -> list[str]:
    """Create the lab's networks that do not exist; the names of those created."""
    created = []
    for network in lab.networks:
        if run_tool(["podman", "network", "exists", network], check=False).returncode == 0:
            continue
        with podman_changes():
            run_tool(["podman", "network", "create", "--label", f"{LABEL}={lab.name}", network])
        created.append(network)
    return created


def on_every_cpu() -> None:
    """Let this process, and the hosts it starts from now on, run on every CPU.

    A host's conmon, its systemd and every service in it keep the CPU mask of the
    podman that started them. Under Ansible's Mitogen strategy (ansible.cfg) that
    mask is Mitogen's: it pins its processes and what they start (a scenario's
    create step runs `pacsctl lab scenario up`) to CPUs, on two cores all of them
    to CPU 1 (ansible_mitogen/affinity.py). Every host of every scenario then
    shared one core while the other stayed idle.
    """
    cpus = os.cpu_count() or 1
    # The cpuset, if narrower, still bounds it: the kernel keeps the intersection.
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, range(cpus))


def ensure_host(lab: Lab, host: LabHost) -> str:
    """Start a host's container, reusing what exists. Returns what was done."""
    on_every_cpu()
    image = host.image_name
    state = container_state(host.container)
    if state is not None:
        status = str(state.get("State", {}).get("Status", ""))
        stale = _image_id(image) not in {None, state.get("Image")}
        note = (
            f"; it runs an older {image}: `pacsctl lab down` then `pacsctl lab up` "
            "to move it (its /srv volume is kept)"
            if stale
            else ""
        )
        if status == "running":
            # podman's record can outlive the container's processes (they were
            # ended with the machine's session, and conmon with them): exec then
            # fails with "cannot exec in a stopped container". Such a host is
            # replaced below; its data lives in its volume.
            alive = run_tool(["podman", "exec", host.container, "true"], check=False)
            if alive.returncode == 0:
                return f"reused (running){note}"
            status = "dead"
        if status in {"exited", "stopped", "created", "configured"}:
            start = run_tool(["podman", "start", host.container], check=False)
            if start.returncode == 0:
                return f"restarted (was {status}){note}"
        # A leftover that cannot start (killed mid-creation, network gone, dead):
        # its data lives in the volume, so replacing the container loses nothing.
        run_tool(["podman", "rm", "--force", host.container])
    args = [
        "podman",
        "run",
        "--detach",
        "--name",
        host.container,
        "--hostname",
        host.name,
        "--label",
        f"{LABEL}={lab.name}",
        "--network",
        lab.network_of(host),
        "--network-alias",
        host.name,
        "--systemd=always",
    ]
    # NET_ADMIN: nftables (the base role's firewall) and chrony in a container.
    for capability in host.capabilities:
        args += ["--cap-add", capability]
    # /dev/net/tun: wireguard-go, where the kernel has no WireGuard (the site link).
    for device in host.devices:
        args += ["--device", device]
    if host.srv_volume:
        volume = lab.host_volume(host)
        if run_tool(["podman", "volume", "exists", volume], check=False).returncode != 0:
            run_tool(["podman", "volume", "create", "--label", f"{LABEL}={lab.name}", volume])
        args += ["--volume", f"{volume}:/srv"]
    for volume_spec in host.volumes or [apt_cache_mount()]:
        args += ["--volume", volume_spec]
    for host_port, container_port, proto in host.ports:
        args += ["--publish", f"127.0.0.1:{host_port}:{container_port}/{proto}"]
    args += [image, "/sbin/init"]
    # A `podman run` here takes seconds. podman 4.3 has been seen to spin on one
    # for many minutes and then fail ("container creation timeout"): give it a
    # bound, remove what it left, and try once more.
    with podman_changes():
        try:
            run_tool(args, timeout=RUN_TIMEOUT)
        except LabStepError:
            run_tool(["podman", "rm", "--force", "--time", "5", host.container], check=False)
            run_tool(args, timeout=RUN_TIMEOUT)
    return "created"


def wait_booted(host: LabHost, timeout: float = 90.0) -> str:
    """Wait until systemd in the host has finished booting; return its state."""
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        proc = run_tool(
            ["podman", "exec", host.container, "systemctl", "is-system-running"], check=False
        )
        state = proc.stdout.strip() or "starting"
        if state in {"running", "degraded"}:
            return state
        time.sleep(1)
    raise LabStepError(
        f"boot {host.name}",
        f"systemd is still '{state}' after {timeout:.0f}s; "
        f"look with `pacsctl lab shell {host.name}` then `systemctl --failed`",
    )


def network_address(lab: Lab, host: LabHost) -> str:
    """The host's IPv4 address on its network, as podman assigned it."""
    state = container_state(host.container) or {}
    networks = (state.get("NetworkSettings") or {}).get("Networks") or {}
    network = lab.network_of(host)
    address = str((networks.get(network) or {}).get("IPAddress") or "")
    if not address:
        raise LabStepError(
            f"address of {host.name}",
            f"{host.container} has no address on network {network}; "
            "`pacsctl lab down` then `pacsctl lab up` recreates it",
        )
    return address


def grant_ssh(lab: Lab) -> Path:
    """Let Ansible in over SSH: the lab's key on every host, their host keys pinned.

    This is the one step that goes through ``podman exec``, because SSH cannot be
    trusted before it: it installs the lab's public key for root and reads the
    host key that each host made at its first boot. Returns the ssh config's path.
    """
    if lab.ssh_dir is None:
        raise UserError(f"lab '{lab.name}' has no folder for its SSH files")
    lab_ssh.ensure_key_pair(lab.ssh_dir)
    authorize = lab_ssh.authorize_script(lab_ssh.public_key(lab.ssh_dir))
    endpoints = []
    for host in lab.hosts:
        run_tool(["podman", "exec", host.container, "sh", "-c", authorize])
        # The host key exists once ssh.service has started (its first-boot unit).
        run_tool(["podman", "exec", host.container, "systemctl", "start", "ssh.service"])
        host_key = run_tool(["podman", "exec", host.container, "cat", lab_ssh.HOST_KEY]).stdout
        key_type, key_data = host_key.split()[:2]
        endpoints.append(
            lab_ssh.Endpoint(host.container, network_address(lab, host), f"{key_type} {key_data}")
        )
    config = lab_ssh.write_files(lab.ssh_dir, endpoints)
    for endpoint in endpoints:
        lab_ssh.wait_reachable(config, endpoint.alias, endpoint.address)
    return config


def start(
    lab: Lab,
    *,
    progress: Callable[[str], None] = lambda _text: None,
    report: Callable[[str], None] = lambda _line: None,
) -> Path:
    """Start every host of a lab (or a scenario), wait for systemd, then let Ansible in.

    ``progress`` hears what is under way, ``report`` one line per thing done.
    Returns the ssh config's path.
    """
    for network in ensure_networks(lab):
        report(f"created network {network}")
    for host in lab.hosts:
        progress(f"host {host.name}: starting")
        what = ensure_host(lab, host)
        progress(f"host {host.name}: waiting for systemd")
        state = wait_booted(host)
        report(f"{host.name} ({host.container}): {what}, systemd {state}")
    progress("SSH: installing the key, pinning the host keys")
    config = grant_ssh(lab)
    report(f"SSH: every host answers; `ssh -F {config} <container>`")
    return config


def converge(inventory: Path, playbook: Path) -> None:
    """Run ``playbook`` on the lab of ``inventory``, its output shown as it runs."""
    cmd = [tool("ansible-playbook"), "-i", str(inventory.resolve()), str(playbook.resolve())]
    proc = subprocess.run(cmd, env=podman_env(), cwd=project_root(), check=False)
    if proc.returncode != 0:
        raise LabStepError(
            "converge",
            f"{playbook} failed on the lab (exit {proc.returncode}): "
            "the failed task is shown above",
        )


def lab_containers(lab_name: str) -> list[dict[str, Any]]:
    proc = run_tool(
        [
            "podman",
            "ps",
            "--all",
            "--filter",
            f"label={LABEL}={lab_name}",
            "--format",
            "json",
        ],
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    data = json.loads(proc.stdout)
    return list(data) if isinstance(data, list) else []


def down(lab: Lab, *, purge: bool = False) -> list[str]:
    """Remove the lab's hosts (and with purge, their volumes and network)."""
    done = []
    for entry in lab_containers(lab.name):
        name = (entry.get("Names") or ["?"])[0]
        run_tool(["podman", "rm", "--force", "--time", "20", name])
        done.append(f"removed host {name}")
    if purge:
        proc = run_tool(
            ["podman", "volume", "ls", "--filter", f"label={LABEL}={lab.name}", "--format", "json"],
            check=False,
        )
        for volume in json.loads(proc.stdout or "[]") if proc.returncode == 0 else []:
            run_tool(["podman", "volume", "rm", "--force", volume["Name"]])
            done.append(f"removed volume {volume['Name']}")
        done += _remove_network_and_keys(lab)
    return done


def _remove_network_and_keys(lab: Lab) -> list[str]:
    done = []
    for network in lab.networks:
        if run_tool(["podman", "network", "exists", network], check=False).returncode == 0:
            run_tool(["podman", "network", "rm", "--force", network])
            done.append(f"removed network {network}")
    if lab.ssh_dir is not None and lab_ssh.remove_files(lab.ssh_dir):
        done.append(f"removed SSH keys {lab.ssh_dir}")
    return done


def scenario_down(lab: Lab) -> list[str]:
    """Remove a scenario's hosts by name (a leftover of any earlier run too), its network
    and its SSH folder."""
    done = []
    with podman_changes():
        for host in lab.hosts:
            if container_state(host.container) is not None:
                run_tool(["podman", "rm", "--force", "--time", "10", host.container])
                done.append(f"removed host {host.container}")
        done += _remove_network_and_keys(lab)
    return done


def status(lab: Lab) -> dict[str, Any]:
    """The hosts, their state and the service endpoints, as plain data."""
    found = {(e.get("Names") or [""])[0]: e for e in lab_containers(lab.name)}
    hosts = []
    endpoints: dict[str, Any] = {}
    for host in lab.hosts:
        entry = found.get(host.container)
        state = str(entry.get("State", "unknown")) if entry else "absent"
        address = ""
        if state == "running":
            with contextlib.suppress(LabStepError):
                address = network_address(lab, host)
        hosts.append(
            {
                "name": host.name,
                "container": host.container,
                "site": host.site,
                "network": lab.network_of(host),
                "state": state,
                "address": address,
                "ssh": f"ssh -F {lab.ssh_dir / 'config'} {host.container}"
                if address and lab.ssh_dir is not None
                else "",
                "debian": host.debian,
                "image": str(entry.get("Image", "")) if entry else "",
                "ports": [
                    {"host": f"127.0.0.1:{hp}", "container": cp, "proto": proto}
                    for hp, cp, proto in host.ports
                ],
            }
        )
        for key, value in host.endpoints.items():
            endpoints[key] = value
    return {
        "lab": lab.name,
        "inventory": str(lab.inventory),
        "network": lab.network,
        "networks": lab.networks,
        "hosts": hosts,
        "endpoints": endpoints,
    }


@contextmanager
def timed() -> Iterator[Callable[[], float]]:
    start = time.monotonic()
    yield lambda: time.monotonic() - start
