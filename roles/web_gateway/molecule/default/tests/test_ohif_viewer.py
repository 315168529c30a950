"""The OHIF viewer role on the gateway's host (Debian 13): what reached it, what is served.

The viewer has no scenario of its own: it is served by this scenario's gateway, as
site.yml serves it (molecule/single-host serves it on Debian 12 too), and
test_web_gateway.py opens a real study in it in Chromium. This module checks the
release itself: its checksum, the files kept and left out, app-config.js, and that
a tarball that does not match its checksum stops the run. Check mode on the
converged host is test_web_gateway.py's last test.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests
from pacs_testlib import address_of, host_spec, lab_host, run_playbook, sign_in

HOSTS = ["pacs-mol-web-d13"]
ROOT = "/var/www/pacs-libre/ohif"
ROLE = Path(__file__).resolve().parents[4] / "ohif_viewer"

testinfra_hosts = [host_spec(name) for name in HOSTS]


def cache() -> Path:
    default = Path.home() / ".cache" / "pacs-libre"
    return Path(os.environ.get("PACS_LIBRE_CACHE") or default) / "ohif"


def credential(name: str) -> str:
    folder = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "credentials"
    return (folder / name).read_text().split()[0]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory, host) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("ca") / "ca.crt"
    path.write_text(host.check_output("cat /etc/pacs-libre/pki/ca.crt") + "\n")
    return str(path)


_SESSIONS: dict[str, str] = {}


def get(host, ca: str, path: str) -> requests.Response:  # type: ignore[no-untyped-def]
    url = f"https://{address_of(lab_host(host.backend.hostname))}"
    if url not in _SESSIONS:
        _SESSIONS[url] = sign_in(url, ca, "mol-viewer", credential("mol-viewer"))
    return requests.get(url + path, cookies={"pacs_session": _SESSIONS[url]}, verify=ca, timeout=60)


def test_the_release_is_served_through_the_current_link(host) -> None:  # type: ignore[no-untyped-def]
    link = host.file(f"{ROOT}/current")
    assert link.is_symlink
    assert link.linked_to == f"{ROOT}/releases/ohif-3.13.2-served"
    assert host.file(f"{ROOT}/current/index.html").exists
    markers = host.check_output(f"ls -A {ROOT}/current/ | grep '^.unpacked-' || true").split()
    assert len(markers) == 1


def test_only_the_served_files_reached_the_host(host) -> None:  # type: ignore[no-untyped-def]
    files = host.check_output(f"cd {ROOT}/current && find . -type f | sort").splitlines()
    assert "./index.html" in files and "./sw.js" in files
    assert any(name.endswith(".wasm") for name in files)
    assert not [name for name in files if name.endswith(".map")]
    assert not [name for name in files if name.startswith("./ort/")]
    assert not {"./_headers", "./_redirects", "./serve.json"} & set(files)
    # Owned by root, readable by nginx, writable by nobody else.
    assert (
        host.check_output(f"find {ROOT}/current/ -not -user root -o -perm /022 | wc -l").strip()
        == "0"
    )


def test_app_config_is_rendered_for_the_gateway(host, ca: str) -> None:  # type: ignore[no-untyped-def]
    served = get(host, ca, "/app-config.js")
    assert served.status_code == 200
    assert served.headers["Content-Type"].startswith("application/javascript")
    text = served.text
    assert text.strip() == host.check_output(f"cat {ROOT}/current/app-config.js").strip()
    config = json.loads(
        text[text.index("window.config = ") + len("window.config = ") : text.rindex(";")]
    )
    assert config["routerBasename"] == "/"
    assert config["defaultDataSourceName"] == "dicomweb"
    source = config["dataSources"][0]["configuration"]
    assert source["qidoRoot"] == source["wadoRoot"] == source["wadoUriRoot"] == "/dicom-web"
    assert source["omitQuotationForMultipartRequest"] is True
    assert source["supportsFuzzyMatching"] is False
    assert source["bulkDataURI"]["enabled"] is True


def test_deep_links_get_the_index_and_assets_their_own_type(host, ca: str) -> None:  # type: ignore[no-untyped-def]
    index = host.check_output(f"cat {ROOT}/current/index.html")
    for path in ("/viewer/anything", "/viewer?StudyInstanceUIDs=1.2.3", "/segmentation?x=1"):
        answer = get(host, ca, path)
        assert answer.status_code == 200, path
        assert answer.text.strip() == index.strip(), path
    wasm = host.check_output(f"cd {ROOT}/current && ls *.wasm | head -1")
    answer = get(host, ca, f"/{wasm}")
    assert answer.headers["Content-Type"] == "application/wasm"
    assert "max-age=2592000" in answer.headers.get("Cache-Control", "")


def test_the_csp_allows_exactly_the_inline_scripts_of_the_served_index(host, ca: str) -> None:  # type: ignore[no-untyped-def]
    summary = subprocess.run(
        [
            "python3",
            str(ROLE / "files" / "ohif_served.py"),
            str(cache() / "ohif-app-3.13.2.tgz"),
            _integrity(),
            str(Path(tempfile.mkdtemp()) / "served.tar.gz"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    hashes = json.loads(summary.stdout)["script_hashes"]
    assert len(hashes) == 2
    script_src = next(
        part
        for part in get(host, ca, "/").headers["Content-Security-Policy"].split(";")
        if part.strip().startswith("script-src")
    )
    assert script_src.split()[1:] == ["'self'", "'wasm-unsafe-eval'", *hashes]


def _integrity() -> str:
    defaults = (ROLE / "defaults" / "main.yml").read_text()
    return next(
        line.split()[1]
        for line in defaults.splitlines()
        if line.startswith("ohif_viewer_integrity:")
    )


def test_a_tarball_with_the_wrong_checksum_stops_the_run(tmp_path: Path) -> None:
    # The real tarball, checked against another checksum: the run stops on the
    # controller, says what to do, and the hosts keep their release.
    wrong = "sha512-" + "A" * 86 + "=="
    code, output = run_playbook(
        str(Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml"),
        "-e",
        f"ohif_viewer_integrity={wrong}",
        "--tags",
        "ohif_viewer",
    )
    assert code != 0
    assert "is not the expected" in output and "Fix: remove the file" in output
    for name in HOSTS:
        assert lab_host(name).file(f"{ROOT}/current/index.html").exists
