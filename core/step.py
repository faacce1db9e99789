"""A runbook's step: what runs on which hosts, and the checks that gate what follows.

A shared type: components declare their steps with it (`tasks.component`), and the
runbook shell (runbooks/shell.py) runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nornir.core.task import AggregatedResult, Result

from core import artifacts
from core.errors import InputProblem
from core.settings import Settings

Gate = Callable[[AggregatedResult, Settings], list[str]]


@dataclass(frozen=True)
class Step:
    """One named stage of a runbook.

    `task(task, settings)` runs on every host of `groups` (all hosts when None). Once it
    succeeded everywhere (a barrier), `check(task, settings)` runs on the same hosts: a
    health check that needs all of them done, such as a cluster having formed; and
    `gate(result, settings)` returns problems across hosts (empty: healthy).
    """

    name: str
    summary: str
    task: Callable[..., Result]
    groups: tuple[str, ...] | None = None
    serial: bool = False
    check: Callable[..., Result] | None = None
    # The health check of a run that changed nothing, here or in a step this one waits for:
    # a cheaper proof of the same health (a re-run need not push a WAL segment through
    # pgBackRest, 1.7 s, to show the chain it proved before still stands). None: `check`.
    steady_check: Callable[..., Result] | None = None
    gate: Gate | None = None
    artifacts: tuple[str, ...] = ()  # names in artifacts/manifest.yaml the step pushes to hosts
    # Artifacts an operator may not have yet (MinIO, LiveKit): without them the step is
    # skipped with a message, and the run carries on with what does not depend on it.
    needs: tuple[str, ...] = ()
    # Whether the settings use this step at all (e.g. Synapse's native mode); its
    # docstring is the note shown when it does not. Artifacts are then not required.
    applies: Callable[[Settings], bool] | None = None
    # What the controller itself must have for this step (e.g. the playbook checkout),
    # checked with the artifacts before any host is touched.
    requires: Callable[[Settings], list[InputProblem]] | None = None
    # A table or summary printed after the step from all hosts' results (e.g. expiry dates).
    report: Callable[[AggregatedResult, Settings], str] | None = None
    # In a checklist (validate.py) a failed step stops the rest only if it blocks: a drill's
    # health check, since the drill must not start on an unhealthy cluster.
    blocks: bool = False
    # The order its hosts start in, a sort key of (host name, settings); the inventory's order
    # without it. A serial step (one host at a time, none after a failure) takes them in it, and
    # so does a step whose hosts are limited by `at_once`.
    order: Callable[[str, Settings], Any] | None = None
    # How many of its hosts run at the same time (None: all), for work that shares something
    # between hosts: the package installs of servers behind one mirror or on one machine's CPU.
    at_once: Callable[[Settings], int | None] | None = None
    # Reads the running platform (a checklist item, a gate): run in check and apply mode; in
    # plan mode, which contacts no host, it is reported as not run, never as passed.
    live: bool = False
    # The steps (by name) that must have succeeded before this one starts: what it uses.
    # The runbook's order respects them (tasks/registry.py checks the deploy's).
    after: tuple[str, ...] = ()
    # What its task reads first on a host (a `tasks.facts.Reading`; None: nothing there). A run that
    # has changed nothing reads those of all its steps on a host in one command (`core.connection.RunReads`).
    reading: Callable[[Settings, str], Any] | None = None
    # What a later step needs of it on a host is its run on that same host (the host's packages,
    # firewall rules, CA trust, /etc/hosts): in a graph run a later step starts on a host, or a
    # cluster step on its hosts, as soon as it is done there, not once it is done everywhere; a
    # failure on one host stops only what runs there. Such a step has no health check across hosts.
    per_host: bool = False

    def used(self, settings: Settings) -> bool:
        return self.applies is None or self.applies(settings)

    def missing(self) -> list[InputProblem]:
        """What of `needs` the artifact cache lacks: the step is then skipped (configuration only in plan mode)."""
        return [problem for name in self.needs for problem in artifacts.problems(artifacts.manifest()[name])]


def direct_needs(steps: Sequence[Step]) -> dict[str, list[str]]:
    """Each step's `after`, among `steps`, without the names another of them already waits for.

    What the operator reads in --help: patroni waits for etcd, not also for the firewall
    that etcd waits for. Names of steps not in `steps` are left out.
    """
    names = {step.name for step in steps}
    after = {step.name: [name for name in step.after if name in names] for step in steps}
    below = waits_for(steps)
    return {
        name: [near for near in needs if not any(near in below[other] for other in needs if other != near)]
        for name, needs in after.items()
    }


def waits_for(steps: Sequence[Step]) -> dict[str, set[str]]:
    """Every step of `steps` each one waits for, directly or through others (`steps` in an order
    where each step's `after` comes before it)."""
    names = {step.name for step in steps}
    below: dict[str, set[str]] = {}
    for step in steps:
        below[step.name] = {far for name in step.after if name in names for far in (name, *below.get(name, ()))}
    return below


def urgency(steps: Sequence[Step]) -> dict[str, tuple[int, int]]:
    """Each step's (slack, depth): how many steps shorter than the longest chain of `steps` the longest
    chain through it is, and how many steps come before it on that chain (`steps` in an order where each
    step's `after` comes before it).

    Each step counts alike: how long one takes is not known before it ran. A step with no slack is
    on the longest chain; the smaller its depth, the sooner that chain needs it.
    """
    names = {step.name for step in steps}
    depth: dict[str, int] = {}
    for step in steps:
        depth[step.name] = max((depth[name] + 1 for name in step.after if name in names), default=0)
    tail: dict[str, int] = {}
    for step in reversed(steps):
        later = [other.name for other in steps if step.name in other.after]
        tail[step.name] = 1 + max((tail[name] for name in later), default=0)
    longest = max((depth[name] + tail[name] for name in names), default=0)
    return {name: (longest - depth[name] - tail[name], depth[name]) for name in depth}
