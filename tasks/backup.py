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
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from nornir.core.task import AggregatedResult, Result, Task

from core.catalog import GroupRule
from core.errors import HostError
from core.pki import ServerCertificate
from core.ports import tcp
from core.secrets import token
from core.settings import HostInfo, Settings
from tasks.backup_files import PULL_UNIT
from tasks.component import Component
from tasks.declaration import Action, Command, Context, File, Service, template
from tasks.facts import HostFacts
from tasks.monitoring import TEXTFILE_DIR
from tasks.patroni import data_dir
from tasks.remote import Expectation, run
from tasks.systemd import UNIT_DIR

CONFIG = "/etc/pgbackrest/pgbackrest.conf"
TLS_DIR = "/etc/pgbackrest/tls"
REPO_PATH = "/var/lib/pgbackrest"
SERVER_UNIT = "pgbackrest.service"  # Debian's: `pgbackrest server` as postgres
PGBACKREST_PORT = 8432  # its TLS server, between the database hosts and the repository
BACKUP_SCRIPT = "/usr/local/sbin/matrix-backup-database"
KINDS = ("full", "diff")
PGBACKREST_HINT = "read pgBackRest's message above; its log is in /var/log/pgbackrest"


def database_unit(kind: str) -> str:
    """The service a database backup of `kind` runs as (its timer's, and the first backup's)."""
    return f"matrix-backup-database@{kind}.service"


@dataclass(frozen=True)
class Tls:
    ca: str = f"{TLS_DIR}/ca.crt"
    cert: str = f"{TLS_DIR}/host.crt"
    key: str = f"{TLS_DIR}/host.key"


def certificate(settings: Settings, host: HostInfo) -> ServerCertificate:
    """This host's pgBackRest certificate: server and client use, for its service name and address."""
    return settings.certificate(f"pgbackrest-{host.name}", [settings.service_name(host), host.private_ip], client=True)


# The site CA and this host's certificate; the key is postgres' alone.
TLS_FILES = (
    File(Tls.ca, lambda c: certificate(c.settings, c.host).ca_pem),
    File(Tls.cert, lambda c: certificate(c.settings, c.host).cert_pem),
    File(Tls.key, lambda c: certificate(c.settings, c.host).key_pem, "postgres", "postgres", 0o600, secret=True),
)


def pgbackrest_component(
    name: str,
    groups: tuple[str, ...],
    summary: str,
    config: File,
    *,
    peers: tuple[str, ...],
    extra: tuple[File, ...] = (),
    timers: tuple[str, ...] = (),
    **declared: Any,
) -> Component:
    """pgBackRest, its TLS files and config (+ `extra` files and `timers` kept running); its TLS server is
    reached by the hosts of `peers` (the repository by the database hosts, and the other way round).

    Its TLS server restarts when its own files changed, not for the extra ones.
    """
    server = (*TLS_FILES, config)
    return Component(
        name,
        groups=groups,
        summary=summary,
        packages=("pgbackrest",),
        files=(*server, *extra),
        services=(
            Service(SERVER_UNIT, restart_on=tuple(file.path for file in server)),
            *(Service(timer, restart_on=()) for timer in timers),
        ),
        ports=(tcp("pgbackrest-server", PGBACKREST_PORT, ("pgbackrest",), peers),),
        **declared,
    )


def database_config(context: Context) -> dict[str, object]:
    settings, host = context.settings, context.host
    return {
        "host_name": host.name,
        "repo_name": settings.service_name(settings.members("backup")[0]),
        "ip": host.private_ip,
        "port": PGBACKREST_PORT,
        "tls": Tls(),
        "stanza": settings.config.backup.stanza,
        "data_dir": data_dir(settings),
    }


PGBACKREST = pgbackrest_component(
    "pgbackrest",
    ("patroni",),
    "pgBackRest on each database host: WAL to the backup host's repository, TLS server for backups",
    File(CONFIG, template("backup/pgbackrest-db.conf.j2", database_config), group="postgres", mode=0o640),
    peers=("backup",),
    after=("patroni-config",),  # the configured cluster: patroni-config may restart members
)


def repository_config(context: Context) -> dict[str, object]:
    settings, host = context.settings, context.host
    backup = settings.config.backup
    return {
        "host_name": host.name,
        "repo_path": REPO_PATH,
        "retention_full": backup.retention_full,
        "cipher_pass": settings.secrets["pgbackrest_cipher_pass"],
        "ip": host.private_ip,
        "port": PGBACKREST_PORT,
        "tls": Tls(),
        "members": [{"cn": settings.service_name(h)} for h in settings.members("patroni")],
        "stanza": backup.stanza,
        "data_dir": data_dir(settings),
    }


def timer(kind: str) -> File:
    """The timer of the `kind` database backup, on the schedule config.yaml gives."""

    def variables(context: Context) -> dict[str, object]:
        backup = context.settings.config.backup
        return {
            "description": f"{kind} backup of the Synapse database (matrix-platform)",
            "schedule": {"full": backup.full_schedule, "diff": backup.diff_schedule}[kind],
            "unit": database_unit(kind),
        }

    return File(f"{UNIT_DIR}/matrix-backup-database-{kind}.timer", template("backup/backup.timer.j2", variables))


STANZA_CREATED = "@@stanza-created"


def stanza(context: Context, facts: HostFacts | None, written: frozenset[str]) -> list[Command]:
    """Create the stanza once (the repository's metadata for this cluster); a present one is left alone.

    Decided from `pgbackrest info` read ahead (status 1: the stanza's path is missing); when
    the config was about to change, or the answer is unreadable (pgBackRest not installed
    yet), the command asks again on the host and creates it only then.
    """
    if facts is None:
        return []
    name = context.settings.config.backup.stanza
    create = f"runuser -u postgres -- pgbackrest --stanza={name} stanza-create"
    code = status_code(facts.commands.get("info", ""))
    script, marker = create, ""
    if written or code is None:
        ask = f"{info_command(context.settings)} | python3 -c {shlex.quote(STATUS_CODE)}"
        decide = f'[ "$code" != 1 ] || {{ {create} && echo {STANZA_CREATED}; }}'
        script, marker = f"set -o pipefail; code=$({ask}) && {{ {decide}; }}", STANZA_CREATED
    elif code != 1:
        return []
    expect = f"pgbackrest --stanza={name} stanza-create"
    pending = f"stanza {name} created if pgBackRest then finds it missing" if marker else ""
    return [Command(script, f"stanza {name} created", expect, PGBACKREST_HINT, 300, marker=marker, pending=pending)]


STATUS_CODE = 'import json,sys; print(json.load(sys.stdin)[0]["status"]["code"])'


def status_code(info_json: str) -> int | None:
    """The stanza's status code in `pgbackrest info` JSON (0 ok, 1 missing, 2 no backup yet); None if unreadable."""
    try:
        return int(json.loads(info_json)[0]["status"]["code"])
    except (ValueError, LookupError, TypeError):
        return None


def pgbackrest(
    task: Task, command: str, ok_codes: tuple[int, ...] = (0,), timeout: int | None = None, reads_only: bool = False
) -> str:
    """A pgBackRest command as postgres on this host; its output."""
    return run(
        task,
        f"runuser -u postgres -- pgbackrest {command}",
        ok_codes=ok_codes,
        timeout=timeout,
        what=Expectation(f"pgbackrest {command}", PGBACKREST_HINT),
        reads_only=reads_only,
    ).stdout


def info_command(settings: Settings) -> str:
    return f"runuser -u postgres -- pgbackrest --stanza={settings.config.backup.stanza} --output=json info"


def info(task: Task, settings: Settings, read: str | None = None) -> dict:
    """`pgbackrest info` of the stanza as JSON (status code 0 = ok); `read`: its output read ahead."""
    if not read:
        read = pgbackrest(task, f"--stanza={settings.config.backup.stanza} --output=json info", reads_only=True)
    return json.loads(read)[0]


def backup_check(task: Task, settings: Settings) -> Result:
    """Health gate: `pgbackrest check` (WAL reaches the repository from the primary), then the info as a fact."""
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


# A re-run that changed nothing the repository stands on takes, as proof the chain still
# works, a WAL segment archived within this many hours and a healthy stanza.
STEADY_WAL_HOURS = 24


def newest_wal_command(settings: Settings) -> str:
    """The host's clock, then the time of the newest WAL segment archived in the last STEADY_WAL_HOURS (or nothing)."""
    archive = shlex.quote(f"{REPO_PATH}/archive/{settings.config.backup.stanza}")
    return (
        f"date +%s; find {archive} -type f -name '0*' -mmin -{STEADY_WAL_HOURS * 60} -printf '%T@\\n' 2>/dev/null "
        "| sort -n | tail -n 1"
    )


def newest_wal_age(out: str) -> float | None:
    """Seconds since the newest recent WAL segment arrived, from `newest_wal_command`'s output; None if none did."""
    lines = out.split()
    try:
        return float(lines[0]) - float(lines[1]) if len(lines) == 2 else None
    except ValueError:
        return None


def backup_steady(task: Task, settings: Settings) -> Result:
    """The health gate of a run that changed nothing the backup chain stands on.

    `pgbackrest check` pushes a WAL segment from the primary and waits for it: 1.7 s, most
    of it pgBackRest polling its remote queries every 100 ms, on every re-run. When this
    run changed nothing here or upstream, a healthy stanza (`pgbackrest info`) and a WAL
    segment archived within STEADY_WAL_HOURS prove the same chain still carries WAL; without
    such a segment the full check runs.
    """
    out = run(
        task,
        f"{newest_wal_command(settings)}; echo @@info; {info_command(settings)}",
        what=Expectation("the newest archived WAL and pgbackrest info", PGBACKREST_HINT),
        reads_only=True,
    ).stdout
    wal, _, read = out.partition("@@info\n")
    age = newest_wal_age(wal)
    facts = info(task, settings, read)
    if age is None or facts["status"]["code"] not in (0, 2):
        return backup_check(task, settings)
    return Result(host=task.host, result={**facts, "newest_wal_seconds_ago": age})


# Debian's package makes REPO_PATH (postgres, 0750) on install.
BACKUP_REPOSITORY = pgbackrest_component(
    "backup-repository",
    ("backup",),
    "the encrypted pgBackRest repository on the backup host, its stanza, full/diff backup timers",
    File(
        CONFIG,
        template("backup/pgbackrest-repo.conf.j2", repository_config),
        group="postgres",
        mode=0o640,
        secret=True,
    ),
    extra=(
        File(
            BACKUP_SCRIPT,
            template(
                "backup/backup-database.sh.j2",
                lambda c: {"stanza": c.settings.config.backup.stanza, "textfile_dir": TEXTFILE_DIR},
            ),
            mode=0o755,
        ),
        File(
            f"{UNIT_DIR}/matrix-backup-database@.service",
            template("backup/backup@.service.j2", lambda _: {"script": BACKUP_SCRIPT}),
        ),
        *(timer(kind) for kind in KINDS),
    ),
    timers=tuple(f"matrix-backup-database-{kind}.timer" for kind in KINDS),
    reads={"info": lambda settings, _host: info_command(settings)},
    behaviour=stanza,
    check=backup_check,
    steady_check=backup_steady,
    inventory=(GroupRule("backup", fewest=1, most=1, reboot_rank=1),),
    secrets={"pgbackrest_cipher_pass": token},
    peers=("patroni",),
    after=("pgbackrest",),
)


BACKUP_KINDS = ("database", "media", "keys")
SUCCESS = re.compile(r'^matrix_platform_backup_last_success_timestamp_seconds\{kind="(\w+)"\} (\S+)$', re.M)


@dataclass(frozen=True)
class Freshness:
    """When one kind of backup last succeeded, as seen on the backup host."""

    kind: str
    newest: float | None  # Unix time; None: never
    age_hours: float | None


def ages_command(settings: Settings, _host: HostInfo | None = None) -> str:
    """One command: the host's clock, `pgbackrest info` and the pull's success metric."""
    stanza = settings.config.backup.stanza
    return (
        f"date +%s; runuser -u postgres -- pgbackrest --stanza={stanza} --output=json info; "
        f"cat {TEXTFILE_DIR}/backup-files.prom 2>/dev/null || true"
    )


def parse_ages(out: str) -> list[Freshness]:
    """The newest backup of each kind and its age, from `ages_command`'s output."""
    now_line, rest = out.split("\n", 1)
    now = float(now_line)
    rest = rest.lstrip()
    # pgBackRest prints JSON even for a stanza it has not made yet; nothing at all where it is not
    # installed yet (a check run against new servers), which is no backup either.
    info_json, end = json.JSONDecoder().raw_decode(rest) if rest.startswith("[") else ([{"backup": []}], 0)
    stops = [b["timestamp"]["stop"] for b in info_json[0]["backup"]]
    newest: dict[str, float | None] = {kind: None for kind in BACKUP_KINDS}
    newest["database"] = max(stops, default=None)
    newest |= {kind: float(value) for kind, value in SUCCESS.findall(rest[end:])}
    return [
        Freshness(kind, stamp, None if stamp is None else round((now - stamp) / 3600, 3))
        for kind, stamp in newest.items()
    ]


def backup_ages(task: Task, settings: Settings) -> Result:
    """Fact: the newest database backup (pgBackRest's own record) and the last media/key pulls."""
    what = Expectation("the host's time, pgbackrest info and the file pull's metric")
    out = run(task, ages_command(settings), what=what, reads_only=True).stdout
    return Result(host=task.host, result=[asdict(a) for a in parse_ages(out)])


# What makes each kind of backup: the timers' own services (oneshot: `systemctl start` returns when done).
FIRST_RUN = {"database": database_unit("full"), "media": PULL_UNIT, "keys": PULL_UNIT}
FIRST_SECONDS = 3600  # an empty new platform's first backups take seconds; a restored, large one longer


def take_first(context: Context, _facts: HostFacts | None, _written: frozenset[str]) -> list[Command]:
    """Start the services of the kinds never backed up (each timer's own oneshot service)."""
    if context.reads is None:
        return []
    never = [age.kind for age in parse_ages(context.reads["ages"]) if age.newest is None]
    units = list(dict.fromkeys(FIRST_RUN[kind] for kind in never))
    if not units:
        return []
    return [
        Command(
            f"systemctl start {' '.join(units)}",
            f"first backup: {', '.join(never)} ({' '.join(units)})",
            f"the first {', '.join(never)} backup(s) taken",
            f"read 'journalctl {' '.join(f'-u {unit}' for unit in units)} -n 50' on the host",
            timeout=FIRST_SECONDS,
        )
    ]


def first_backup_notes(_context: Context, actions: Sequence[Action]) -> tuple[str, str]:
    return ("" if actions else "every kind of backup exists"), ""


# Why: the timers fire on their schedule (the full backup weekly), so a new platform had no
# backup at all until then: `backup_setup.py check` and the restore drill failed right
# after the first deploy. One command when every kind has a backup already.
FIRST_BACKUP = Component(
    "first-backup",
    groups=("backup",),
    summary="on the backup host: the first full database backup and media/key pull, where none exists yet",
    after=("backup-repository", "backup-files"),
    reads={"ages": ages_command},
    behaviour=take_first,
    notes=first_backup_notes,
    unread="the first backups are taken once the platform runs",
)


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
