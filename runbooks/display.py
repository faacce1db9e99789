"""What the operator sees while a runbook runs, and the outcome of each host per step.

Nornir runs hosts in threads; the processor prints each host's line under a lock as it
finishes, so output never interleaves. Every text passes through the redactor first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nornir.core.inventory import Host
from nornir.core.task import AggregatedResult, MultiResult, Result, Task
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from core.errors import HostError, HostLost
from core.secrets import Redactor

if TYPE_CHECKING:
    # Tables are drawn when a run ends; rich.table (with fractions and decimal) costs each start ~4 ms.
    from rich.table import Table


@dataclass
class HostOutcome:
    """One host's result in one step."""

    status: str  # ok | changed | failed | lost (the host, or a peer its task needed, stopped answering)
    seconds: float
    message: str = ""
    diff: str = ""
    at: float = 0.0  # when the host finished the step (seconds since the epoch)
    lost_address: str = ""  # with status lost: the address that stopped answering (this host's or a peer's)
    warning: bool = False  # a result said WARNING (Nornir's severity_level): its message is always shown


@dataclass
class StepOutcome:
    name: str
    status: str  # ok | changed | failed | skipped | not run
    seconds: float = 0.0
    hosts: dict[str, HostOutcome] = field(default_factory=dict)
    note: str = ""
    problems: list[str] = field(default_factory=list)  # the health gate's
    report: str = ""  # what the step's report printed
    at: float = 0.0  # when it started on its hosts (seconds since the epoch; 0: it did not)


HEADS = 8  # change lines shown per host without --verbose


def flatten(multi: MultiResult) -> list[Result]:
    """Every Result of a host, subtasks of subtasks included (Nornir nests their MultiResults)."""
    out: list[Result] = []
    for item in multi:
        out.extend(flatten(item) if isinstance(item, MultiResult) else [item])
    return out


def host_outcome(multi: MultiResult, seconds: float, redact: Redactor) -> HostOutcome:
    """Condense a host's MultiResult: status, the operator-facing message, the combined diff."""
    # A task may repeat its subtasks' diff as its own: show each once.
    diff = "\n".join(dict.fromkeys(r.diff for r in flatten(multi) if r.diff))
    if multi.failed:
        lost = lost_in(multi)
        status = "lost" if lost else "failed"
        address = lost.address if lost else ""
        return HostOutcome(status, seconds, redact(failure_text(multi)), redact(diff), time.time(), address)
    first = multi[0].result
    message = first if isinstance(first, str) else ""
    warning = any(result.severity_level >= logging.WARNING for result in flatten(multi))
    status = "changed" if multi.changed else "ok"
    return HostOutcome(status, seconds, redact(message), redact(diff), time.time(), warning=warning)


def lost_in(multi: MultiResult) -> HostLost | None:
    """The loss of a host (this one or a peer it needed) behind a failure, if that is what it was."""
    return next((r.exception for r in flatten(multi) if isinstance(r.exception, HostLost)), None)


def failure_text(multi: MultiResult) -> str:
    """The message of the HostError behind a failure; a traceback only for real bugs."""
    results = flatten(multi)
    for result in results:
        if isinstance(result.exception, HostError):
            return str(result.exception)
    for result in reversed(results):
        if result.failed and result.exception is not None and not _is_subtask_error(result.exception):
            return str(result.result)
    return str(multi[0].result)


def _is_subtask_error(exc: BaseException) -> bool:
    return type(exc).__name__ == "NornirSubTaskError"


QUIET_NAMES = 8  # hosts named on the line that counts those with nothing to do


@dataclass
class UnderWay:
    started: float  # time.monotonic()
    hosts: int
    done: int = 0


class Running:
    """The steps under way, for the live line a terminal shows below the finished steps' output: each with
    how long it has run and how many of its hosts are done (a first deploy's package step runs 90 s)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.steps: dict[str, UnderWay] = {}

    def start(self, name: str, hosts: int) -> None:
        with self.lock:
            self.steps[name] = UnderWay(time.monotonic(), hosts)

    def host_done(self, name: str) -> None:
        with self.lock:
            if name in self.steps:
                self.steps[name].done += 1

    def finish(self, name: str) -> None:
        with self.lock:
            self.steps.pop(name, None)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        with self.lock:
            shown = [f"{name} {now - s.started:.0f}s ({s.done}/{s.hosts} hosts)" for name, s in self.steps.items()]
        return "running: " + " · ".join(shown) if shown else ""

    def __rich__(self) -> Text:
        return Text(self.line(), style="dim")


class Progress:
    """Nornir processor printing what each host of a step came to: its own line when it changed, failed,
    dropped out or warns (every host's with --verbose), the rest counted on one line when the step ends."""

    def __init__(
        self,
        console: Console,
        redact: Redactor,
        verbose: bool,
        show_diffs: bool,
        ordered: bool = False,
        host_done: Callable[[], None] | None = None,
        hold_ok: bool = False,
    ) -> None:
        self.console = console
        self.redact = redact
        self.verbose = verbose
        self.show_diffs = show_diffs
        # Print the hosts in the inventory's order once all are done, not each as it finishes.
        self.ordered = ordered
        self.host_done = host_done  # told as each host finishes (the live line's count)
        # A step that only reads before the run decides what to change on its hosts (the site identity:
        # read everywhere, then written where missing) holds back their "ok" lines: `release` prints
        # them once it is known which hosts it leaves as they were, so no host is said to have
        # nothing to do and then changed.
        self.hold_ok = hold_ok
        self.lock = threading.Lock()
        self.started: dict[str, float] = {}
        self.outcomes: dict[str, HostOutcome] = {}

    def task_started(self, task: Task) -> None:
        self.outcomes = {}

    def task_completed(self, task: Task, result: AggregatedResult) -> None:
        if self.ordered:
            for name in result:  # the runner's order: the inventory's
                if name in self.outcomes and not self._held(self.outcomes[name]):
                    self._print(name, self.outcomes[name])
        if not self.hold_ok:
            self._count_quiet({name: self.outcomes[name] for name in result if name in self.outcomes})

    def release(self, outcomes: dict[str, HostOutcome]) -> None:
        """Print the hosts' final `outcomes` after a step that held back its "ok" lines, as any step prints them."""
        for name, outcome in outcomes.items():
            self._print(name, outcome)
        self._count_quiet(outcomes)

    def _count_quiet(self, outcomes: dict[str, HostOutcome]) -> None:
        quiet = [name for name, outcome in outcomes.items() if self._quiet(outcome)]
        if quiet:
            shown = ", ".join(quiet[:QUIET_NAMES]) + (
                f" … {len(quiet) - QUIET_NAMES} more" if len(quiet) > QUIET_NAMES else ""
            )
            self.console.print(f"  [green]ok[/green]       {len(quiet)} host(s) with nothing to do: {escape(shown)}")

    def task_instance_started(self, task: Task, host: Host) -> None:
        with self.lock:
            self.started[host.name] = time.monotonic()

    def task_instance_completed(self, task: Task, host: Host, result: MultiResult) -> None:
        outcome = host_outcome(result, time.monotonic() - self.started.get(host.name, time.monotonic()), self.redact)
        with self.lock:
            self.outcomes[host.name] = outcome
            if not self.ordered and not self._held(outcome):
                self._print(host.name, outcome)
        if self.host_done:
            self.host_done()

    def subtask_instance_started(self, task: Task, host: Host) -> None:
        return None

    def subtask_instance_completed(self, task: Task, host: Host, result: MultiResult) -> None:
        return None

    def _held(self, outcome: HostOutcome) -> bool:
        return self.hold_ok and outcome.status == "ok"

    def _quiet(self, outcome: HostOutcome) -> bool:
        """A host with nothing to say: counted on one line instead of its own, unless the run is verbose."""
        return outcome.status == "ok" and not outcome.warning and not outcome.diff and not self.verbose

    def _print(self, name: str, outcome: HostOutcome) -> None:
        if self._quiet(outcome):
            return
        style = {"ok": "green", "changed": "yellow", "failed": "bold red", "lost": "bold magenta"}[outcome.status]
        line = f"  [{style}]{outcome.status:8}[/{style}] {escape(name):16} {outcome.seconds:6.1f}s"
        if outcome.message and outcome.status not in ("failed", "lost") and (self.verbose or outcome.warning):
            said = escape(outcome.message.splitlines()[0])
            line += f"  [yellow]{said}[/yellow]" if outcome.warning else f"  {said}"
        self.console.print(line, highlight=False)
        if outcome.status in ("failed", "lost"):
            self.console.print(escape(_indent(outcome.message)), style="red", highlight=False)
        elif outcome.diff and (self.show_diffs or self.verbose):
            self.console.print(escape(_indent(outcome.diff)), highlight=False)
        elif outcome.diff:
            # What changed, without the content diffs under it (hunks, their +/- and context lines).
            heads = [line for line in outcome.diff.splitlines() if line and line[0] not in "+- " and line[:2] != "@@"]
            for head in heads[:HEADS]:
                self.console.print(f"             {escape(head)}", highlight=False)
            if len(heads) > HEADS:
                self.console.print(f"             … {len(heads) - HEADS} more (--verbose shows them)", highlight=False)


def _indent(text: str) -> str:
    return "\n".join(f"      {line}" for line in text.splitlines())


VERDICTS = {"ok": "PASS", "changed": "PASS", "failed": "FAIL", "skipped": "SKIP", "not run": "SKIP"}


def evidence(step: StepOutcome) -> str:
    """What a check saw: the gate's problems or the failed hosts' messages; else its report or host answers."""
    if step.status == "failed":
        lines = step.problems or [
            line if line.startswith(f"{name}:") else f"{name}: {line}"
            for name, host in step.hosts.items()
            if host.message and (line := host.message.splitlines()[0])
        ]
        return "\n".join(lines) or step.note
    if step.report:
        return step.report.strip()
    return "\n".join(grouped({name: host.message for name, host in step.hosts.items()})) or step.note


def grouped(messages: dict[str, str]) -> list[str]:
    """One line per distinct message, with the hosts that gave it ("5 hosts" when many)."""
    hosts: dict[str, list[str]] = {}
    for name, message in messages.items():
        if message:
            hosts.setdefault(message, []).append(name)
    return [f"{', '.join(names) if len(names) < 4 else f'{len(names)} hosts'}: {m}" for m, names in hosts.items()]


def answers(result: AggregatedResult, settings: object) -> str:
    """A step report: what the hosts answered, grouped (for facts such as default routes)."""
    texts = {name: multi[0].result for name, multi in result.items() if isinstance(multi[0].result, str)}
    return "\n".join(f"  {line}" for line in grouped(texts))


def checklist_table(steps: list[StepOutcome]) -> Table:
    """validate.py's summary: each check's verdict with its evidence."""
    from rich.table import Table

    table = Table(title="Checklist", show_lines=True)
    for column in ("check", "verdict", "evidence", "seconds"):
        table.add_column(column, justify="right" if column == "seconds" else "left", overflow="fold")
    for step in steps:
        verdict = VERDICTS.get(step.status, "SKIP")
        style = {"PASS": "green", "FAIL": "red"}.get(verdict, "dim")
        table.add_row(step.name, f"[{style}]{verdict}[/{style}]", escape(evidence(step)), f"{step.seconds:.1f}")
    return table


def checklist_verdict(steps: list[StepOutcome]) -> str:
    """How a checklist ended, by verdict: it changes nothing, so "no changes" would say nothing."""
    counts = Counter(VERDICTS.get(step.status, "SKIP") for step in steps)
    shown = {"PASS": "green", "FAIL": "bold red", "SKIP": "dim"}
    return ", ".join(f"[{style}]{counts[verdict]} {verdict}[/{style}]" for verdict, style in shown.items())


def summary_table(steps: list[StepOutcome]) -> Table:
    from rich.table import Table

    table = Table(title="Summary", show_lines=False)
    for column in ("step", "status", "hosts", "changed", "failed", "lost", "seconds"):
        table.add_column(column, justify="left" if column in ("step", "status") else "right")
    for step in steps:
        changed, failed, lost = (sum(h.status == s for h in step.hosts.values()) for s in ("changed", "failed", "lost"))
        style = {"failed": "red", "changed": "yellow", "ok": "green"}.get(step.status, "dim")
        status = step.status + (f" ({step.note})" if step.note else "")
        table.add_row(
            step.name,
            f"[{style}]{escape(status)}[/{style}]",
            str(len(step.hosts)),
            str(changed),
            str(failed),
            str(lost),
            f"{step.seconds:.1f}",
        )
    return table
