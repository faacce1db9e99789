"""Running commands on a host, with failure messages an operator can act on."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nornir.core.inventory import Host
from nornir.core.task import Task

from core.connection import CONNECTION, FabricConnection, Output
from core.errors import HostError
from core.secrets import Redactor


class Mode(StrEnum):
    """How a run treats hosts: apply changes, only read facts, or not connect at all."""

    APPLY = "apply"
    CHECK = "check"
    PLAN = "plan"


def mode(task: Task) -> Mode:
    return Mode(task.nornir.config.user_defined.get("mode", Mode.APPLY))


def redactor(task: Task) -> Redactor:
    """The run's redactor, which hides every secret value in text shown to the operator."""
    return task.nornir.config.user_defined.get("redact") or Redactor(None)


def inventory_host(task: Task, name: str | None) -> Host:
    """The task's host, or any inventory host by name (a step's Nornir holds only its groups)."""
    return task.nornir.config.user_defined["hosts"][name] if name else task.host


def shell(task: Task, host: str | None = None) -> FabricConnection:
    """A host's connection plugin (the task's own by default), opened on first use and then reused.

    Another inventory host's connection serves a step that needs a fact from a peer, such
    as the backup host reading the database's row counts from a replica.
    """
    target = inventory_host(task, host)
    target.get_connection(CONNECTION, task.nornir.config)  # opens it; returns the fabric.Connection
    return target.connections[CONNECTION]


def known(task: Task, kind: str, names: list[str]) -> dict[str, Any] | None:
    """The facts of kind `kind` ("package", "file", "unit", "user") about every one of `names`,
    when `tasks.facts.read_ahead` read them all in this step and nothing changed since; else None."""
    if mode(task) is Mode.PLAN:
        return None
    conn = shell(task)
    if conn.read_ahead_step != conn.step:
        return None
    found = {name: conn.read_ahead.get(f"{kind}:{name}") for name in names}
    return found if None not in found.values() else None


def host_key(task: Task, host: str) -> str:
    """`<type> <base64>` of the SSH host key the controller verified for `host` (known_hosts material)."""
    key = shell(task, host).connection.client.get_transport().get_remote_server_key()
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
