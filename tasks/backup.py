"""Deployment step 13 (and runbooks/backup_setup.py): pgBackRest with its repository on the backup host.

Every database host runs pgBackRest's TLS server (as postgres) and pushes WAL to the
repository through Patroni's archive_command, so archiving follows whichever node is
primary. The backup host holds the encrypted repository and takes backups from a
standby (backup-standby): the primary only starts and stops them. Hosts authenticate
each other with certificates of the site CA (client and server use), so no SSH keys
are exchanged. Timers on the backup host run a weekly full and a daily differential
backup; each success is written for Prometheus (BackupTooOld).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from nornir.core.task import AggregatedResult, Result, Task

from core.errors import HostError
from core.ports import PGBACKREST_PORT
from core.settings import HostInfo, Settings
from tasks.backup_files import PULL_UNIT
from tasks.facts import read_ahead
from tasks.files import FileSpec, put_files, render
from tasks.monitoring import TEXTFILE_DIR
from tasks.packages import packages
from tasks.patroni import data_dir
from tasks.remote import Expectation, Mode, mode, run
from tasks.systemd import UNIT_DIR, Wanted, services

CONFIG = "/etc/pgbackrest/pgbackrest.conf"
TLS_DIR = "/etc/pgbackrest/tls"
REPO_PATH = "/var/lib/pgbackrest"
SERVER_UNIT = "pgbackrest.service"  # Debian's: `pgbackrest server` as postgres
BACKUP_SCRIPT = "/usr/local/sbin/matrix-backup-database"
KINDS = ("full", "diff")


def database_unit(kind: str) -> str:
    """The service a database backup of `kind` runs as (its timer's, and the first backup's)."""
    return f"matrix-backup-database@{kind}.service"


@dataclass(frozen=True)
class Tls:
    ca: str = f"{TLS_DIR}/ca.crt"
    cert: str = f"{TLS_DIR}/host.crt"
    key: str = f"{TLS_DIR}/host.key"


def tls_files(settings: Settings, host: HostInfo) -> list[FileSpec]:
    """The site CA and this host's certificate (server and client use); the key is postgres' alone."""
    certificates = settings.config.certificates
    name = settings.service_name(host)
    certificate = settings.ca.server(
        f"pgbackrest-{host.name}",
        [name, host.private_ip],
        certificates.lifetime_days,
        certificates.renew_before_days,
        client=True,
    )
    tls = Tls()
    return [
        FileSpec(tls.ca, certificate.ca_pem),
        FileSpec(tls.cert, certificate.cert_pem),
        FileSpec(tls.key, certificate.key_pem, "postgres", "postgres", 0o600, secret=True),
    ]


def converge(
    task: Task,
    settings: Settings,
    config: FileSpec,
    extra: Sequence[FileSpec] = (),
    units: Sequence[str] = (),
    commands: Mapping[str, str] | None = None,
) -> tuple[Result, dict[str, str]]:
    """pgBackRest, its TLS files and config (+ `extra` files and their `units`, kept running).

    Its TLS server restarts when its files changed. Everything is read ahead in one command,
    with the read-only `commands`, whose outputs come back beside the result.
    """
    host = settings.hosts[task.host.name]
    server = [*tls_files(settings, host), config]
    ahead = read_ahead(
        task,
        packages=["pgbackrest"],
        files=[spec.path for spec in [*server, *extra]],
        units=[SERVER_UNIT, *units],
        commands=commands,
    )
    task.run(task=packages, names=["pgbackrest"], autostart=False, severity_level=10)
    result = task.run(task=put_files, specs=[*server, *extra], severity_level=10)[0]
    written = set(result.result or [])
    wanted = {SERVER_UNIT: Wanted(restart=bool(written & {spec.path for spec in server}))}
    wanted |= {unit: Wanted() for unit in units}
    services(task, wanted, daemon_reload=any(path.startswith(UNIT_DIR) for path in written))
    return result, ahead


def pgbackrest_database(task: Task, settings: Settings) -> Result:
    """On each database host: pgBackRest's config (repository on the backup host) and its TLS server."""
    host = settings.hosts[task.host.name]
    repo = settings.members("backup")[0]
    text = render(
        task,
        "backup/pgbackrest-db.conf.j2",
        host_name=host.name,
        repo_name=settings.service_name(repo),
        ip=host.private_ip,
        port=PGBACKREST_PORT,
        tls=Tls(),
        stanza=settings.config.backup.stanza,
        data_dir=data_dir(settings),
    )
    result, _ = converge(task, settings, FileSpec(CONFIG, text, group="postgres", mode=0o640))
    return Result(host=task.host, changed=result.changed, diff=result.diff)


def pgbackrest_repository(task: Task, settings: Settings) -> Result:
    """On the backup host: the encrypted repository, the stanza, and the backup timers."""
    host = settings.hosts[task.host.name]
    backup = settings.config.backup
    members = [{"cn": settings.service_name(h)} for h in settings.members("patroni")]
    text = render(
        task,
        "backup/pgbackrest-repo.conf.j2",
        host_name=host.name,
        repo_path=REPO_PATH,
        retention_full=backup.retention_full,
        cipher_pass=settings.secrets["pgbackrest_cipher_pass"],
        ip=host.private_ip,
        port=PGBACKREST_PORT,
        tls=Tls(),
        members=members,
        stanza=backup.stanza,
        data_dir=data_dir(settings),
    )
    schedules = {"full": backup.full_schedule, "diff": backup.diff_schedule}
    timers = [
        FileSpec(
            f"{UNIT_DIR}/matrix-backup-database-{kind}.timer",
            render(
                task,
                "backup/backup.timer.j2",
                description=f"{kind} backup of the Synapse database (matrix-platform)",
                schedule=schedules[kind],
                unit=database_unit(kind),
            ),
        )
        for kind in KINDS
    ]
    extra = [
        FileSpec(
            BACKUP_SCRIPT,
            render(task, "backup/backup-database.sh.j2", stanza=backup.stanza, textfile_dir=TEXTFILE_DIR),
            mode=0o755,
        ),
        FileSpec(
            f"{UNIT_DIR}/matrix-backup-database@.service",
            render(task, "backup/backup@.service.j2", script=BACKUP_SCRIPT),
        ),
        *timers,
    ]
    # Debian's package makes REPO_PATH (postgres, 0750) on install.
    config = FileSpec(CONFIG, text, group="postgres", mode=0o640, secret=True)
    timer_units = tuple(f"matrix-backup-database-{kind}.timer" for kind in KINDS)
    result, ahead = converge(task, settings, config, extra, timer_units, {"info": info_command(settings)})
    read = None if result.changed else ahead.get("info")  # read before any change
    created = task.run(task=stanza, settings=settings, info_json=read, severity_level=10)[0]
    diff = "\n".join(d for d in (result.diff, created.diff) if d)
    return Result(host=task.host, changed=result.changed or created.changed, diff=diff)


def pgbackrest(
    task: Task, command: str, ok_codes: tuple[int, ...] = (0,), timeout: int | None = None, reads_only: bool = False
) -> str:
    """A pgBackRest command as postgres on this host; its output."""
    return run(
        task,
        f"runuser -u postgres -- pgbackrest {command}",
        ok_codes=ok_codes,
        timeout=timeout,
        what=Expectation(f"pgbackrest {command}", "read pgBackRest's message above; its log is in /var/log/pgbackrest"),
        reads_only=reads_only,
    ).stdout


def info_command(settings: Settings) -> str:
    return f"runuser -u postgres -- pgbackrest --stanza={settings.config.backup.stanza} --output=json info"


def info(task: Task, settings: Settings, read: str | None = None) -> dict:
    """`pgbackrest info` of the stanza as JSON (status code 0 = ok); `read`: its output read ahead."""
    if not read:
        read = pgbackrest(task, f"--stanza={settings.config.backup.stanza} --output=json info", reads_only=True)
    return json.loads(read)[0]


def stanza(task: Task, settings: Settings, info_json: str | None = None) -> Result:
    """Create the stanza once (the repository's metadata for this cluster); a present one is left alone."""
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, result="stanza checked at deploy time")
    status = info(task, settings, info_json)["status"]
    if status["code"] != 1:  # 1: missing stanza path; 0 ok; 2 no backup yet
        return Result(host=task.host, result=status["message"])
    pgbackrest(task, f"--stanza={settings.config.backup.stanza} stanza-create", timeout=300)
    return Result(host=task.host, changed=True, diff=f"stanza {settings.config.backup.stanza} created")


def backup_check(task: Task, settings: Settings) -> Result:
    """Health gate: `pgbackrest check` (WAL reaches the repository from the primary), then the info as a fact."""
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, result="not checked in this mode")
    # The archiver may sit in PostgreSQL's 60 s back-off after failed pushes (before the
    # stanza existed): give the forced WAL segment time to arrive.
    checked = pgbackrest(
        task,
        f"--stanza={settings.config.backup.stanza} --archive-timeout=180 check && {info_command(settings)}",
        timeout=300,
    )
    facts = info(task, settings, checked)
    if facts["status"]["code"] not in (0, 2):
        raise HostError(f"{task.host.name}: pgbackrest info: {facts['status']['message']}")
    return Result(host=task.host, result=facts)


BACKUP_KINDS = ("database", "media", "keys")
SUCCESS = re.compile(r'^matrix_platform_backup_last_success_timestamp_seconds\{kind="(\w+)"\} (\S+)$', re.M)


@dataclass(frozen=True)
class Freshness:
    """When one kind of backup last succeeded, as seen on the backup host."""

    kind: str
    newest: float | None  # Unix time; None: never
    age_hours: float | None


def backup_ages(task: Task, settings: Settings) -> Result:
    """Fact: the newest database backup (pgBackRest's own record) and the last media/key pulls.

    One command: the host's clock, `pgbackrest info` and the pull's success metric.
    """
    if mode(task) is Mode.PLAN:
        return Result(host=task.host, result=[])
    stanza = settings.config.backup.stanza
    out = run(
        task,
        f"date +%s; runuser -u postgres -- pgbackrest --stanza={stanza} --output=json info; "
        f"cat {TEXTFILE_DIR}/backup-files.prom 2>/dev/null || true",
        what=Expectation("the host's time, pgbackrest info and the file pull's metric"),
    ).stdout
    now_line, rest = out.split("\n", 1)
    now = float(now_line)
    decoder = json.JSONDecoder()
    info_json, end = decoder.raw_decode(rest.lstrip())
    stops = [b["timestamp"]["stop"] for b in info_json[0]["backup"]]
    newest: dict[str, float | None] = {kind: None for kind in BACKUP_KINDS}
    newest["database"] = max(stops, default=None)
    newest |= {kind: float(value) for kind, value in SUCCESS.findall(rest.lstrip()[end:])}
    ages = [
        Freshness(kind, stamp, None if stamp is None else round((now - stamp) / 3600, 3))
        for kind, stamp in newest.items()
    ]
    return Result(host=task.host, result=[asdict(a) for a in ages])


# What makes each kind of backup: the timers' own services (oneshot: `systemctl start` returns when done).
FIRST_RUN = {"database": database_unit("full"), "media": PULL_UNIT, "keys": PULL_UNIT}
FIRST_SECONDS = 3600  # an empty new platform's first backups take seconds; a restored, large one longer


def first_backup(task: Task, settings: Settings) -> Result:
    """On the backup host: a full database backup and a media/key pull now, where none was ever made.

    Why: the timers fire on their schedule (the full backup weekly), so a new platform had
    no backup at all until then: `backup_setup.py check` and the restore drill failed right
    after the first deploy. One command when every kind has a backup already.
    """
    if mode(task) is Mode.PLAN:
        return Result(host=task.host, result="the first backups are taken once the platform runs")
    never = [row["kind"] for row in backup_ages(task, settings).result if row["newest"] is None]
    units = list(dict.fromkeys(FIRST_RUN[kind] for kind in never))
    if not units:
        return Result(host=task.host, result="every kind of backup exists")
    if mode(task) is Mode.APPLY:
        run(
            task,
            f"systemctl start {' '.join(units)}",
            timeout=FIRST_SECONDS,
            what=Expectation(
                f"the first {', '.join(never)} backup(s) taken",
                f"read 'journalctl {' '.join(f'-u {unit}' for unit in units)} -n 50' on the host",
            ),
        )
    diff = f"first backup: {', '.join(never)} ({' '.join(units)})"
    return Result(host=task.host, result=units, changed=True, diff=diff)


def freshness_of(result: AggregatedResult) -> list[Freshness]:
    return [Freshness(**row) for host in result.values() for row in (host[0].result or [])]


def too_old(result: AggregatedResult, settings: Settings) -> list[str]:
    """Gate of `backup_setup.py check`: every kind has a backup younger than backup.max_age_hours."""
    limit = settings.config.backup.max_age_hours
    problems = []
    for row in freshness_of(result):
        if row.age_hours is None:
            problems.append(f"{row.kind}: no successful backup yet (run its timer's service, see the README)")
        elif row.age_hours > limit:
            problems.append(
                f"{row.kind}: the newest backup is {row.age_hours:.2f} h old, older than backup.max_age_hours "
                f"({limit}); check its timer: systemctl status matrix-backup-*"
            )
    return problems


def freshness_table(result: AggregatedResult, settings: Settings) -> str:
    limit = settings.config.backup.max_age_hours
    lines = [f"  {'backup':9} {'newest (UTC)':20} {'age (h)':>8}  state (limit {limit} h)"]
    for row in freshness_of(result):
        if row.newest is None or row.age_hours is None:
            lines.append(f"  {row.kind:9} {'-':20} {'-':>8}  none")
            continue
        when = datetime.fromtimestamp(row.newest, UTC).strftime("%Y-%m-%d %H:%M:%S")
        state = "ok" if row.age_hours <= limit else "TOO OLD"
        lines.append(f"  {row.kind:9} {when:20} {row.age_hours:8.2f}  {state}")
    return "\n".join(lines)
