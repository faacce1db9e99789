"""Failover drills in the lab: refused on an unhealthy cluster; under load, no acknowledged write lost."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image

from core.settings import Settings
from lab import LAB_CONFIG
from lab.lab import Lab
from tasks.drills import database_problems
from tasks.faults import VIP_WRITE_GAP
from tests.conftest import load_runbook
from tests.lab.conftest import patroni_cluster, ssh


def drill(*argv: str) -> int:
    chosen, rest = load_runbook("failover_drill").runbook([*argv, "--lab", "--yes"])
    return chosen.main(rest)


def records_since(moment: float, kind: str = "drill") -> list[dict]:
    """The drill records (or, with kind "soak", the soak records) written since `moment`."""
    paths = sorted((LAB_CONFIG.parent / "drills" / "lab").glob("*.json"))
    records = [json.loads(path.read_text()) for path in paths if path.stem.endswith("-soak") == (kind == "soak")]
    return [r for r in records if r["fault_at" if kind == "drill" else "started"] >= moment]


def test_a_drill_on_an_unhealthy_cluster_refuses_without_touching_anything(
    deployed: None, lab: Lab, lab_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    replica = next(m["name"] for m in patroni_cluster(lab)["members"] if m["role"] != "leader")
    leader = next(m["name"] for m in patroni_cluster(lab)["members"] if m["role"] == "leader")
    ssh(lab, replica, "sudo systemctl stop patroni")
    try:
        capsys.readouterr()
        assert drill("patroni") == 1
        out = capsys.readouterr().out
        assert f"refusing to start the drill, nothing was touched: {replica}:" in out, out
        assert ssh(lab, replica, "systemctl is-active patroni", check=False).stdout.strip() == "inactive"
        assert next(m["name"] for m in patroni_cluster(lab)["members"] if m["role"] == "leader") == leader
        probe = ssh(lab, "synapse1", "systemctl is-active matrix-drill-probe", check=False).stdout.strip()
        assert probe == "inactive" and ssh(lab, "synapse1", "test -e /run/matrix-drill", check=False).returncode == 1
    finally:
        ssh(lab, replica, "sudo systemctl start patroni")
    # Back to what the next drill demands (a restarted replica is "running" before it streams).
    deadline = time.monotonic() + 90
    while problems := database_problems(patroni_cluster(lab), lab_settings):
        assert time.monotonic() < deadline, problems
        time.sleep(1)


def test_every_drill_loses_no_acknowledged_write_and_leaves_the_platform_healthy(
    deployed: None, lab: Lab, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Three consecutive Patroni drills (stop, kill -9, network cut), the VIP, one etcd member, one Coturn, and
    LiveKit's Redis master killed; the HTML report holds each drill's timeline."""
    started, page = time.time(), tmp_path / "drills.html"
    code = drill("all", "--report", str(page))
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
    records = records_since(started)
    assert [(r["drill"], r["variant"]) for r in records] == [
        ("patroni", "stop"),
        ("patroni", "kill"),
        ("patroni", "partition"),
        ("vip", "haproxy"),
        ("etcd", "member"),
        ("coturn", "stop"),
        ("redis", "kill"),
    ]
    for record in records:
        assert record["verdict"] == "PASS" and record["writes_lost"] == 0, record
        assert record["turn_gap_s"] == 0, record  # some TURN server allocated throughout every drill
        # A Matrix client sent through the VIP throughout: every acknowledged message is in the room.
        assert record["messages_acknowledged"] > 20 and record["messages_lost"] == 0, record
        # A Sentinel client wrote to LiveKit's Redis throughout: every acknowledged write is on the master.
        assert record["redis_writes_acknowledged"] > 50 and record["redis_writes_lost"] == 0, record
    for record in records[:3]:
        assert record["writes_acknowledged"] > 100 and 0 < record["write_gap_s"] < 60, record
        assert record["detection_s"] is not None and record["rejoined_s"] is not None
    assert 0 < records[3]["http_gap_s"] < 10
    assert records[3]["write_gap_s"] <= VIP_WRITE_GAP  # the edge stopped: database writes go on (their own route)
    assert records[5]["detection_s"] < 5 and records[5]["rejoined_s"] is not None  # coturn1 failed, then served
    redis = records[6]  # the master's sentinels promoted its replica; the old master came back as a replica
    assert 0 < redis["redis_gap_s"] < 10 and redis["rejoined_s"] is not None and redis["write_gap_s"] <= 0.5, redis
    assert all(r["redis_gap_s"] < 1 for r in records[:6]), records  # no other fault touches it
    folder = LAB_CONFIG.parent / "drills" / "lab"
    timelines = [p for p in folder.glob("*.png") if p.stat().st_mtime >= started]
    assert len(timelines) == 7 and all(Image.open(p).size[0] == 1200 for p in timelines)
    assert page.read_text().count('<img src="data:image/png;base64,') == 7  # the report embeds each one
    members = patroni_cluster(lab)["members"]
    assert sorted(m["state"] for m in members) == ["running", "streaming", "streaming"]
    for probe in ("/run/matrix-drill", "/run/matrix-drill-messages"):
        assert ssh(lab, "synapse1", f"test -e {probe}", check=False).returncode == 1  # cleaned up
    assert ssh(lab, "monitoring1", "test -e /run/matrix-drill-redis", check=False).returncode == 1


def test_a_coturn_host_cut_off_leaves_the_other_serving(deployed: None, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.time()
    code = drill("coturn", "--variant", "partition")
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
    (record,) = records_since(started)
    assert record["target"] == "coturn1" and record["turn_gap_s"] == 0 and record["verdict"] == "PASS", record
    assert record["detection_s"] < 10 and record["rejoined_s"] is not None, record  # 3 × 1 s unanswered


def test_a_three_minute_soak_of_random_faults_loses_no_write_or_message(
    deployed: None, lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seed 7 begins Coturn stopped, the Redis master killed, a switchover, Keepalived stopped, the primary killed:
    one at a time, the platform healthy between them, every probe running throughout."""
    started = time.time()
    code = drill("soak", "--minutes", "3", "--seed", "7")
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
    (record,) = records_since(started, "soak")
    assert record["verdict"] == "PASS" and record["problems"] == [], record
    kinds = [f["kind"] for f in record["faults"]]
    assert kinds[:3] == ["coturn-stop", "redis-kill", "patroni-switchover"] and len(kinds) >= 4, kinds
    assert record["writes_lost"] == record["messages_lost"] == record["redis_writes_lost"] == 0, record
    assert record["writes_acknowledged"] > 1000 and record["messages_acknowledged"] > 500, record
    redis = record["faults"][1]["unavailable_s"]  # measured in the fault's own window, from acknowledgements
    assert 0 < redis["redis"] < 10 and redis["writes"] < 1, redis
    assert set(record["by_kind"]) == set(kinds)
    assert record["by_kind"]["coturn-stop"]["count"] == kinds.count("coturn-stop")
    assert "coturn-stop" in out and "p50/p95/max" in out
    pictures = [p for p in (LAB_CONFIG.parent / "drills" / "lab").glob("*-soak.png") if p.stat().st_mtime >= started]
    assert len(pictures) == 1 and Image.open(pictures[0]).size[0] == 1200
