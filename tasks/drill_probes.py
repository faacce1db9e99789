"""What the failover drills measure with: a write probe through PgBouncer and the HTTPS probe.

The write probe runs on the Synapse host (where the database's real client lives) as a
transient systemd unit: one numbered INSERT every 50 ms through PgBouncer, each attempt
logged with its time; only rows whose commit was acknowledged count. Afterwards the run's
rows are read back from the (new) primary, so a lost acknowledged write shows by number.
The password reaches the host as a 0600 file through stdin, never on a command line.
"""

from __future__ import annotations

import itertools
import json
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from nornir.core.task import Task

from core.pki import libpq_verify_full
from core.settings import Settings
from tasks.files import FileSpec, render
from tasks.packages import packages
from tasks.remote import Expectation, run

DIR = "/run/matrix-drill"
SCRIPT = f"{DIR}/write-probe.py"
PASSWORD = f"{DIR}/db.pass"
LOG = f"{DIR}/writes.log"
UNIT = "matrix-drill-probe"
TABLE = "matrix_platform_drill_writes"
INTERVAL = 0.05


@dataclass(frozen=True)
class Attempt:
    at: float  # Unix time on the probe host the write was sent
    answered: float  # when its commit was acknowledged, or it failed
    ok: bool
    detail: str  # the row number, or the error


@dataclass
class WriteLog:
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def details(self) -> list[str]:
        """What each acknowledged attempt returned (a row number, an event id), in order."""
        return [a.detail for a in self.attempts if a.ok]

    @property
    def acknowledged(self) -> list[int]:
        return [int(detail) for detail in self.details]

    def lost(self, stored: set[int]) -> list[int]:
        """The acknowledged numbers that are not stored."""
        return sorted(set(self.acknowledged) - stored)

    def problems(self, what: str, probe: str, stored: set[int]) -> list[str]:
        """What the check of a numbered-write probe found wrong: acknowledged `what` missing, or none acknowledged."""
        lost = self.lost(stored)
        found = [f"{len(lost)} acknowledged {what} lost: {lost[:10]}"] if lost else []
        return found + ([] if self.acknowledged else [f"{probe} got no write acknowledged at all"])

    def outage(self, after: float = 0.0) -> tuple[float, float] | None:
        """The longest time between two acknowledgements from `after` on: (the last before, the first after).
        Measured from acknowledgements, not from when writes were sent: a write PgBouncer holds through a
        failover counts when its commit returns."""
        times = sorted(a.answered for a in self.attempts if a.ok and a.answered >= after)
        return max(itertools.pairwise(times), key=lambda pair: pair[1] - pair[0], default=None)


def parse(text: str) -> WriteLog:
    """The probe's log: "<sent> <answered> ok <number>" or "<sent> <answered> fail <error>" per line."""
    attempts = []
    for line in text.splitlines():
        at, answered, outcome, detail = ([*line.split(" ", 3), ""])[:4]
        attempts.append(Attempt(float(at), float(answered), outcome == "ok", detail))
    return WriteLog(attempts)


def _connection_file(settings: Settings) -> str:
    config = settings.config
    hosts = ",".join(h.private_ip for h in settings.members("pgbouncer"))
    return json.dumps(
        {
            "host": hosts,
            "port": config.pgbouncer.port,
            "dbname": config.database.name,
            "user": config.database.user,
            "password": settings.secrets["synapse_db_password"],
            **libpq_verify_full(settings.site),
        }
    )


def start(task: Task, settings: Settings, run_id: str) -> None:
    """Put the probe and its connection file on the host and start it."""
    task.run(task=packages, names=["python3-psycopg2"], severity_level=10)
    script = render(task, "drills/write-probe.py.j2", run=run_id, table=TABLE, interval=INTERVAL, log_file=LOG)
    secrets = FileSpec(PASSWORD, _connection_file(settings), mode=0o600, secret=True)
    launch(task, UNIT, FileSpec(SCRIPT, script, mode=0o700), secrets, f"rm -f {LOG}")


def launch(task: Task, unit: str, script: FileSpec, secrets: FileSpec, before: str, host: str | None = None) -> None:
    """Put a probe's script and its 0600 file of secrets on the task's host (or `host`), run `before` (clearing an
    earlier run's files), and start the script on the secrets file as the transient unit `unit`, stopped with
    SIGTERM. Each file goes through stdin, so no secret is ever on a command line."""
    for spec in (script, secrets):
        folder = shlex.quote(str(PurePosixPath(spec.path).parent))
        run(
            task,
            f"umask 077 && mkdir -p {folder} && cat > {shlex.quote(spec.path)} && chmod {spec.mode:o} "
            f"{shlex.quote(spec.path)}",
            stdin=spec.content,
            host=host,
            what=Expectation(f"{spec.path} written"),
        )
    run(
        task,
        f"{before}; systemctl reset-failed {unit} 2>/dev/null; "
        f"systemd-run --unit={unit} --property=KillSignal=SIGTERM python3 {script.path} {secrets.path}",
        host=host,
        what=Expectation(f"{unit} started as a transient unit"),
    )


def stop(task: Task) -> WriteLog:
    """Stop the probe; its log."""
    out = run(
        task,
        f"systemctl stop {UNIT}; cat {LOG}",
        what=Expectation("the write probe stopped and its log read"),
    )
    return parse(out.stdout)


def stored(task: Task, run_id: str) -> set[int]:
    """The numbers of this run's rows on the primary (through PgBouncer)."""
    out = run(
        task,
        f"python3 {SCRIPT} {PASSWORD} --read {shlex.quote(run_id)}",
        what=Expectation(f"the rows of drill run {run_id} read back through PgBouncer"),
    )
    return set(json.loads(out.stdout))


def cleanup(task: Task) -> None:
    """Drop the probe's table and remove its files (the password file first)."""
    run(
        task,
        f"python3 {SCRIPT} {PASSWORD} --drop; systemctl stop {UNIT} 2>/dev/null; rm -rf {DIR}",
        what=Expectation("the drill's table dropped and its files removed"),
    )
