"""The deploy as a graph: steps run as soon as what they are `after` is done; a failure stops only its dependents."""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable
from itertools import takewhile
from pathlib import Path

from nornir.core.task import Result, Task
from rich.console import Console

from core.settings import Settings
from core.step import Step, direct_needs
from runbooks.display import Running
from runbooks.shell import Dropped, Options, Runbook, make_nornir
from tasks.remote import Mode

WAIT = 20.0  # bounds a wait that only a step running at the same time ends


def done(task: Task, settings: Settings) -> Result:
    return Result(host=task.host, result="done")


def steps(seen: threading.Event) -> list[Step]:
    """`fails` waits until `beside` (which needs nothing of it) has run, then fails; `after-*` depend on them."""

    def fails(task: Task, settings: Settings) -> Result:
        return Result(host=task.host, failed=True, result=f"beside ran meanwhile: {seen.wait(WAIT)}")

    def beside(task: Task, settings: Settings) -> Result:
        seen.set()
        return Result(host=task.host, result="done")

    return [
        Step("fails", "fails once beside ran", fails, groups=("coturn",)),
        Step("beside", "needs nothing of fails", beside, groups=("coturn",)),
        Step("after-fails", "needs fails", done, groups=("coturn",), after=("fails",)),
        Step("after-that", "needs after-fails", done, groups=("coturn",), after=("after-fails", "beside")),
        Step("after-beside", "needs beside", done, groups=("coturn",), after=("beside",)),
    ]


def run_graph(settings: Settings, tmp_path: Path, graph: list[Step]) -> tuple[dict[str, tuple[str, str]], str]:
    runbook = Runbook("deploy", "", graph, graph=True)
    runbook.console = Console(file=io.StringIO(), width=200)
    options = Options(tmp_path, tmp_path, Mode.CHECK, graph, [], False, None, tmp_path, True)
    nr = make_nornir(settings, Mode.CHECK)
    dropped: dict[str, Dropped] = {}
    outcomes = runbook._run_graph(nr, settings, options, nr.config.user_defined["redact"], dropped)
    shown = runbook.console.file.getvalue()  # type: ignore[attr-defined]
    return {o.name: (o.status, o.note) for o in outcomes}, shown


def test_independent_steps_run_at_once_and_a_failure_stops_only_what_needs_it(
    lab_settings: Settings, tmp_path: Path
) -> None:
    seen = threading.Event()
    outcomes, shown = run_graph(lab_settings, tmp_path, steps(seen))
    assert seen.is_set()
    assert outcomes == {
        "fails": ("failed", "2 host(s) failed"),
        "beside": ("ok", ""),
        "after-fails": ("not run", "after failure in fails"),
        "after-that": ("not run", "after failure in fails"),  # through after-fails
        "after-beside": ("ok", ""),
    }
    assert "beside ran meanwhile: True" in shown


def test_each_step_shows_its_hosts_together_under_its_own_heading(lab_settings: Settings, tmp_path: Path) -> None:
    _, shown = run_graph(lab_settings, tmp_path, steps(threading.Event()))
    lines = shown.splitlines()
    headings = [number for number, line in enumerate(lines) if line.startswith("▶ ")]
    assert len(headings) == 3  # the two steps after the failure never started
    for number in headings:
        body = list(takewhile(lambda line: not line.startswith(("▶", "…")), lines[number + 1 :]))
        failed = [line.split()[1] for line in body if line.split()[:1] == ["failed"]]
        quiet = [line.split(": ", 1)[1] for line in body if "host(s) with nothing to do" in line]
        assert failed == ["coturn1", "coturn2"] or quiet == ["coturn1, coturn2"], lines[number]
    assert len([line for line in lines if line.startswith("… ")]) == 3  # when each step started


def test_help_names_what_each_step_directly_waits_for() -> None:
    plain = Step("a", "", lambda task, settings: None)
    graph = [
        plain,
        Step("b", "", plain.task, after=("a",)),
        Step("c", "", plain.task, after=("a", "b")),
        Step("d", "", plain.task, after=("a", "c", "elsewhere")),
    ]
    assert direct_needs(graph) == {"a": [], "b": ["a"], "c": ["b"], "d": ["c"]}


def checked_with(lab_settings: Settings, tmp_path: Path, upstream_changes: bool, own_changes: bool) -> set[str]:
    """Which health check `gated` ran when `upstream` (which it waits for) and itself changed something or not,
    while `elsewhere`, which it does not wait for, always changes something."""
    ran: set[str] = set()

    def work(changes: bool):  # type: ignore[no-untyped-def]
        return lambda task, settings: Result(host=task.host, changed=changes)

    def check(name: str):  # type: ignore[no-untyped-def]
        return lambda task, settings: ran.add(name) or Result(host=task.host)

    graph = [
        Step("upstream", "", work(upstream_changes), groups=("coturn",)),
        Step("elsewhere", "", work(True), groups=("coturn",)),
        Step(
            "gated",
            "",
            work(own_changes),
            groups=("coturn",),
            check=check("full"),
            steady_check=check("steady"),
            after=("upstream",),
        ),
    ]
    runbook = Runbook("deploy", "", graph, graph=True)
    runbook.console = Console(file=io.StringIO(), width=200)
    options = Options(tmp_path, tmp_path, Mode.APPLY, graph, [], False, None, tmp_path, True)
    nr = make_nornir(lab_settings, Mode.APPLY)
    runbook._run_graph(nr, lab_settings, options, nr.config.user_defined["redact"], {})
    return ran


def test_the_steady_check_serves_only_a_run_that_changed_nothing_the_step_stands_on(
    lab_settings: Settings, tmp_path: Path
) -> None:
    assert checked_with(lab_settings, tmp_path, upstream_changes=False, own_changes=False) == {"steady"}
    assert checked_with(lab_settings, tmp_path, upstream_changes=True, own_changes=False) == {"full"}
    assert checked_with(lab_settings, tmp_path, upstream_changes=False, own_changes=True) == {"full"}


def test_a_terminal_shows_the_steps_under_way_on_a_live_line(lab_settings: Settings, tmp_path: Path) -> None:
    """Each running step with its time and hosts done; the finished steps' output above it, whole."""
    slow = threading.Event()

    def waits(task: Task, settings: Settings) -> Result:
        slow.wait(2.5)  # long enough for the line to be drawn at 2 per second, even on a busy machine
        return Result(host=task.host, result="done")

    graph = [Step("long-step", "waits", waits, groups=("coturn",))]
    runbook = Runbook("deploy", "", graph, graph=True)
    runbook.console = Console(file=io.StringIO(), width=200, force_terminal=True)
    options = Options(tmp_path, tmp_path, Mode.CHECK, graph, [], False, None, tmp_path, True)
    nr = make_nornir(lab_settings, Mode.CHECK)
    runbook._run_graph(nr, lab_settings, options, nr.config.user_defined["redact"], {})
    shown = runbook.console.file.getvalue()  # type: ignore[attr-defined]
    assert re.search(r"running: long-step \ds \([012]/2 hosts\)", shown), shown
    assert "▶ 1/1 long-step" in shown and "2 host(s) with nothing to do" in shown


def test_the_live_line_counts_hosts_and_time() -> None:
    running = Running()
    running.start("etcd", 3)
    running.start("coturn", 2)
    running.host_done("etcd")
    started = running.steps["etcd"].started
    assert running.line(started + 2.4).startswith("running: etcd 2s (1/3 hosts) · coturn ")
    running.finish("etcd")
    running.finish("coturn")
    assert running.line() == ""


def tiers(
    install: Callable[..., Result], foundation: Callable[..., Result], cluster: Callable[..., Result]
) -> list[Step]:
    """A per-host install and foundation on the Coturn and LiveKit hosts, then a cluster step on each of the two."""
    both = ("coturn", "livekit")
    return [
        Step("install", "", install, groups=both, per_host=True),
        Step("foundation", "", foundation, groups=both, per_host=True, after=("install",)),
        Step("turn", "", cluster, groups=("coturn",), after=("foundation",)),
        Step("sfu", "", cluster, groups=("livekit",), after=("foundation",)),
    ]


def test_a_step_after_a_per_host_step_starts_on_hosts_where_it_is_done(lab_settings: Settings, tmp_path: Path) -> None:
    """`install` holds the LiveKit hosts until a cluster step on the Coturn hosts and a per-host step have run
    on the Coturn hosts: both can only run while `install` is still under way elsewhere."""
    cluster_ran, per_host_ran = threading.Event(), threading.Event()
    held: dict[str, bool] = {}

    def install(task: Task, settings: Settings) -> Result:
        if "livekit" in task.host.name:
            held[task.host.name] = cluster_ran.wait(WAIT) and per_host_ran.wait(WAIT)
        return Result(host=task.host, result="done")

    def cluster(task: Task, settings: Settings) -> Result:
        cluster_ran.set()
        return Result(host=task.host, result="done")

    def foundation(task: Task, settings: Settings) -> Result:
        if "coturn" in task.host.name:
            per_host_ran.set()
        return Result(host=task.host, result="done")

    outcomes, shown = run_graph(lab_settings, tmp_path, tiers(install, foundation, cluster))
    assert outcomes == {
        "install": ("ok", ""),
        "foundation": ("ok", "each host once install was done there"),
        "turn": ("ok", ""),
        "sfu": ("ok", ""),
    }
    assert held == {"livekit1": True, "livekit2": True}
    assert "foundation started (each host once install is done there)" in shown


def test_a_per_host_failure_stops_only_what_runs_on_that_host(lab_settings: Settings, tmp_path: Path) -> None:
    def install(task: Task, settings: Settings) -> Result:
        return Result(host=task.host, failed=task.host.name == "livekit1", result="apt failed")

    graph = [*tiers(install, done, done), Step("after-sfu", "", done, groups=("coturn",), after=("sfu",))]
    outcomes, shown = run_graph(lab_settings, tmp_path, graph)
    assert outcomes == {
        "install": ("failed", "1 host(s) failed"),
        "foundation": ("failed", "1 host(s) failed"),  # livekit1 refused, the others done
        "turn": ("ok", ""),
        "sfu": ("not run", "after failure in foundation on livekit1"),
        "after-sfu": ("not run", "after failure in foundation on livekit1"),
    }
    assert "not run: step install failed on this host" in shown


def test_hosts_limited_at_once_start_in_the_steps_order(lab_settings: Settings, tmp_path: Path) -> None:
    spans: dict[str, tuple[float, float]] = {}
    lock = threading.Lock()

    def install(task: Task, settings: Settings) -> Result:
        began = time.monotonic()
        time.sleep(0.05)
        with lock:
            spans[task.host.name] = (began, time.monotonic())
        return Result(host=task.host, result="done")

    wanted = ["livekit2", "coturn2", "livekit1", "coturn1"]
    graph = [
        Step(
            "install",
            "",
            install,
            groups=("coturn", "livekit"),
            order=lambda host, settings: wanted.index(host),
            at_once=lambda settings: 2,
        )
    ]
    outcomes, _ = run_graph(lab_settings, tmp_path, graph)
    assert outcomes == {"install": ("ok", "")}
    first, second = sorted(spans, key=lambda host: spans[host][0])[:2], wanted[2:]
    assert set(first) == set(wanted[:2])
    assert all(spans[late][0] >= min(spans[early][1] for early in first) for late in second)


def test_a_step_that_will_be_skipped_holds_up_nothing(lab_settings: Settings, tmp_path: Path) -> None:
    """Without MinIO's binary its steps are skipped: Synapse, after them, need not wait for what they are after."""
    released = threading.Event()
    seen: dict[str, bool] = {}

    def slow(task: Task, settings: Settings) -> Result:
        seen[task.host.name] = released.wait(WAIT)
        return Result(host=task.host, result="done")

    def user(task: Task, settings: Settings) -> Result:
        released.set()
        return Result(host=task.host, result="done")

    def unused(settings: Settings) -> bool:
        """switched off in these settings"""
        return False

    graph = [
        Step("slow", "", slow, groups=("coturn",)),
        Step("unused", "", user, groups=("coturn",), after=("slow",), applies=unused),
        Step("user", "", user, groups=("livekit",), after=("unused",)),
    ]
    outcomes, _ = run_graph(lab_settings, tmp_path, graph)
    assert outcomes == {
        "slow": ("ok", ""),
        "unused": ("skipped", "switched off in these settings"),
        "user": ("ok", ""),
    }
    assert seen == {"coturn1": True, "coturn2": True}
