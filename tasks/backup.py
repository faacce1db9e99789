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
from collections.abc import Sequence
from dataclasses import dataclass

from nornir.core.task import Result, Task

from core.errors import HostError
from core.ports import PGBACKREST_PORT
from core.settings import HostInfo, Settings
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
    task: Task, settings: Settings, config: FileSpec, extra: Sequence[FileSpec] = (), units: Sequence[str] = ()
) -> Result:
    """pgBackRest, its TLS files and config (+ `extra` files and their `units`, kept running).

    Its TLS server restarts when its files changed; one `systemctl show` covers every unit.
    """
    host = settings.hosts[task.host.name]
    task.run(task=packages, names=["pgbackrest"], autostart=False, severity_level=10)
    server = [*tls_files(settings, host), config]
    result = task.run(task=put_files, specs=[*server, *extra], severity_level=10)[0]
    written = set(result.result or [])
    wanted = {SERVER_UNIT: Wanted(restart=bool(written & {spec.path for spec in server}))}
    wanted |= {unit: Wanted() for unit in units}
    services(task, wanted, daemon_reload=any(path.startswith(UNIT_DIR) for path in written))
    return result


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
    result = converge(task, settings, FileSpec(CONFIG, text, group="postgres", mode=0o640))
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
            render(task, "backup/backup.timer.j2", kind=kind, schedule=schedules[kind]),
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
    result = converge(task, settings, config, extra, timer_units)
    created = task.run(task=stanza, settings=settings, severity_level=10)[0]
    diff = "\n".join(d for d in (result.diff, created.diff) if d)
    return Result(host=task.host, changed=result.changed or created.changed, diff=diff)


def pgbackrest(task: Task, command: str, ok_codes: tuple[int, ...] = (0,), timeout: int | None = None) -> str:
    """A pgBackRest command as postgres on this host; its output."""
    return run(
        task,
        f"runuser -u postgres -- pgbackrest {command}",
        ok_codes=ok_codes,
        timeout=timeout,
        what=Expectation(f"pgbackrest {command}", "read pgBackRest's message above; its log is in /var/log/pgbackrest"),
    ).stdout


def info(task: Task, settings: Settings) -> dict:
    """`pgbackrest info` of the stanza as JSON (status code 0 = ok)."""
    out = pgbackrest(task, f"--stanza={settings.config.backup.stanza} --output=json info")
    return json.loads(out)[0]


def stanza(task: Task, settings: Settings) -> Result:
    """Create the stanza once (the repository's metadata for this cluster); a present one is left alone."""
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, result="stanza checked at deploy time")
    status = info(task, settings)["status"]
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
    pgbackrest(task, f"--stanza={settings.config.backup.stanza} --archive-timeout=180 check", timeout=300)
    facts = info(task, settings)
    if facts["status"]["code"] not in (0, 2):
        raise HostError(f"{task.host.name}: pgbackrest info: {facts['status']['message']}")
    return Result(host=task.host, result=facts)
