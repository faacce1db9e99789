"""maintenance.py in the lab: a worker more and back touches only what it concerns; the
federation toggle closes and reopens 8448; the intranet transition resolves from /etc/hosts;
an update to another Synapse release (and back) restarts each process once while clients
are served; a rolling restart reboots hosts one at a time, the Patroni primary handing over first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core import artifacts
from core.matrix import MatrixClient
from core.probe import HttpsProbe
from core.settings import Settings
from lab import LAB_CONFIG
from lab.lab import Lab
from tasks import synapse
from tests.conftest import load_runbook
from tests.lab.conftest import patroni_cluster, ssh
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
    assert "16 hosts: nothing needs the internet; time: no time-sync daemon" in out  # nspawn hosts run none
    assert "maintenance: no changes" in out


PREVIOUS = "1.163.1"  # the patch release before the pinned one: same database schema


@pytest.fixture
def previous_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An artifact folder that pins PREVIOUS instead: a copy of the manifest, its wheel set
    locked and fetched from the package index (the cache's files reused), used while the
    fixture lasts."""
    folder = tmp_path / "artifacts"
    (folder / "cache").mkdir(parents=True)
    pinned = artifacts.manifest()["synapse"].version
    text = artifacts.MANIFEST.read_text()
    (folder / "manifest.yaml").write_text(
        text.replace(f"synapse:\n  version: {pinned}", f"synapse:\n  version: {PREVIOUS}")
    )
    for cached in artifacts.CACHE.glob("*.whl"):
        (folder / "cache" / cached.name).symlink_to(cached)
    monkeypatch.setattr(artifacts, "MANIFEST", folder / "manifest.yaml")
    monkeypatch.setattr(artifacts, "CACHE", folder / "cache")
    artifacts.lock("synapse", f"matrix-synapse[redis]=={PREVIOUS}")
    artifacts.fetch(artifacts.manifest()["synapse"])
    yield PREVIOUS


def running_venvs(lab: Lab) -> dict[str, str]:
    """Each running Synapse unit and the venv its process runs, as synapse1 reports them."""
    return synapse.parse_processes(ssh(lab, "synapse1", "sudo bash", input=synapse.PROCESSES).stdout).venvs


def not_ok(probe: HttpsProbe) -> list[str]:
    return [s.detail for s in probe.samples if not s.detail.startswith("200 ")]


def test_update_restarts_each_process_on_the_new_version_while_clients_are_served(
    deployed: None, lab: Lab, lab_settings: Settings, previous_release: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real version change (to the previous patch release and back): each process is
    restarted once, one at a time, and a client asking the worker-served
    /_matrix/client/versions through the VIP every 50 ms gets 200 throughout."""
    pinned = synapse.SYNAPSE_VENV.of(previous_release)
    units = list(running_venvs(lab))
    database = {h: invocations(lab, h, ["patroni.service"]) for h in ("patroni1", "patroni2", "patroni3")}
    ca = lab_settings.ca.cert_path
    with (
        HttpsProbe(lab_settings.vip, lab_settings.config.homeserver_fqdn, ca) as workers,
        HttpsProbe(
            lab_settings.vip,
            lab_settings.config.homeserver_fqdn,
            ca,
            path="/_matrix/client/v3/profile/@admin:lab.example",
        ) as main,
    ):
        assert maintenance("update") == 0
    out = capsys.readouterr().out
    print(out)
    assert running_venvs(lab) == dict.fromkeys(units, pinned)  # every process, none left behind
    assert len(units) == 8 and all(f"{unit}: " in out for unit in units)
    assert "drained in" in out and "UP in HAProxy after" in out
    print(f"/_matrix/client/versions: {len(workers.samples)} requests, not 200: {not_ok(workers)}")
    refused = [s.at for s in main.samples if not s.detail.startswith("200 ")]
    span = f"{refused[-1] - refused[0]:.2f} s" if refused else "none"
    print(f"main process (profile): {len(main.samples)} requests, {len(refused)} not 200 over {span}")
    assert workers.samples and not_ok(workers) == []
    assert {h: invocations(lab, h, ["patroni.service"]) for h in database} == database
    federation = MatrixClient(lab_settings.vip, lab_settings.config.homeserver_fqdn, ca, port=8448)
    assert federation.call("GET", "/_matrix/federation/v1/version")["server"]["version"] == previous_release


def test_update_back_to_the_pinned_release_then_no_changes(
    deployed: None, lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """The previous test left every process on the previous release: back to the pinned one."""
    assert maintenance("update") == 0
    assert set(running_venvs(lab).values()) == {synapse.pinned_venv()}
    kept = ssh(lab, "synapse1", f"ls {synapse.VENVS}").stdout.split()
    assert sorted(kept) == sorted([PREVIOUS, artifacts.manifest()["synapse"].version])  # the one to roll back to
    capsys.readouterr()
    assert maintenance("update") == 0
    assert "maintenance: no changes" in capsys.readouterr().out


REBOOTED = ["coturn1", "haproxy1", "patroni1", "patroni2", "patroni3"]


def boot_ids(lab: Lab) -> dict[str, str]:
    return {h: ssh(lab, h, "cat /proc/sys/kernel/random/boot_id").stdout.strip() for h in REBOOTED}


def test_rolling_restart_reboots_one_host_at_a_time_and_hands_the_primary_over_first(
    deployed: None, lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    before = boot_ids(lab)
    leader = next(m["name"] for m in patroni_cluster(lab)["members"] if m["role"] == "leader")
    assert maintenance("rolling-restart", "--yes", "--limit", ",".join(reversed(REBOOTED))) == 0
    out = capsys.readouterr().out
    print(out)
    after = boot_ids(lab)
    assert all(after[h] != before[h] for h in REBOOTED), (before, after)  # every host really rebooted
    lines = [line.split()[1] for line in out.splitlines() if line.strip().startswith("changed ")]
    assert lines == REBOOTED  # the rolling order, whatever --limit's order
    assert "switched over to " in out.split(f"changed  {leader}")[1].splitlines()[1]  # the primary handed over first
    members = patroni_cluster(lab)["members"]
    assert sorted(m["state"] for m in members) == ["running", "streaming", "streaming"], members
