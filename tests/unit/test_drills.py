"""Drill arithmetic and inputs offline: the write log's gaps, the TURN probe's outage, the
health verdict on Patroni's /cluster document, the partition rules, the timeline PNG and the
runbook's arguments."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from core import timeline
from core.probe import Sample
from core.settings import Settings
from core.turn import TurnProbe
from tasks import drills
from tasks.drill_probes import parse
from tasks.drills import database_problems, wait_until
from tasks.faults import partition_script
from tasks.message_probe import Messages
from tests.conftest import load_runbook

LOG = """1000.000 1000.004 ok 1
1000.050 1000.054 ok 2
1000.100 1000.300 fail server closed the connection unexpectedly
1002.000 1002.001 fail connection refused
1004.500 1007.500 ok 3
1007.550 1007.556 ok 4
"""


def test_the_write_gap_runs_from_acknowledgement_to_acknowledgement() -> None:
    writes = parse(LOG)
    assert writes.acknowledged == [1, 2, 3, 4]
    # Write 3 was sent at 1004.5 but held (e.g. by PgBouncer) until 1007.5: the database was unavailable
    # to the writer from the last acknowledgement before the fault to that one.
    assert writes.outage() == (1000.054, 1007.5)
    assert writes.outage(after=1007.5) == (1007.5, 1007.556)
    # The check afterwards: an acknowledged number the store lacks is lost, by number.
    assert writes.lost({1, 2, 4, 5}) == [3]
    assert writes.problems("writes", "the write probe", {1, 2, 4}) == ["1 acknowledged writes lost: [3]"]
    assert parse(LOG.replace(" ok ", " fail ")).problems("Redis writes", "the Redis probe", set()) == [
        "the Redis probe got no write acknowledged at all"
    ]
    assert writes.outage(after=1007.556) is None  # a single write: no interval


def test_the_matrix_client_counts_lost_messages_errors_and_stalls() -> None:
    log = parse(
        "1000.0 1000.1 ok $a\n"
        "1000.2 1000.3 fail HTTP 502\n"
        "1000.4 1009.0 ok $b\n"  # answered, but after 8.6 s: a stall
        "1009.1 1009.2 fail TimeoutError\n"
        "1009.3 1009.4 ok $c\n"
    )
    messages = Messages(log, present={"$a", "$c"}, in_order=True)
    assert messages.lost == ["$b"]
    assert messages.errors == ["HTTP 502", "TimeoutError"]
    assert messages.stalls == 1
    assert log.outage() == (1000.1, 1009.0)


def turn_samples(outcomes: str, start: float) -> list[Sample]:
    """One allocation a second from `start`: "+" answered, "-" failed."""
    return [Sample(start + i, mark == "+", "", 0.01) for i, mark in enumerate(outcomes)]


def test_turn_is_out_only_while_every_server_fails() -> None:
    probe = TurnProbe(["a", "b"], credential=lambda: ("u", "p"))
    probe.samples = {"a": turn_samples("++----++", 0.0), "b": turn_samples("++++--++", 0.5)}
    # b fails at 4.5 while a has failed since 2.0; a answers again at 6.0
    assert probe.none_serving() == 1.5
    probe.samples["b"] = turn_samples("++++++++", 0.5)
    assert probe.none_serving() == 0.0
    probe.samples = {"a": turn_samples("+---", 0.0), "b": turn_samples("---", 0.5)}
    assert probe.none_serving() == 2.0  # out from 1.0 and still at the last sample (3.0)


def member(name: str, role: str, state: str, lag: object = 0) -> dict:
    return {"name": name, "role": role, "state": state, "lag": lag}


def test_a_healthy_cluster_has_no_problems(lab_settings: Settings) -> None:
    state = {
        "members": [
            member("patroni1", "leader", "running"),
            member("patroni2", "sync_standby", "streaming"),
            member("patroni3", "replica", "streaming", 1024),
        ]
    }
    assert database_problems(state, lab_settings) == []


def test_unhealthy_clusters_are_named(lab_settings: Settings) -> None:
    state = {
        "members": [
            member("patroni1", "leader", "running"),
            member("patroni2", "replica", "stopped", "unknown"),
        ]
    }
    problems = database_problems(state, lab_settings)
    assert "patroni3: not in the Patroni cluster" in problems
    assert "patroni2: stopped, not streaming" in problems
    assert "no synchronous standby (synchronous_mode is on)" in problems


def test_a_replica_still_on_the_old_timeline_is_not_back(lab_settings: Settings) -> None:
    state = {
        "members": [
            member("patroni1", "leader", "running") | {"timeline": 4},
            member("patroni2", "sync_standby", "streaming") | {"timeline": 4},
            member("patroni3", "replica", "streaming") | {"timeline": 3},  # the old primary, not rewound yet
        ]
    }
    assert database_problems(state, lab_settings) == ["patroni3: on timeline 3, the leader on 4"]


def test_waiting_for_a_stable_state_starts_over_when_it_breaks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drills, "POLL", 0.01)
    answers = iter([True, False] + [True] * 1000)
    polls: list[float] = []

    def condition() -> bool:
        polls.append(time.time())
        return next(answers)

    since = wait_until(condition, timeout=5, stable=0.1)
    assert since is not None and polls[2] <= since < polls[3]  # the first True was followed by a False
    assert polls[-1] - since >= 0.1
    assert wait_until(lambda: False, timeout=0.05) is None


def test_the_partition_keeps_ssh_and_heals_itself() -> None:
    script = partition_script(70)
    assert script.startswith("systemd-run --unit=matrix-drill-heal --on-active=70 nft delete table inet ")
    rules = script.split("<<'EOF'\n", 1)[1].rsplit("EOF", 1)[0]
    assert "tcp dport 22 accept" in rules and "tcp sport 22 accept" in rules and "policy drop" in rules
    checked = subprocess.run(["nft", "-c", "-f", "-"], input=rules, capture_output=True, text=True)  # syntax only
    assert checked.returncode == 0, checked.stderr


def test_the_timeline_is_a_png(tmp_path: Path) -> None:
    writes = parse(LOG)
    samples = [(a.answered, a.ok, "writes") for a in writes.attempts]
    path = tmp_path / "t.png"
    timeline.render(path, "patroni/stop", samples, {"fault": 1000.08, "detected": 1003.0, "restored": None}, 1000.08)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] == 1200
        colours = {colour for _, colour in image.getcolors(maxcolors=1 << 16)}
    assert timeline.OK in colours and timeline.FAILED in colours


@pytest.mark.parametrize("argv", [["raid"], ["patroni", "--variant", "haproxy"], ["vip", "--runs", "x"]])
def test_unknown_drills_and_variants_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        load_runbook("failover_drill").runbook(argv)
    assert exit.value.code == 2
