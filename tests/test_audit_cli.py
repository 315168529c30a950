"""pacsctl audit: the command each web host runs, the reading of Ansible's answers, the merge."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from pacs_libre import audit_cli
from pacs_libre.cli import main
from pacs_libre.errors import UserError

UID = "1.2.826.0.1.3680043.8.498.11"


def record(time_: str, user: str, **more: Any) -> dict[str, Any]:
    return {
        "time": time_,
        "event": "access",
        "outcome": "allowed",
        "user": user,
        "auth": "session",
        "studies": [UID],
        "client": "10.0.0.1",
        **more,
    }


def adhoc(hosts: dict[str, dict[str, Any]]) -> str:
    """What `ansible` prints with the ansible.posix.json callback (the parts that are read)."""
    return json.dumps({"plays": [{"tasks": [{"hosts": hosts}]}], "stats": {}})


def ok(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"changed": True, "rc": 0, "stdout": json.dumps(records), "stderr": ""}


def test_the_remote_command_is_checked_and_complete():
    argv = audit_cli.remote_command(patient="IPP42", study=None, since="2026-12-01", user="op")
    assert argv == [
        "pacs-web",
        "audit",
        "--patient",
        "IPP42",
        "--since",
        "2026-12-01",
        "--json",
        "--user",
        "op",
    ]
    assert audit_cli.remote_command(patient=None, study=UID, since=None, user="op")[2:4] == [
        "--study",
        UID,
    ]


@pytest.mark.parametrize(
    ("patient", "study", "since", "message"),
    [
        (None, None, None, "one of the two"),
        ("P1", UID, None, "one of the two"),
        ("P*", None, None, "no \\*"),
        ("", None, None, "1-64"),
        (None, "1.2.abc", None, "not a DICOM UID"),
        ("P1", None, "yesterday", "give a date"),
    ],
)
def test_bad_arguments_are_refused_before_any_host_is_asked(patient, study, since, message):
    with pytest.raises(UserError, match=message):
        audit_cli.remote_command(patient=patient, study=study, since=since, user="op")


def test_the_answers_are_read_per_host_and_failures_named():
    answers = audit_cli.parse_adhoc(
        adhoc(
            {
                "web1": ok([record("2026-12-02T10:00:00+00:00", "dr.a")]),
                "web2": {"unreachable": True, "msg": "ssh: connect to host web2: timed out"},
                "web3": {"failed": True, "rc": 2, "stdout": "", "stderr": "pacs-web: bad\n"},
                "web4": {"rc": 0, "stdout": "not json"},
            }
        )
    )
    assert [r["user"] for r in answers["web1"].records] == ["dr.a"]
    assert "timed out" in answers["web2"].error
    assert answers["web3"].error == "pacs-web: bad"
    assert "JSON" in answers["web4"].error
    with pytest.raises(UserError, match="no answer that can be read"):
        audit_cli.parse_adhoc("TASK [x] ***")


def test_the_merge_is_one_list_sorted_by_time_naming_each_host():
    answers = audit_cli.parse_adhoc(
        adhoc(
            {
                "web2": ok([record("2026-12-02T09:00:00.000+00:00", "dr.b")]),
                "web1": ok(
                    [
                        record("2026-12-02T10:00:00.000+00:00", "dr.a"),
                        record("2026-12-01T10:00:00.000+00:00", "dr.c"),
                    ]
                ),
            }
        )
    )
    rows = audit_cli.merge(answers)
    assert [(r["user"], r["host"]) for r in rows] == [
        ("dr.c", "web1"),
        ("dr.b", "web2"),
        ("dr.a", "web1"),
    ]


def test_pacsctl_audit_asks_every_web_host_and_prints_one_list(monkeypatch, capsys, tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    seen: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(command)
        assert kwargs["env"]["ANSIBLE_STDOUT_CALLBACK"] == "ansible.posix.json"
        out = adhoc(
            {
                "web1": ok([record("2026-12-02T10:00:00+00:00", "dr.a", patient=["P1"])]),
                "web2": ok([record("2026-12-01T10:00:00+00:00", "dr.b")]),
            }
        )
        return subprocess.CompletedProcess(command, 0, out, "")

    monkeypatch.setattr(audit_cli.subprocess, "run", fake_run)
    code = main(["audit", "-i", str(inventory), "--patient", "P1", "--format", "json"])
    assert code == 0
    (command,) = seen
    assert command[1:4] == ["pacs_web", "-i", str(inventory.resolve())]
    assert command[command.index("-m") + 1] == "ansible.builtin.command"
    argv = json.loads(command[command.index("-a") + 1])["argv"]
    assert argv[:4] == ["pacs-web", "audit", "--patient", "P1"] and "--json" in argv
    rows = json.loads(capsys.readouterr().out)
    assert [(r["user"], r["host"]) for r in rows] == [("dr.b", "web2"), ("dr.a", "web1")]
    assert main(["audit", "-i", str(inventory), "--patient", "P1"]) == 0
    out = capsys.readouterr().out
    assert "dr.a" in out and "web2" in out and "Accesses to patient P1" in out


def test_pacsctl_audit_fails_when_a_host_does_not_answer(monkeypatch, capsys, tmp_path):
    def fake_run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        out = adhoc({"web1": ok([]), "web2": {"unreachable": True, "msg": "no route"}})
        return subprocess.CompletedProcess(command, 4, out, "")

    monkeypatch.setattr(audit_cli.subprocess, "run", fake_run)
    code = main(["audit", "-i", str(tmp_path), "--study", UID, "--format", "json"])
    captured = capsys.readouterr()
    assert code == 1 and "web2: no answer (no route)" in captured.err
    assert json.loads(captured.out) == []
    assert main(["audit", "-i", str(tmp_path / "none"), "--study", UID]) == 2
    assert main(["audit", "-i", str(tmp_path)]) == 2
    assert main(["audit", "-i", str(tmp_path), "--study", UID, "--format", "xml"]) == 2
