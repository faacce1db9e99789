"""maintenance.py in the lab: a worker more and back touches only what it concerns; the
federation toggle closes and reopens 8448; the intranet transition resolves from /etc/hosts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import LAB_CONFIG
from lab.lab import Lab
from tests.conftest import load_runbook
from tests.lab.conftest import ssh
from tests.lab.test_edge_tier import wait_for
from tests.lab.test_monitoring_tier import health

# Beside config.lab.yaml, so it shares the lab's secrets (.secrets/ next to the config file).
VARIANT = LAB_CONFIG.parent / "config.lab.maintenance-test.yaml"
UNCHANGED = [
    "synapse.service",
    "synapse-worker@sync1.service",
    "synapse-worker@sync2.service",
    "synapse-worker@generic1.service",
    "synapse-worker@federation_sender1.service",
    "synapse-worker@event_persister1.service",
    "synapse-worker@event_persister2.service",
    "synapse-worker@media1.service",
]


def maintenance(*argv: str) -> int:
    chosen, rest = load_runbook("maintenance").runbook([*argv, "--lab"])
    return chosen.main(rest)


@pytest.fixture
def variant() -> Iterator[Path]:
    yield VARIANT
    VARIANT.unlink(missing_ok=True)


def invocations(lab: Lab, host: str, units: list[str]) -> dict[str, str]:
    """Each unit's InvocationID: it changes whenever the unit is (re)started."""
    out = ssh(lab, host, "systemctl show -p Id -p InvocationID --value " + " ".join(units)).stdout.split()
    return dict(zip(out[0::2], out[1::2], strict=True))


def test_a_worker_more_and_back_restarts_nothing_else(deployed: None, lab: Lab, variant: Path) -> None:
    before = invocations(lab, "synapse1", UNCHANGED)
    database = {h: invocations(lab, h, ["patroni.service"]) for h in ("patroni1", "patroni2", "patroni3")}
    edge = {h: invocations(lab, h, ["haproxy.service", "pgbouncer.service"]) for h in ("haproxy1", "haproxy2")}
    variant.write_text(LAB_CONFIG.read_text().replace("    sync: 2\n", "    sync: 3\n", 1))
    assert maintenance("workers", "--config", str(variant)) == 0
    assert ssh(lab, "synapse1", "systemctl is-active synapse-worker@sync3").stdout.strip() == "active"
    assert "198.18.1.61:28213" in ssh(lab, "haproxy1", "sudo cat /etc/haproxy/haproxy.cfg").stdout  # routed to
    assert health(lab)[("synapse", "198.18.1.61:29213")] == "up"  # scraped
    assert invocations(lab, "synapse1", UNCHANGED) == before
    assert {h: invocations(lab, h, ["patroni.service"]) for h in database} == database
    assert {h: invocations(lab, h, ["haproxy.service", "pgbouncer.service"]) for h in edge} == edge  # reloaded

    assert maintenance("workers") == 0  # config.lab.yaml again: two sync workers
    assert ssh(lab, "synapse1", "systemctl is-active synapse-worker@sync3", check=False).stdout.strip() == "inactive"
    assert ssh(lab, "synapse1", "test -e /etc/synapse/workers/sync3.yaml", check=False).returncode == 1
    assert "198.18.1.61:28213" not in ssh(lab, "haproxy1", "sudo cat /etc/haproxy/haproxy.cfg").stdout
    # Prometheus drops the target once its reloaded config has been applied, a moment later.
    wait_for(lambda: ("synapse", "198.18.1.61:29213") not in health(lab))
    assert invocations(lab, "synapse1", UNCHANGED) == before


def test_federation_off_closes_8448_and_on_opens_it(
    deployed: None, variant: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    variant.write_text(LAB_CONFIG.read_text().replace("synapse:\n", "synapse:\n  federation: false\n", 1))
    assert maintenance("federation", "--config", str(variant)) == 0
    assert "PASS  federation: federation off (synapse.federation): 8448 closed" in capsys.readouterr().out
    assert maintenance("federation") == 0
    assert "PASS  federation: 8448 /_matrix/federation/v1/version: HTTP 200" in capsys.readouterr().out


def test_the_intranet_transition_resolves_from_the_hosts_file_alone(
    deployed: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert maintenance("intranet") == 0
    out = capsys.readouterr().out
    assert "names resolve as expected from /etc/hosts alone" in out and "default route: none" in out
    assert "maintenance: no changes" in out
