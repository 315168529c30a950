"""The preflight role on a real host: a good inventory passes, a broken one stops the run."""

from __future__ import annotations

import os
from pathlib import Path

from pacs_testlib import RECAP, host_spec, lab_host, run_playbook

HOST = "pacs-mol-preflight-d13"
SCENARIO = Path(__file__).resolve().parents[1]
PLAYBOOK = str(SCENARIO / "playbook-then-change.yml")

testinfra_hosts = [host_spec(HOST)]


def _marker(name: str) -> str:
    path = f"/root/preflight-{name}-{os.getpid()}"
    lab_host(HOST).run(f"rm -f {path}")
    return path


def _recent_files() -> str:
    """Files under /etc and /root changed since the host started (Ansible's own tmp aside)."""
    return lab_host(HOST).check_output(
        "find /etc /root -xdev -newer /etc/hostname -not -path '/root/.ansible*' | sort"
    )


def test_good_inventory_passes_and_the_playbook_goes_on():
    marker = _marker("good")
    rc, output = run_playbook(PLAYBOOK, "-e", f"marker_path={marker}")
    assert rc == 0, output[-3000:]
    assert f"ok: [{HOST}]" in output.split("Check the inventory, every host at once")[1]
    assert lab_host(HOST).file(marker).exists


def test_broken_inventory_reports_every_problem_and_changes_nothing():
    marker = _marker("broken")
    files_before = _recent_files()
    rc, output = run_playbook(
        PLAYBOOK,
        "-e",
        f"marker_path={marker}",
        inventories=[str(SCENARIO / "broken-inventory")],
    )
    assert rc != 0, output[-3000:]
    for expected in (
        "4 inventory problem(s); no host was changed",
        "pacs_dicom_aett: unknown variable: did you mean pacs_dicom_aet?",
        "pacs_dicom_nodes[0].aet: AE title 'PACS_MOL' of node 'ct' is already used by "
        f"the archive of {HOST}",
        "the sizing needs 1000.00 TB for the archive",
        "pacs_archive_admin_password: secret is still the placeholder CHANGEME",
    ):
        assert expected in output, f"{expected!r} not in:\n{output[-4000:]}"
    recap = {m["host"]: int(m["changed"]) for m in RECAP.finditer(output)}
    assert recap == {HOST: 0}
    assert not lab_host(HOST).file(marker).exists
    assert _recent_files() == files_before
