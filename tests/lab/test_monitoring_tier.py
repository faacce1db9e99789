"""Monitoring in the lab: Prometheus scrapes what the inventory says, and a stopped exporter
turns its target DOWN and fires its alert in Alertmanager."""

from __future__ import annotations

import json
import shlex
import time

from core.settings import Settings
from lab.lab import Lab
from tasks.monitoring import expected_targets
from tests.lab.conftest import ssh

MONITORING = "monitoring1"
PROMETHEUS = "http://198.18.1.71:9090"
ALERTMANAGER = "http://198.18.1.71:9093"

# Fetches a JSON document on the monitoring host and prints it.
GET = "import json, sys, urllib.request; print(json.dumps(json.load(urllib.request.urlopen(sys.argv[1], timeout=10))))"


def get(lab: Lab, url: str) -> dict | list:
    return json.loads(ssh(lab, MONITORING, f"python3 -c {shlex.quote(GET)} {shlex.quote(url)}").stdout)


def health(lab: Lab) -> dict[tuple[str, str], str]:
    data = get(lab, f"{PROMETHEUS}/api/v1/targets?state=active")
    return {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in data["data"]["activeTargets"]}


def wait_until(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(2)
    raise AssertionError(f"{what} not seen within {timeout:g} s")


def test_every_expected_target_is_up(deployed: None, lab: Lab, lab_settings: Settings) -> None:
    expected = expected_targets(lab_settings)
    states = health(lab)
    assert {target: states.get(target, "missing") for target in expected} == dict.fromkeys(expected, "up")
    assert set(states) == expected  # nothing scraped that the inventory does not explain


def test_probes_of_turn_and_the_vip_succeed(deployed: None, lab: Lab) -> None:
    result = get(lab, f"{PROMETHEUS}/api/v1/query?query=probe_success")["data"]["result"]
    probes = {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1] for r in result}
    assert {job for job, _ in probes} == {"coturn", "coturn-tls", "edge"}
    assert set(probes.values()) == {"1"}, probes


def test_prometheus_holds_the_databases_long_run_health(deployed: None, lab: Lab) -> None:
    """The platform's postgres-exporter queries: the transaction-ID age and the largest tables of the Synapse
    database with their dead rows, as the long-run alerts read them."""

    def query(expression: str) -> list[dict]:
        url = f"{PROMETHEUS}/api/v1/query?query={expression}"
        return get(lab, url)["data"]["result"]  # type: ignore[index,return-value]

    ages = wait_until(lambda: query("pg_platform_xid_oldest_age"), 60, "the transaction-ID age")
    assert {r["metric"]["host"] for r in ages} == {"patroni1", "patroni2", "patroni3"}
    assert all(0 < float(r["value"][1]) < 2**31 for r in ages)
    tables: dict[str, set[str]] = {}
    for row in query("pg_platform_table_total_bytes"):
        tables.setdefault(row["metric"]["host"], set()).add(row["metric"]["table"])
    assert {host: len(names) for host, names in tables.items()} == dict.fromkeys(
        ("patroni1", "patroni2", "patroni3"), 20
    )
    assert all("events" in names for names in tables.values()), tables
    assert query("pg_platform_table_dead_rows") and query("pg_platform_table_seconds_since_vacuum")


def test_a_stopped_exporter_goes_down_and_fires_its_alert(deployed: None, lab: Lab) -> None:
    target = ("node", "198.18.1.42:9101")  # coturn2's node-exporter
    ssh(lab, "coturn2", "sudo systemctl stop prometheus-node-exporter")
    stopped = time.monotonic()
    try:
        wait_until(lambda: health(lab)[target] == "down", 30, "coturn2's node target DOWN")
        print(f"\nnode target DOWN after {time.monotonic() - stopped:.1f} s")

        def firing() -> list[dict]:
            alerts = get(lab, f"{ALERTMANAGER}/api/v2/alerts?active=true")
            return [
                a
                for a in alerts
                if a["labels"].get("alertname") == "TargetDown"
                and a["labels"].get("host") == "coturn2"
                and a["labels"].get("job") == "node"
            ]

        # The rule waits 1 minute (for: 1m) before it fires.
        (alert,) = wait_until(firing, 150, "TargetDown for coturn2 in Alertmanager")
        print(f"TargetDown active in Alertmanager after {time.monotonic() - stopped:.1f} s (rule: for 1m)")
        assert alert["labels"]["severity"] == "critical" and alert["status"]["state"] == "active"
    finally:
        ssh(lab, "coturn2", "sudo systemctl start prometheus-node-exporter")
    wait_until(lambda: health(lab)[target] == "up", 30, "coturn2's node target UP again")
