"""What every PgBouncer of the platform shares: Debian's unit and config files, the SCRAM verifiers
its users log in with (the ones PostgreSQL holds, so no PgBouncer stores a plain password), and
the one name of the pgbouncer hosts together.

Apart from tasks/pgbouncer.py so that Synapse's own PgBouncer (tasks/synapse_pgbouncer.py)
and the database role (tasks/database.py) use them without the pgbouncer hosts' route.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from core import scram
from core.config import Config
from core.settings import Settings
from tasks.declaration import Context, File, Service, template

UNIT = "pgbouncer.service"
CONFIG, USERS, LISTEN = "/etc/pgbouncer/pgbouncer.ini", "/etc/pgbouncer/userlist.txt", "/etc/pgbouncer/listen.ini"
SOCKET_DIR = "/var/run/postgresql"  # where Debian's PgBouncer and libpq look by default


def maintenance_database(config: Config) -> str:
    """PgBouncer's session-pooled name for the Synapse database: for maintenance that needs a session of its own
    (the state compressor's prepared statements and its advisory lock), a few connections apart from Synapse's."""
    return f"{config.database.name}_maintenance"


def pool_name(settings: Settings) -> str:
    """The name of every pgbouncer host together, which each one's certificate carries besides its own:
    Synapse's own PgBouncer (tasks/synapse_pgbouncer.py) reaches them all by it and verifies it."""
    return f"pgbouncers.{settings.config.internal_domain}"


def verifier(settings: Settings, password: str, salt_suffix: str = "") -> str:
    """SCRAM verifier of the secret `password`, salted from the salt secret (+ a per-user suffix)."""
    secrets = settings.secrets
    return scram.verifier(secrets[password], scram.salt_for(secrets["synapse_db_scram_salt"] + salt_suffix))


def synapse_verifier(settings: Settings) -> str:
    return verifier(settings, "synapse_db_password")


def users(context: Context) -> dict[str, object]:
    """Template data of userlist.txt: SCRAM verifiers, never a password."""
    settings = context.settings
    return {
        "user": settings.config.database.user,
        "user_verifier": synapse_verifier(settings),
        "admin_verifier": verifier(settings, "pgbouncer_admin_password", "admin"),
    }


def config_files(ini: File, addresses: Callable[[Context], str]) -> tuple[File, ...]:
    """pgbouncer.ini, the user list, and where it listens (`addresses`, on `config.yaml pgbouncer.port`) in a
    file of its own, which pgbouncer.ini includes: PgBouncer reads those settings only when it starts."""

    def listen(context: Context) -> dict[str, object]:
        port = context.settings.config.pgbouncer.port
        return {"host_name": context.host.name, "addresses": addresses(context), "port": port, "socket_dir": SOCKET_DIR}

    return (
        ini,
        File(USERS, template("pgbouncer/userlist.txt.j2", users), "postgres", "postgres", 0o600, secret=True),
        File(LISTEN, template("pgbouncer/listen.ini.j2", listen), "postgres", "postgres", 0o640),
    )


def service(files: Sequence[File]) -> Service:
    """Debian's unit, restarted when where it listens changed (a reload would keep the old listener), one
    host at a time, and reloaded for any other of `files`: a reload keeps every client connection."""
    reloaded = tuple(file.path for file in files if file.path != LISTEN)
    return Service(UNIT, restart_on=(LISTEN, *reloaded), reload_on=reloaded, rolling=True)
