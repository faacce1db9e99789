"""The soak's decisions and arithmetic offline: its seeded schedule, each fault's unavailability in its own
window, the per-kind figures and the verdict; and the mesh Redis's health read from what its sentinels and
servers answer."""

from __future__ import annotations

import itertools
from dataclasses import asdict

from nornir.core.task import AggregatedResult, MultiResult, Result

from core.settings import Settings
from tasks import redis_probe
from tasks.drills import Record
from tasks.soak import KINDS, PAUSE, Soak, longest_gap, measure_faults, percentile, schedule, soaks_of


def test_the_schedule_is_the_seed_s_and_brings_every_kind_before_one_repeats() -> None:
    kinds = list(KINDS)
    first = list(itertools.islice(schedule(7, kinds), 3 * len(kinds)))
    assert first == list(itertools.islice(schedule(7, kinds), 3 * len(kinds)))  # the same seed, the same soak
    assert first != list(itertools.islice(schedule(8, kinds), 3 * len(kinds)))
    for round_ in range(3):
        assert sorted(p.kind for p in first[round_ * len(kinds) : (round_ + 1) * len(kinds)]) == sorted(kinds)
    assert all(PAUSE[0] <= p.pause <= PAUSE[1] for p in first)


def fault(kind: str, at: float, problems: list[str] | None = None) -> Record:
    drill, variant = kind.split("-")
    record = Record(drill, variant, "x", kind, fault_at=at)
    record.problems = problems or []
    return record


def test_each_fault_is_measured_in_its_own_window_from_acknowledgements() -> None:
    whole = Record("soak", "1 min", "platform", "", fault_at=100.0, restored_at=200.0)
    # Writes acknowledged every second, except from 110 to 114 (the first fault) and 150 to 152 (the second).
    times = [t for t in range(99, 200) if not 110 < t < 114 and not 150 < t < 152]
    whole.samples = [(float(t), True, "writes") for t in times] + [(111.0, False, "writes")]
    whole.samples += [(111.5, False, "messages"), (112.0, False, "messages"), (151.0, False, "messages")]
    run = Soak(1, 1.0, whole, [fault("patroni-kill", 109.5), fault("vip-haproxy", 149.5)])
    measure_faults(run)
    assert run.gaps == [{"writes": 4.0, "messages": None}, {"writes": 2.0, "messages": None}]  # each window's own
    assert run.errors == [2, 1]  # the Matrix client's failed sends, counted where they happened
    assert longest_gap(whole.samples, "writes", 100, 105) == 1.0 and longest_gap([], "writes", 0, 1) is None
    assert percentile([1, 2, 3, 4, 10], 0.5) == 3 and percentile([1, 2, 3, 4, 10], 0.95) == 10


def test_figures_per_kind_and_the_verdict() -> None:
    whole = Record("soak", "3 min", "platform", "", fault_at=0.0, restored_at=300.0)
    faults = [fault("patroni-kill", 10), fault("patroni-kill", 100), fault("redis-kill", 200, ["no replica promoted"])]
    gaps = [{"writes": 20.0, "redis": 0.1}, {"writes": 10.0, "redis": None}, {"redis": 3.5}]
    run = Soak(3, 3.0, whole, faults, gaps, [40, 2, 0])
    kinds = run.by_kind()
    assert kinds["patroni-kill"]["count"] == 2 and kinds["patroni-kill"]["client_errors"] == 42
    assert kinds["patroni-kill"]["writes"] == {"p50": 10.0, "p95": 20.0, "max": 20.0}
    assert kinds["patroni-kill"]["messages"] is None and kinds["redis-kill"]["redis"]["max"] == 3.5
    assert run.problems == ["redis-kill on x: no replica promoted"]
    whole.problems.append("2 acknowledged writes lost: [5, 6]")
    run.stopped = "etcd: member unhealthy"
    assert run.summary()["verdict"] == "FAIL" and len(run.problems) == 3
    assert Soak(1, 1.0, Record("soak", "", "", "")).problems == ["no fault ran"]  # a soak that faulted nothing


def test_a_soak_survives_its_trip_through_the_nornir_result() -> None:
    whole = Record("soak", "1 min", "platform", "", fault_at=1.0, restored_at=2.0)
    whole.samples = [(1.5, True, "writes")]
    run = Soak(5, 1.0, whole, [fault("etcd-member", 1.2)], [{"writes": 0.05}], [0])
    result = AggregatedResult("soak")
    result["synapse1"] = MultiResult("soak")
    result["synapse1"].append(Result(host=None, result=asdict(run)))
    (back,) = soaks_of(result)
    assert back.summary() == run.summary() and back.whole.samples == [(1.5, True, "writes")]


HEALTHY = """sentinel 198.18.1.51 198.18.1.52 OK
sentinel 198.18.1.52 198.18.1.52 OK
sentinel 198.18.1.71 198.18.1.52 OK
server 198.18.1.51 slave 198.18.1.52 6379 connected
server 198.18.1.52 master 4711 198.18.1.51
"""


def test_the_mesh_redis_is_healthy_with_one_master_its_connected_replica_and_a_quorum(
    lab_settings: Settings,
) -> None:
    assert redis_probe.cluster_problems(HEALTHY, lab_settings) == []
    assert redis_probe.master_of(HEALTHY) == "198.18.1.52"
    syncing = HEALTHY.replace("6379 connected", "6379 sync")  # the returning master still copies the data
    assert redis_probe.cluster_problems(syncing, lab_settings) == [
        "livekit1: not a connected replica of livekit2 (slave 198.18.1.52 6379 sync)"
    ]
    split = HEALTHY.replace("sentinel 198.18.1.71 198.18.1.52 OK", "sentinel 198.18.1.71 198.18.1.51 OK")
    assert redis_probe.cluster_problems(split, lab_settings) == [
        "the sentinels name ['198.18.1.51', '198.18.1.52'] (expected one master)"
    ]
    lost = HEALTHY.replace("sentinel 198.18.1.71 198.18.1.52 OK", "sentinel 198.18.1.71  ")
    assert redis_probe.cluster_problems(lost, lab_settings) == ["sentinel on monitoring1: no quorum (no answer)"]
    dead = HEALTHY.replace("server 198.18.1.51 slave 198.18.1.52 6379 connected", "server 198.18.1.51 ")
    assert redis_probe.cluster_problems(dead, lab_settings) == [
        "livekit1: not a connected replica of livekit2 (no answer)"
    ]
