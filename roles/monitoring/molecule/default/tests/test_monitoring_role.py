"""The monitoring role on a host of its own: rules, their unit tests, listeners."""

from __future__ import annotations

from pacs_testlib import host_spec

testinfra_hosts = [host_spec("pacs-mol-mon-role")]
TESTS = "/usr/local/lib/pacs-libre/monitoring/rules-tests"


def test_the_deployed_rules_pass_their_unit_tests(host):
    """promtool test rules, Debian 13's, against the rules as the role wrote them."""
    names = [n.removesuffix(".test.yml") for n in host.file(TESTS).listdir()]
    assert {"services", "storage", "database", "backups", "tls", "archive"} <= set(names)
    work = host.check_output("mktemp -d")
    host.run_expect([0], f"cp /etc/prometheus/rules/*.rules.yml {TESTS}/*.test.yml {work}/")
    for name in names:
        result = host.run(f"cd {work} && promtool test rules {name}.test.yml")
        assert result.rc == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr


def test_prometheus_loaded_every_rule_file(host):
    out = host.check_output("curl -sf http://127.0.0.1:9090/api/v1/rules")
    for group in ("pacs-services", "pacs-storage", "pacs-database", "pacs-backups", "pacs-tls"):
        assert f'"name":"{group}"' in out, group


def test_the_services_listen_on_the_host_only(host):
    for port in (9090, 9093, 9115, 9100):
        sockets = [s for s in host.socket.get_listening_sockets() if s.endswith(f":{port}")]
        assert sockets, f"nothing listens on {port}"
        assert all("127.0.0.1" in s for s in sockets), sockets


def test_alertmanager_has_its_route_and_inhibitions(host):
    out = host.check_output("amtool check-config /etc/prometheus/alertmanager.yml")
    assert "Found:" in out and "1 receivers" in out, out
    config = host.file("/etc/prometheus/alertmanager.yml").content_string
    assert "PacsHostDown" in config and "smtp.lab.invalid:25" in config


def test_the_sizing_plan_file_is_empty_without_a_sizing(host):
    plan = host.file("/var/lib/prometheus/node-exporter/pacs_plan.prom").content_string
    assert "pacs_plan_" not in plan.replace("pacs_plan.prom", "")
