"""Native Synapse update: install the pinned version beside the running one, then restart
its processes one at a time behind HAProxy so that clients keep being served.

Per process: HAProxy on every edge host stops sending it new requests (`drain`), the
requests in flight finish (a long-poll /sync is cut after DRAIN_SECONDS: its client
simply syncs again, on another worker), systemd restarts it (Type=notify: Synapse is
listening when the restart returns), its /health answers, HAProxy takes it back
(`ready`) and every edge reports it UP before the next process goes, so a pool never
loses two members at once; slowstart then ramps its share up over 30 s. The main process
goes first: it applies the new version's schema changes, which older workers tolerate
(Synapse's schema compatibility version) while newer ones need them. Processes HAProxy
does not route to (event persisters, federation senders) restart with the health check.
"""

from __future__ import annotations

import csv
import shlex
import time

from nornir.core.task import Task

from core.errors import HostError
from core.settings import Settings
from tasks.component import Component
from tasks.declaration import Command, Context, Procedure
from tasks.facts import HostFacts
from tasks.haproxy import ADMIN, backends
from tasks.remote import Expectation, run
from tasks.synapse import (
    PROCESSES,
    UNIT,
    VENVS_LISTING,
    health_urls,
    native,
    parse_processes,
    pinned_release,
    prune,
    synapse_healthy,
)
from tasks.waits import wait_for_urls

DRAIN_SECONDS = 10
UP_SECONDS = 60  # HAProxy's checks: rise 2 × inter 2 s after a fall of 3 × 2 s, with room
POLL = 0.5


def edge_servers(settings: Settings, process: str) -> list[str]:
    """`backend/server` of every HAProxy server entry that is this Synapse process (host name: the main process)."""
    return [f"{b.name}/{s['name']}" for b in backends(settings).values() for s in b.servers if s["name"] == process]


def tell_edges(task: Task, settings: Settings, commands: list[str]) -> dict[str, str]:
    """Send `commands` to the admin socket of every HAProxy host; the answers by host."""
    answers = {}
    for edge in settings.members("haproxy"):
        answers[edge.name] = run(
            task,
            ADMIN,
            stdin="".join(f"{command}\n" for command in commands),
            host=edge.name,
            what=Expectation(
                f"HAProxy's admin socket answering {commands[0].split()[0]} commands",
                "check that HAProxy runs on that host (systemctl status haproxy)",
            ),
        ).stdout
    return answers


def server_stats(answer: str) -> dict[str, dict[str, str]]:
    """`show stat` (CSV) by `backend/server`, servers only."""
    lines = answer.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    rows = csv.DictReader(lines[1:], fieldnames=lines[0][2:].split(","))
    return {f"{r['pxname']}/{r['svname']}": r for r in rows if r["svname"] not in ("FRONTEND", "BACKEND")}


def stats(task: Task, settings: Settings, servers: list[str]) -> dict[str, dict[str, dict[str, str]]]:
    """The `show stat` rows of `servers` on every HAProxy host, by host, then by `backend/server`."""
    found = {}
    for edge, answer in tell_edges(task, settings, ["show stat"]).items():
        rows = server_stats(answer)
        missing = [s for s in servers if s not in rows]
        if missing:
            raise HostError(
                f"{edge}: HAProxy has no server {', '.join(missing)}; run the deploy's haproxy step "
                "(python runbooks/deploy.py --step haproxy) so its configuration matches the workers"
            )
        found[edge] = {s: rows[s] for s in servers}
    return found


def drain(task: Task, settings: Settings, servers: list[str]) -> int:
    """Put `servers` in drain on every edge; wait until their sessions end or DRAIN_SECONDS; the sessions cut."""
    tell_edges(task, settings, [f"set server {s} state drain" for s in servers])
    deadline = time.monotonic() + DRAIN_SECONDS
    while True:
        sessions = sum(
            int(row["scur"] or 0) for rows in stats(task, settings, servers).values() for row in rows.values()
        )
        if sessions == 0 or time.monotonic() > deadline:
            return sessions
        time.sleep(POLL)


def wait_up(task: Task, settings: Settings, servers: list[str]) -> None:
    """Wait until every edge reports each of `servers` UP (its health checks passed again)."""
    deadline = time.monotonic() + UP_SECONDS
    while True:
        down = [
            f"{edge}: {server} {row['status']}"
            for edge, rows in stats(task, settings, servers).items()
            for server, row in rows.items()
            if not row["status"].startswith("UP")
        ]
        if not down:
            return
        if time.monotonic() > deadline:
            raise HostError(
                f"{task.host.name}: not UP in HAProxy {UP_SECONDS} s after its restart: {'; '.join(down)}. "
                "Check the process's /health and HAProxy's log (journalctl -u haproxy)"
            )
        time.sleep(POLL)


def restart_behind_edge(task: Task, settings: Settings, unit: str, health: str) -> str:
    """Drain, restart, check, take back one Synapse process; a line saying how long each part took."""
    process = task.host.name if unit == UNIT else unit.removeprefix("synapse-worker@").removesuffix(".service")
    servers = edge_servers(settings, process)
    started = time.monotonic()
    cut = drain(task, settings, servers) if servers else 0
    drained = time.monotonic()
    try:
        run(
            task,
            f"systemctl restart {shlex.quote(unit)}",
            timeout=660,
            what=Expectation(f"{unit} restarted", f"journalctl -u {unit} on the host"),
        )
        wait_for_urls(task, [health], timeout=300)
    finally:  # a process that fails its checks stays out of rotation through HAProxy's own checks
        if servers:
            tell_edges(task, settings, [f"set server {s} state ready" for s in servers])
    restarted = time.monotonic()
    if servers:
        wait_up(task, settings, servers)
    where = f"drained in {drained - started:.1f} s{f', {cut} sessions cut' if cut else ''}, " if servers else ""
    back = f", UP in HAProxy after {time.monotonic() - restarted:.1f} s" if servers else ""
    return f"{unit}: {where}restarted and healthy in {restarted - drained:.1f} s{back}"


def restarts_on_the_pinned_version(
    context: Context, _facts: HostFacts | None, _written: frozenset[str]
) -> list[Procedure | Command]:
    """Every Synapse process not on the pinned version, restarted one at a time behind HAProxy (each waits for the
    one before), main process first; then the old venvs go."""
    if context.reads is None:
        return []
    settings = context.settings
    version = pinned_release()
    urls = health_urls(settings, context.host.private_ip)
    stale = [unit for unit in parse_processes(context.reads["processes"]).stale() if unit in urls]
    if not stale:  # retired workers are not in `urls`: maintenance.py workers stops them
        return []
    restarts: list[Procedure | Command] = [
        Procedure(
            f"{unit}: drained, restarted, taken back",
            f"{unit}: restart on {version}",
            lambda task, unit=unit: [restart_behind_edge(task, settings, unit, urls[unit])],
        )
        for unit in stale
    ]
    return [*restarts, *prune(context.reads["venvs"])]


SYNAPSE_ROLLING = Component(
    "synapse-rolling",
    groups=("synapse",),
    summary="each Synapse process not on the pinned version restarted, one at a time, drained in HAProxy",
    reads={"processes": PROCESSES, "venvs": VENVS_LISTING},
    behaviour=restarts_on_the_pinned_version,
    unread="would restart every process not running the pinned version, one at a time",
    check=synapse_healthy,
    applies=native,
)
