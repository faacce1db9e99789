"""Running commands on a host, with failure messages an operator can act on."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec

from nornir.core.inventory import Host
from nornir.core.task import Result, Task

from core.connection import CONNECTION, FabricConnection, Output
from core.errors import HostError, HostLost
from core.mode import Mode
from core.secrets import Redactor


def mode(task: Task) -> Mode:
    return Mode(task.nornir.config.user_defined.get("mode", Mode.APPLY))


def redactor(task: Task) -> Redactor:
    """The run's redactor, which hides every secret value in text shown to the operator."""
    return task.nornir.config.user_defined.get("redact") or Redactor(None)


def inventory_host(task: Task, name: str | None) -> Host:
    """The task's host, or any inventory host by name (a step's Nornir holds only its groups)."""
    return task.nornir.config.user_defined["hosts"][name] if name else task.host


def lost_hosts(task: Task) -> dict[str, str]:
    """The hosts that dropped out of this run so far (lost, or held back by a lost peer), with why."""
    return task.nornir.config.user_defined.setdefault("lost", {})


_opening: dict[str, threading.Lock] = {}  # per host name


def shell(task: Task, host: str | None = None) -> FabricConnection:
    """A host's connection plugin (the task's own by default), opened on first use and then reused.

    Another inventory host's connection serves a step that needs a fact from a peer, such
    as the backup host reading the database's row counts from a replica. A host that
    dropped out of the run is not tried again: the step that needs it fails at once.
    """
    target = inventory_host(task, host)
    why = lost_hosts(task).get(target.name)
    if why is not None:
        raise HostLost(f"{target.name} ({target.hostname}) dropped out of this run: {why}", str(target.hostname))
    with _opening.setdefault(target.name, threading.Lock()):  # steps running at once open it once
        target.get_connection(CONNECTION, task.nornir.config)  # opens it
    return target.connections[CONNECTION]


def known(task: Task, kind: str, names: list[str]) -> dict[str, Any] | None:
    """The facts of kind `kind` ("package", "file", "unit", "user") about every one of `names`,
    when `tasks.facts.read_ahead` read them all in this step and nothing changed since; else None."""
    if mode(task) is Mode.PLAN:
        return None
    conn = shell(task)
    facts = conn.read_ahead.get(conn.step, {})
    found = {name: facts.get(f"{kind}:{name}") for name in names}
    return found if None not in found.values() else None


P = ParamSpec("P")
_depth = threading.local()  # primitives calling primitives: only the outermost one reports


def primitive(function: Callable[Concatenate[Task, P], Result]) -> Callable[Concatenate[Task, P], Result]:
    """Mark a shared primitive (files, packages, units, users): its Result always joins the run's results.

    A component may call a primitive directly and drop what it returned; a unit started
    again or a package put back would then go unreported ("no changes" after a change).
    So the primitive itself adds its Result to the calling task's results, exactly as if
    it had been run through `task.run`, whatever the caller does with it. Plan mode is
    left out: there the results are what the templates want, not what a host did.
    """

    @functools.wraps(function)
    def wrapper(task: Task, *args: P.args, **kwargs: P.kwargs) -> Result:
        outermost = getattr(_depth, "value", 0) == 0
        _depth.value = getattr(_depth, "value", 0) + 1
        try:
            result = function(task, *args, **kwargs)
        finally:
            _depth.value -= 1
        if outermost and task.task is not wrapper and mode(task) is not Mode.PLAN:
            task.results.append(result)
        return result

    return wrapper


def host_key(task: Task, host: str) -> str:
    """`<type> <base64>` of the SSH host key the controller verified for `host` (known_hosts material)."""
    key = shell(task, host).transport.get_remote_server_key()
    return f"{key.get_name()} {key.get_base64()}"


class CommandFailed(HostError):
    """A command exited with an unexpected status."""


@dataclass(frozen=True)
class Expectation:
    """What a command should do and what the operator should check when it does not."""

    expect: str = "exit status 0"
    on_failure: str = "read the error output above; fix the cause on the host and re-run"


def run(
    task: Task,
    script: str,
    *,
    what: Expectation = Expectation(),
    stdin: str | None = None,
    cwd: str = "/",
    ok_codes: tuple[int, ...] = (0,),
    timeout: int | None = None,
    host: str | None = None,
    reads_only: bool = False,
) -> Output:
    """Run `script` on the task's host (or on `host`); raise CommandFailed unless its exit status is in `ok_codes`.

    Mark a command `reads_only` only when it cannot change the host: other commands make
    the host forget the facts read ahead for the step (`tasks.facts`).
    """
    conn = shell(task, host)
    target = inventory_host(task, host)
    output = conn.run(
        script,
        stdin=stdin,
        cwd=cwd,
        expect=what.expect,
        on_failure=what.on_failure,
        timeout=timeout,
        reads_only=reads_only,
    )
    return checked(target, conn, cwd, script, output, what, ok_codes)


def checked(
    target: Host,
    conn: FabricConnection,
    cwd: str,
    script: str,
    output: Output,
    what: Expectation,
    ok_codes: tuple[int, ...] = (0,),
) -> Output:
    """`output`, unless its exit status is not in `ok_codes`: then CommandFailed, saying what to check."""
    if output.exit_code not in ok_codes:
        raise CommandFailed(
            failure_message(target.name, target.hostname, conn.username, conn.sudo, cwd, script, output, what)
        )
    return output


def failure_message(
    name: str, address: str | None, user: str, sudo: bool, cwd: str, script: str, output: Output, what: Expectation
) -> str:
    tail = [line for line in (output.stderr or output.stdout).strip().splitlines() if line.strip()][-5:]
    lines = [
        f"{name} ({address}): command exited with status {output.exit_code}, expected {what.expect}",
        f"  as: {user}{' via sudo' if sudo else ''}, in: {cwd}",
        f"  command: {script if len(script) <= 300 else script[:300] + ' …'}",
    ]
    if tail:
        lines.append("  last error lines:")
        lines.extend(f"    {line}" for line in tail)
    lines.append(f"  what to do: {what.on_failure}")
    return "\n".join(lines)


def fresh_login(task: Task, script: str, what: Expectation) -> Output:
    """Run `script` over a new SSH connection to the task's host: a new TCP connection and login.

    Proves the host still accepts logins (after new firewall rules) where the run's own
    connection, established before, would pass whatever the rules; that one stays open for
    the other steps using it. The command joins the run's record of the host's commands.
    """
    params = task.host.get_connection_parameters(CONNECTION)
    login = FabricConnection()
    login.open(
        params.hostname,
        params.username,
        params.password,
        params.port,
        params.platform,
        params.extras,
        task.nornir.config,
    )
    try:
        output = login.run(script, expect=what.expect, on_failure=what.on_failure)
    finally:
        login.close()
        shell(task).log.extend(login.log)
    return checked(task.host, login, "/", script, output, what)
