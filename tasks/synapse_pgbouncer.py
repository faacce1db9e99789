"""Synapse's own PgBouncer, on the Synapse host: the pool its processes keep their connections in.

Synapse holds every database connection it opened for as long as it runs, and psycopg2
notices that the other end closed one only when it next uses it: a restarted or lost
pgbouncer host used to cost one failed request (HTTP 500) per pooled connection and
process, however long after the event — an idle media worker failed its next uploads
minutes later. Synapse's processes now connect to this PgBouncer over its Unix socket,
which nothing but its own restart closes; it pools per transaction towards the pgbouncer
hosts, so an idle connection is tied to no server connection and the next transaction
simply gets a new one: only the transactions under way when a pgbouncer host goes fail.

Its server connections go to `pgbouncers.<internal_domain>`, which this host's /etc/hosts
maps to every pgbouncer host (PgBouncer takes them in turn and skips one that refuses);
each pgbouncer host's certificate carries that name, so TLS is verified in full as before.
Logins are SCRAM with the same verifier the pgbouncer hosts hold (PgBouncer passes the
client's proof on), so no plain password is stored here either. It uses Debian's
`pgbouncer.service` and `config.yaml pgbouncer.port` on 127.0.0.1: in native mode, a host in
both the synapse and pgbouncer groups is refused as a port clash.
"""

from __future__ import annotations

from core.config import Config
from core.pki import trusted_ca
from core.ports import PortUse, tcp
from core.sizing import MAINTENANCE_POOL
from tasks.component import Component
from tasks.declaration import Block, Context, File, Port, template
from tasks.pooler import CONFIG, LISTEN, config_files, maintenance_database, pool_name, service

# What a port clash with a pgbouncer host's PgBouncer tells the operator to change.
CLASH = "none: the synapse host runs a PgBouncer of its own; keep the pgbouncer group on other hosts"


def ini(context: Context) -> dict[str, object]:
    """Template data of this PgBouncer's pgbouncer.ini: the pgbouncer hosts' pool settings, towards them."""
    settings = context.settings
    config = settings.config
    return {
        "host_name": context.host.name,
        "listen": LISTEN,
        "database": config.database.name,
        "maintenance_database": maintenance_database(config),
        "maintenance_pool": MAINTENANCE_POOL,
        "upstream": pool_name(settings),
        "port": config.pgbouncer.port,
        "ca": trusted_ca(settings.site),
        "default_pool_size": config.pgbouncer.default_pool_size,
        "reserve_pool_size": config.pgbouncer.reserve_pool_size,
        "max_client_conn": config.pgbouncer.max_client_conn,
        "login_retry": 1,
    }


def hosts_lines(context: Context) -> str:
    """Every pgbouncer host under the one name this PgBouncer connects to."""
    settings = context.settings
    return "".join(f"{host.private_ip} {pool_name(settings)}\n" for host in settings.members("pgbouncer"))


def ports(config: Config) -> list[PortUse]:
    """Its TCP listener on 127.0.0.1 (native mode only): for the operator's psql and its readiness."""
    if config.synapse.mode != "native":
        return []
    return [tcp("synapse-pgbouncer", config.pgbouncer.port, ("pgbouncer",), (), CLASH)]


FILES = config_files(
    File(CONFIG, template("synapse_pgbouncer/pgbouncer.ini.j2", ini), "postgres", "postgres", 0o640),
    lambda _: "127.0.0.1",
)

SYNAPSE_PGBOUNCER = Component(
    "synapse-pgbouncer",
    groups=("synapse",),
    summary="Synapse's own PgBouncer on its host (transaction pooling towards the pgbouncer hosts)",
    packages=("pgbouncer",),
    files=FILES,
    blocks=(Block("/etc/hosts", "synapse-pgbouncer", hosts_lines),),
    # Reloaded, which keeps Synapse's connections, unless where it listens changed.
    services=(service(FILES),),
    ready=(Port(lambda settings: settings.config.pgbouncer.port, always=False),),
    ports=ports,
)
