"""What every PgBouncer of the platform shares: Debian's config files, the SCRAM verifiers its
users log in with (the ones PostgreSQL holds, so no PgBouncer stores a plain password), and the
one name of the pgbouncer hosts together.

Apart from tasks/pgbouncer.py so that Synapse's own PgBouncer (tasks/synapse_pgbouncer.py)
and the database role (tasks/database.py) use them without the pgbouncer hosts' route.
"""

from __future__ import annotations

from core import scram
from core.settings import Settings
from tasks.declaration import Context

CONFIG_FILES = ("/etc/pgbouncer/pgbouncer.ini", "/etc/pgbouncer/userlist.txt")


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
