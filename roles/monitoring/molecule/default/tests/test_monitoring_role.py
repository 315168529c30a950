"""The monitoring role on a host of its own: rules, their unit tests, listeners."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

from pacs_testlib import ExecTunnel, address_of, host_spec, lab_host, tcp_connects

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
    """Prometheus' own API, through a tunnel to the host's loopback, where it listens."""
    with ExecTunnel("pacs-mol-mon-role", 9090) as tunnel:
        url = f"{tunnel.url}/api/v1/rules"
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310
            rules = json.load(response)
    loaded = {group["name"] for group in rules["data"]["groups"]}
    for group in ("pacs-services", "pacs-storage", "pacs-database", "pacs-backups", "pacs-tls"):
        assert group in loaded, (group, sorted(loaded))


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


# The scrape between hosts: the Debian 12 server's node exporter, from the monitoring host.
NODE = "pacs-mol-mon-node"


def test_prometheus_scrapes_the_other_server_over_https(host):
    """Its target is up, over https, with the deployment CA and the scrape login."""
    with ExecTunnel("pacs-mol-mon-role", 9090) as tunnel:
        url = f"{tunnel.url}/api/v1/targets?state=active"
        deadline = time.monotonic() + 120
        while True:
            with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310
                targets = json.load(response)["data"]["activeTargets"]
            node = [t for t in targets if t["labels"].get("host") == NODE]
            if (node and node[0]["health"] == "up") or time.monotonic() > deadline:
                break
            time.sleep(3)
    assert node, f"no target for {NODE}: {[t['scrapeUrl'] for t in targets]}"
    assert node[0]["scrapeUrl"].startswith("https://"), node[0]["scrapeUrl"]
    assert node[0]["health"] == "up", node[0]["lastError"]


def test_the_other_server_refuses_a_scrape_without_the_login(host):
    """From the monitoring host: 401 without the login, and no plain HTTP at all."""
    node = lab_host(NODE)
    address = address_of(node)
    script = (
        "import ssl,sys,urllib.request,urllib.error\n"
        "url=sys.argv[1]\n"
        "try: urllib.request.urlopen(url, timeout=10, context=ssl.create_default_context())\n"
        "except urllib.error.HTTPError as e: print(e.code)\n"
        "except Exception as e: print(type(e).__name__)\n"
        "else: print(200)\n"
    )
    # The monitoring host trusts the deployment CA (the pki role puts it in the trust store).
    https = host.check_output(f"python3 -c '{script}' https://{address}:9100/metrics")
    assert https.strip() == "401", https
    plain = host.check_output(f"python3 -c '{script}' http://{address}:9100/metrics")
    assert plain.strip() != "200", f"plain HTTP answered: {plain}"


def test_the_other_servers_exporter_is_closed_to_any_other_host(host):
    """The firewall opens its port to the monitoring hosts only: this machine gets no answer."""
    node = lab_host(NODE)
    assert node.socket("tcp://0.0.0.0:9100").is_listening
    assert tcp_connects(host, address_of(node), 9100)
    with socket.socket() as probe:
        probe.settimeout(3)
        assert probe.connect_ex((address_of(node), 9100)) != 0, "this machine reached 9100"
