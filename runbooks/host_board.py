"""Which hosts each `per_host` step is done on, and the runner that starts a host of a step once it is ready.

A graph run starts a step as soon as the steps it is `after` are done. For a `per_host`
step (a host's packages, firewall rules, CA trust, /etc/hosts) "done" is a question per
host: a later step needs that work on its own hosts only. So the first deploy's etcd
starts once the Patroni hosts have their packages and foundation, while the MinIO or
monitoring hosts still install theirs. The board records each host as its run of such a
step ends; the runner of a later `per_host` step starts each host as soon as the board has
it done there, and the runbook (runbooks/shell.py) starts a later cluster step once the
board has it done on all of that step's hosts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nornir.core.inventory import Host
from nornir.core.task import AggregatedResult, MultiResult, Result, Task

from core.errors import HostError
from runbooks.display import lost_in

# What a host's run of a step came to on the board.
OK, FAILED, LOST = "ok", "failed", "lost"


class HostBoard:
    """The hosts each `per_host` step of a run targets and what each host's run of it came to."""

    def __init__(self, told: Callable[[], None] = lambda: None) -> None:
        self.lock = threading.Condition()
        self.told = told  # called after each change (the graph's scheduler re-checks what may start)
        self.targets: dict[str, frozenset[str]] = {}
        self.done: dict[str, dict[str, str]] = {}
        self.changed: set[str] = set()  # steps that changed something on some host so far

    def begin(self, step: str, hosts: Iterable[str]) -> None:
        with self.lock:
            self.targets[step] = frozenset(hosts)
            self.done.setdefault(step, {})
        self.told()

    def record(self, step: str, host: str, state: str, changed: bool = False) -> None:
        with self.lock:
            self.done.setdefault(step, {})[host] = state
            if changed:
                self.changed.add(step)
            self.lock.notify_all()
        self.told()

    def end(self, step: str) -> None:
        """The step is over: the hosts it had not recorded (a host it never reached) are not done."""
        with self.lock:
            done = self.done.setdefault(step, {})
            for host in self.targets.get(step, ()):
                done.setdefault(host, FAILED)
            self.lock.notify_all()
        self.told()

    def began(self, step: str) -> bool:
        with self.lock:
            return step in self.targets

    def under_way(self, step: str) -> bool:
        """Whether `step` began and is not yet done on some host."""
        with self.lock:
            return step in self.targets and not self.targets[step] <= self.done[step].keys()

    def states(self, step: str, hosts: Iterable[str]) -> dict[str, str | None]:
        """What `step` came to on those of `hosts` it targets (None: not yet)."""
        with self.lock:
            mine = self.targets.get(step, frozenset())
            return {host: self.done.get(step, {}).get(host) for host in hosts if host in mine}

    def wait(self, steps: Sequence[str], host: str) -> tuple[str, str] | None:
        """Block until each of `steps` that targets `host` is done there; the first (step, state) that is not OK.

        A step that has not begun has nothing to wait for here: the runbook starts a step only once the
        `per_host` steps it waits for have begun.
        """
        with self.lock:
            self.lock.wait_for(lambda: all(None not in self.states(step, [host]).values() for step in steps))
            for step in steps:
                state = self.states(step, [host]).get(host)
                if state not in (None, OK):
                    return step, state
        return None


class HostRunner:
    """A step's hosts in its order, `workers` at a time. Each host starts once the `per_host` steps it
    waits for (`waits`) are done on it, holding its place among the `workers` meanwhile (a host they
    failed on is refused, one they lost is left out); a `per_host` step's own hosts are recorded on the
    board as each ends (`record`)."""

    def __init__(
        self,
        workers: int,
        key: Callable[[Host], Any] | None = None,
        board: HostBoard | None = None,
        waits: Sequence[str] = (),
        record: str = "",
    ) -> None:
        self.workers = workers
        self.key = key
        self.board = board
        self.waits = waits
        self.record = record

    def run(self, task: Task, hosts: list[Host]) -> AggregatedResult:
        ordered = sorted(hosts, key=self.key) if self.key else hosts
        with ThreadPoolExecutor(self.workers) as pool:
            ends = pool.map(lambda host: self._one(task, host), ordered)
            ended = dict(zip((host.name for host in ordered), ends, strict=True))
        result = AggregatedResult(task.name)
        for host in hosts:  # in the inventory's order, whatever order they started in
            if ended[host.name] is not None:
                result[host.name] = ended[host.name]
        return result

    def _one(self, task: Task, host: Host) -> MultiResult | None:
        board = self.board
        stopped = board.wait(self.waits, host.name) if board and self.waits else None
        if stopped and stopped[1] == LOST:  # dropped out of the run: later steps leave it out
            if board and self.record:
                board.record(self.record, host.name, LOST)
            return None
        mine = task.copy()
        if stopped:
            mine.task = refusal(*stopped)
        done = mine.start(host)
        if board and self.record:
            state = LOST if done.failed and lost_in(done) else FAILED if done.failed else OK
            board.record(self.record, host.name, state, changed=done.changed)
        return done


def refusal(step: str, state: str) -> Callable[..., Result]:
    """A host's task in place of the step's, where a step it needs failed on that host."""

    def refuse(task: Task, **_: Any) -> Result:
        raise HostError(f"not run: step {step} {state} on this host")

    return refuse
