"""Deployment step 3: PgBouncer in front of the Patroni primary, on every pgbouncer host.

Pooling is per transaction (the design's requirement). PgBouncer reaches the primary
through its own local route (tasks/postgres_route.py), which follows Patroni's leader.
Logins are SCRAM with the same verifier PostgreSQL holds (core/scram.py), so PgBouncer
never stores a plain password.

Both sides speak TLS with certificates of the site CA: clients must (Synapse's own PgBouncer
verifies this one's certificate for `pgbouncers.<internal_domain>`, the name every pgbouncer
host's certificate carries; the drills and the login check for its address), and PgBouncer
verifies the primary for the name every Patroni member's certificate carries,
`postgres-primary.<internal_domain>`, which this host's /etc/hosts points at the local route;
it shows its own certificate there too.
"""

from __future__ import annotations

import shlex

from nornir.core.task import Result, Task

from core.catalog import GroupRule
from core.pki import ServerCertificate, libpq_verify_full
from core.ports import tcp
from core.secrets import token
from core.settings import HostInfo, Settings
from core.sizing import MAINTENANCE_POOL
from tasks.component import Component
from tasks.declaration import Block, Context, File, Port, template
from tasks.patroni import primary_name
from tasks.pooler import CONFIG, LISTEN, config_files, maintenance_database, pool_name, service
from tasks.postgres_route import PORT as ROUTE_PORT
from tasks.postgres_route import POSTGRES_ROUTE
from tasks.remote import Expectation, run

TLS_DIR = "/etc/pgbouncer/tls"
SETTLES = 15  # seconds the login check asks again while the route or PgBouncer settles
TLS_CA, TLS_CERT, TLS_KEY = f"{TLS_DIR}/ca.crt", f"{TLS_DIR}/pgbouncer.crt", f"{TLS_DIR}/pgbouncer.key"


def ini(context: Context) -> dict[str, object]:
    """Template data of pgbouncer.ini: the pools sized once in the settings, the route to the primary."""
    settings, host = context.settings, context.host
    config, sizing = settings.config, settings.sizing
    return {
        "host_name": host.name,
        "listen": LISTEN,
        "database": config.database.name,
        "maintenance_database": maintenance_database(config),
        "maintenance_pool": MAINTENANCE_POOL,
        "user": config.database.user,
        "primary_port": ROUTE_PORT,
        "primary_name": primary_name(settings),
        "tls": {"ca": TLS_CA, "cert": TLS_CERT, "key": TLS_KEY},
        "pool_mode": config.pgbouncer.pool_mode,
        "default_pool_size": config.pgbouncer.default_pool_size,
        "reserve_pool_size": config.pgbouncer.reserve_pool_size,
        "max_client_conn": config.pgbouncer.max_client_conn,
        "max_connections": sizing.max_connections,
        "max_db_connections": sizing.pgbouncer_pool + sizing.pgbouncer_reserve,
        "login_retry": 2,
    }


def certificate(settings: Settings, host: HostInfo) -> ServerCertificate:
    """What this PgBouncer serves to its clients (for its own name and address, and for the name of the
    pgbouncer hosts together), and shows PostgreSQL as its client."""
    names = [settings.service_name(host), host.private_ip, pool_name(settings)]
    return settings.certificate(f"pgbouncer-{host.name}", names, client=True)


def login_check(task: Task, settings: Settings) -> Result:
    """Gate: Synapse's role logs in through this PgBouncer the way Synapse does (TLS to its address, the
    certificate verified) and reaches a writable primary.

    One remote command asks again, a second apart, for up to `SETTLES` seconds: a route just started
    counts every member up until its checks fail `fall` times (2 s), so a replica may answer; a route
    that lost every member (the host off the network, a failover) forwards again only after `rise`
    checks, and PgBouncer answers "server login has been failing" for `server_login_retry` after the
    failed login. A login that cannot work fails the same, `SETTLES` seconds later, with its last error.
    """
    config = settings.config
    address = settings.hosts[task.host.name].private_ip
    dsn = (
        f"host={address} port={config.pgbouncer.port} dbname={config.database.name} user={config.database.user} "
        + " ".join(f"{key}={value}" for key, value in libpq_verify_full(settings.site).items())
    )
    # One try gives up after 5 s: a login PgBouncer queues while it has no server would wait query_wait_timeout.
    query = f"timeout 5 psql -XAtq {shlex.quote(dsn)} -c 'select pg_is_in_recovery()' 2>&1"
    script = (
        "IFS= read -r PGPASSWORD; export PGPASSWORD; "
        f'end=$((SECONDS + {SETTLES})); while out=$({query}); [ "$out" != f ]; do '
        '[ $SECONDS -lt $end ] || { [ "$out" = t ] && out="PgBouncer reached a server in recovery"; '
        '[ -n "$out" ] || out="no answer within 5 s: PgBouncer found no server"; echo "$out" >&2; exit 1; }; '
        "sleep 1; done"
    )
    what = Expectation(
        f"'f' within {SETTLES} s: logged in through PgBouncer, on the primary",
        "check 'journalctl -u pgbouncer' (TLS to the primary: its certificate must name "
        f"{primary_name(settings)}), and its route to the primary: 'systemctl status haproxy-postgres' "
        "(which patroni host answers 200 on :8008/primary)",
    )
    run(task, script, stdin=settings.secrets["synapse_db_password"] + "\n", what=what, reads_only=True)
    return Result(host=task.host, result="synapse logs in through PgBouncer to the primary")


FILES = (
    File(TLS_CA, lambda c: c.settings.ca.ca_pem(), "postgres", "postgres"),
    File(TLS_CERT, lambda c: certificate(c.settings, c.host).cert_pem, "postgres", "postgres"),
    File(TLS_KEY, lambda c: certificate(c.settings, c.host).key_pem, "postgres", "postgres", 0o600, secret=True),
    *config_files(
        File(CONFIG, template("pgbouncer/pgbouncer.ini.j2", ini), "postgres", "postgres", 0o640),
        lambda context: f"{context.host.private_ip},127.0.0.1",
    ),
)

PGBOUNCER = Component(
    "pgbouncer",
    groups=("pgbouncer",),
    summary="PgBouncer (transaction pooling) routed to the primary by a local HAProxy; Synapse's role logs in",
    after=("hosts-file", "patroni", "synapse-database"),  # the check logs in as Synapse's role
    packages=("pgbouncer", "postgresql-client"),
    files=FILES,
    # The name it verifies the primary for leads to the local route.
    blocks=(Block("/etc/hosts", "pgbouncer", lambda c: f"127.0.0.1 {primary_name(c.settings)}\n"),),
    # A reload reads the TLS files again too: a renewed certificate drops no connection.
    services=(service(FILES),),
    # After a (re)start; on every run the login check proves the port answers (one command fewer).
    ready=(Port(lambda settings: settings.config.pgbouncer.port, always=False),),
    check=login_check,
    parts=(POSTGRES_ROUTE,),
    inventory=(GroupRule("pgbouncer", fewest=2),),
    secrets={"pgbouncer_admin_password": token},
    ports=lambda config: [
        tcp("pgbouncer", config.pgbouncer.port, ("pgbouncer",), ("synapse",), "config.yaml pgbouncer.port")
    ],
)
