"""Deployment step 3: PgBouncer in front of the Patroni primary, on every pgbouncer host.

Pooling is per transaction (the design's requirement). PgBouncer reaches the primary
through the local HAProxy `postgres_primary` listener, which follows Patroni's leader.
Logins are SCRAM with the same verifier PostgreSQL holds (core/scram.py), so PgBouncer
never stores a plain password.
"""

from __future__ import annotations

import shlex

from nornir.core.task import Result, Task

from core import scram
from core.settings import Settings
from tasks.facts import read_ahead
from tasks.files import FileSpec, put_files, render
from tasks.haproxy import POSTGRES_PRIMARY_PORT, haproxy, read_ahead_files
from tasks.packages import packages
from tasks.remote import Expectation, Mode, mode, run
from tasks.systemd import service
from tasks.waits import wait_for_port

CONFIG_FILES = ("/etc/pgbouncer/pgbouncer.ini", "/etc/pgbouncer/userlist.txt")


def verifier(settings: Settings, password: str, salt_suffix: str = "") -> str:
    """SCRAM verifier of the secret `password`, salted from the salt secret (+ a per-user suffix)."""
    secrets = settings.secrets
    return scram.verifier(secrets[password], scram.salt_for(secrets["synapse_db_scram_salt"] + salt_suffix))


def synapse_verifier(settings: Settings) -> str:
    return verifier(settings, "synapse_db_password")


def pgbouncer(task: Task, settings: Settings) -> Result:
    """Install PgBouncer and its local route to the primary; reload on config change."""
    read_ahead(
        task,
        packages=["pgbouncer", "postgresql-client", "haproxy"],
        files=[*CONFIG_FILES, *read_ahead_files(settings, settings.hosts[task.host.name])],
        units=["pgbouncer.service", "haproxy.service"],
    )
    task.run(task=packages, names=["pgbouncer", "postgresql-client"], autostart=False, severity_level=10)
    routed = task.run(task=haproxy, settings=settings, severity_level=10)[0].changed
    host = settings.hosts[task.host.name]
    config, sizing = settings.config, settings.sizing
    ini = render(
        task,
        "pgbouncer/pgbouncer.ini.j2",
        host_name=host.name,
        ip=host.private_ip,
        port=config.pgbouncer.port,
        database=config.database.name,
        user=config.database.user,
        primary_port=POSTGRES_PRIMARY_PORT,
        default_pool_size=config.pgbouncer.default_pool_size,
        reserve_pool_size=config.pgbouncer.reserve_pool_size,
        max_client_conn=config.pgbouncer.max_client_conn,
        max_connections=sizing.max_connections,
        max_db_connections=sizing.pgbouncer_pool + sizing.pgbouncer_reserve,
    )
    admin = verifier(settings, "pgbouncer_admin_password", "admin")
    users = render(
        task,
        "pgbouncer/userlist.txt.j2",
        user=config.database.user,
        user_verifier=synapse_verifier(settings),
        admin_verifier=admin,
    )
    files = task.run(
        task=put_files,
        severity_level=10,
        specs=[
            FileSpec(CONFIG_FILES[0], ini, "postgres", "postgres", 0o640),
            FileSpec(CONFIG_FILES[1], users, "postgres", "postgres", 0o600, secret=True),
        ],
    )[0]
    task.run(task=service, unit="pgbouncer.service", restart=files.changed, reload=True, severity_level=10)
    task.run(task=wait_for_port, port=config.pgbouncer.port, timeout=30, severity_level=10)
    return Result(host=task.host, changed=routed or files.changed)


def login_check(task: Task, settings: Settings) -> Result:
    """Gate: Synapse's role logs in through this PgBouncer and reaches a writable primary."""
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, result="login not checked in this mode")
    config = settings.config
    dsn = f"host=127.0.0.1 port={config.pgbouncer.port} dbname={config.database.name} user={config.database.user}"
    out = run(
        task,
        f"IFS= read -r PGPASSWORD; export PGPASSWORD; psql -XAtq {shlex.quote(dsn)} -c 'select pg_is_in_recovery()'",
        stdin=settings.secrets["synapse_db_password"] + "\n",
        what=Expectation(
            "'f': logged in through PgBouncer, on the primary",
            "check 'journalctl -u pgbouncer' and the HAProxy postgres_primary listener "
            "(which patroni host answers 200 on :8008/primary)",
        ),
    )
    if out.stdout.strip() != "f":
        return Result(host=task.host, failed=True, result=f"PgBouncer reached a server in recovery: {out.stdout}")
    return Result(host=task.host, result="synapse logs in through PgBouncer to the primary")
