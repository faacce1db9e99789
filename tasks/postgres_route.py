"""PgBouncer's route to the PostgreSQL primary: an HAProxy instance of its own on every pgbouncer host.

It checks Patroni's `/primary` on every member and sends PgBouncer's server connections to
the one that answers, cutting sessions to a member that stops being the primary, so a
failover needs no PgBouncer change. It runs apart from the edge HAProxy (its own unit,
config, sockets and server-state file): stopping, reloading or failing the edge never
touches database writes, which the VIP drill's write verdict holds it to. Its port differs
from the one the edge's config carried before, so an upgrade starts it beside the old
listener and PgBouncer switches over on its reload.
"""

from __future__ import annotations

from core.pki import trusted_ca
from tasks.component import Component
from tasks.declaration import Context, File, Port, Service, template
from tasks.haproxy import Instance, reload_in_order
from tasks.patroni import POSTGRES_PORT, REST_PORT
from tasks.systemd import UNIT_DIR

PORT = 5434  # on 127.0.0.1
ROUTE = Instance(
    "haproxy-postgres.service",
    "/etc/haproxy/postgres.cfg",
    "/run/haproxy-postgres/admin.sock",
    "/run/haproxy-postgres-master.sock",
    "/var/lib/haproxy/postgres-server-state",
    "/run/matrix-platform/haproxy-postgres.workers",
)
UNIT_FILE = f"{UNIT_DIR}/{ROUTE.unit}"


def route(context: Context) -> dict[str, object]:
    """Template data of the route's config: every Patroni member, checked on its REST API."""
    settings = context.settings
    return {
        "host_name": context.host.name,
        "admin_socket": ROUTE.admin_socket,
        "server_state_file": ROUTE.state_file,
        "port": PORT,
        "postgres_port": POSTGRES_PORT,
        "rest_port": REST_PORT,
        "ca": trusted_ca(settings.site),
        "servers": [
            {"name": h.name, "ip": h.private_ip, "service_name": settings.service_name(h)}
            for h in settings.members("patroni")
        ],
    }


POSTGRES_ROUTE = Component(
    "postgres-route",
    groups=("pgbouncer",),
    summary="HAProxy of its own on each PgBouncer host: the route to Patroni's primary, apart from the edge",
    after=("patroni",),
    packages=("haproxy",),
    files=(
        File(
            UNIT_FILE,
            template(
                "postgres_route/haproxy-postgres.service.j2",
                lambda _: {"config": ROUTE.config, "master_socket": ROUTE.master_socket},
            ),
        ),
        File(
            ROUTE.config,
            template("postgres_route/postgres.cfg.j2", route),
            group="haproxy",
            mode=0o640,
            check="haproxy -c -f {path}",
        ),
    ),
    services=(Service(ROUTE.unit, reload=True),),
    behaviour=reload_in_order(ROUTE),
    ready=(Port(PORT, always=False),),
)
