"""The one executor: a component's decided actions carried out in the run's mode.

Plan mode renders into the plan folder and contacts no host, check mode describes,
apply mode changes the host; the primitives' own executors do each kind of action.
"""

from __future__ import annotations

from itertools import groupby
from typing import cast

from nornir.core.task import Result, Task

from core.errors import HostError
from tasks.blocks import EditBlock, edit_block
from tasks.declaration import Action, Command, Procedure
from tasks.facts import HostFacts
from tasks.files import Copy, Write, copy_files, write_files
from tasks.packages import Install, install
from tasks.remote import Expectation, Mode, fresh_login, mode, run
from tasks.systemd import (
    AddUser,
    Systemctl,
    UnitsWanted,
    add_user,
    converge_units,
)


def execute(task: Task, actions: list[Action], facts: HostFacts | None) -> list[Result]:
    """Carry out `actions` in order, in the run's mode; consecutive copies, or writes, go together as one result."""
    results = []
    for kind, run_of in groupby(actions, key=type):
        batch = list(run_of)
        if kind is Copy:
            results.append(copy_files(task, cast(list[Copy], batch)))
        elif kind is Write:
            results.append(write_files(task, cast(list[Write], batch), facts and facts.files))
        else:
            results += [one(task, action) for action in batch]
    return results


def one(task: Task, action: Action) -> Result:
    """Carry out one action that is not a copy or a write."""
    if isinstance(action, Install):
        return install(task, action)
    if isinstance(action, AddUser):
        return add_user(task, action)
    if isinstance(action, EditBlock):
        return edit_block(task, action)
    if isinstance(action, Command):
        return command(task, action)
    if isinstance(action, Procedure):
        if mode(task) is not Mode.APPLY:
            return Result(host=task.host, changed=bool(action.pending), diff=action.pending)
        done = action.run(task)
        return Result(host=task.host, changed=bool(done), diff="\n".join(done))
    assert isinstance(action, Systemctl | UnitsWanted), action
    return converge_units(task, action)


def command(task: Task, action: Command) -> Result:
    """Carry out a behaviour's command in the run's mode: pending (plan, check) or run (apply)."""
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, changed=bool(action.change), diff=action.pending or action.change)
    what = Expectation(action.expect, action.on_failure)
    out = run(task, action.script, stdin=action.stdin, timeout=action.timeout, what=what)
    done = bool(action.change) and (action.marker in out.stdout if action.marker else True)
    if action.confirm:
        try:
            fresh_login(task, action.confirm, Expectation(action.confirm))
        except Exception as exc:
            raise HostError(f"{task.host.name}: {action.unconfirmed.format(error=exc)}") from None
    return Result(host=task.host, changed=done, diff=action.change if done else "")
