"""The platform's port table: which ports each inventory group listens on.

One table serves three purposes: clashes between two services placed on one host
(validation), ports already taken by a foreign process (preflight), and each host's
firewall (public ports open to everyone, the rest to the private networks only).
Process names are what `ss -p` shows (the kernel's 15-character comm).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Config
from core.sizing import workers_for
from core.workers import REDIS_PORT, REPLICATION_PORT, port_ranges

# Exporters and monitoring services (fixed: Prometheus's scrape config follows them).
POSTGRES_EXPORTER_PORT = 9187
LIVEKIT_REDIS_EXPORTER_PORT = 9121
SYNAPSE_REDIS_EXPORTER_PORT = 9122
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
BLACKBOX_PORT = 9115
GRAFANA_PORT = 3000
PGBACKREST_PORT = 8432  # pgBackRest's TLS server between the database hosts and the repository


def comm(program: str) -> str:
    """The name `ss -p` shows for a program: the kernel keeps 15 characters."""
    return program[:15]


REDIS_EXPORTER = comm("prometheus-redis-exporter")


@dataclass(frozen=True)
class PortUse:
    """A port or range a service listens on; `processes` are the names allowed to hold it."""

    service: str
    start: int
    end: int
    proto: str
    processes: tuple[str, ...]
    setting: str  # where the operator changes it
    public: bool = False  # reached by clients from anywhere, not only from the private networks

    def overlaps(self, other: PortUse) -> bool:
        return self.proto == other.proto and self.start <= other.end and other.start <= self.end

    def label(self) -> str:
        span = str(self.start) if self.start == self.end else f"{self.start}-{self.end}"
        return f"{self.service} {span}/{self.proto}"


def _tcp(service: str, port: int, processes: tuple[str, ...], setting: str) -> PortUse:
    return PortUse(service, port, port, "tcp", processes, setting)


def _public_tcp(service: str, port: int, processes: tuple[str, ...], setting: str) -> PortUse:
    return PortUse(service, port, port, "tcp", processes, setting, public=True)


def _both(service: str, start: int, end: int, processes: tuple[str, ...], setting: str) -> list[PortUse]:
    """A public TCP and UDP port or range (TURN)."""
    return [PortUse(service, start, end, proto, processes, setting, public=True) for proto in ("tcp", "udp")]


def group_ports(config: Config, group: str) -> list[PortUse]:
    """Ports the services of `group` listen on, from the settings that move them."""
    fixed = "fixed by the platform"
    if group == "patroni":
        return [
            _tcp("postgresql", 5432, ("postgres",), fixed),
            _tcp("patroni-rest", 8008, ("patroni",), fixed),
            _tcp("etcd-client", 2379, ("etcd",), fixed),
            _tcp("etcd-peer", 2380, ("etcd",), fixed),
            _tcp("postgres-exporter", POSTGRES_EXPORTER_PORT, (comm("prometheus-postgres-exporter"),), fixed),
            _tcp("pgbackrest-server", PGBACKREST_PORT, ("pgbackrest",), fixed),
        ]
    if group == "pgbouncer":
        return [_tcp("pgbouncer", config.pgbouncer.port, ("pgbouncer",), "config.yaml pgbouncer.port")]
    if group == "minio" and config.minio.enabled:
        return [_tcp("minio-api", 9000, ("minio",), fixed), _tcp("minio-console", 9001, ("minio",), fixed)]
    if group == "haproxy":
        public = (80, 443, 8448) if config.synapse.federation else (80, 443)
        return [
            *(_public_tcp(f"haproxy-{port}", port, ("haproxy",), fixed) for port in public),
            _tcp("haproxy-stats", 8404, ("haproxy",), fixed),
        ]
    if group == "coturn":
        turn = config.turn
        return [
            *_both("turn", 3478, 3478, ("turnserver",), fixed),
            *_both("turns", 5349, 5349, ("turnserver",), fixed),
            *_both(
                "turn-relay",
                turn.relay_min_port,
                turn.relay_max_port,
                ("turnserver",),
                "config.yaml turn.relay_min_port/relay_max_port",
            ),
        ]
    if group == "livekit" and config.livekit.enabled:
        lk = config.livekit
        return [
            _tcp("livekit-http", 7880, ("livekit-server",), fixed),
            _public_tcp("livekit-rtc-tcp", 7881, ("livekit-server",), fixed),
            # No 7882/udp: the single-port UDP mux would disable the media range below.
            _tcp("livekit-metrics", 6789, ("livekit-server",), fixed),
            _tcp("livekit-jwt", 8080, ("lk-jwt-service",), fixed),
            PortUse(
                "livekit-media",
                lk.rtc_min_port,
                lk.rtc_max_port,
                "udp",
                ("livekit-server",),
                "config.yaml livekit.rtc_min_port/rtc_max_port",
                public=True,
            ),
            _tcp("livekit-redis", 6379, ("redis-server",), fixed),
            _tcp("livekit-redis-exporter", LIVEKIT_REDIS_EXPORTER_PORT, (REDIS_EXPORTER,), fixed),
        ]
    if group == "synapse":
        synapse = ("synapse", "python3", "python", "docker-proxy", "traefik")
        uses = [
            _tcp("synapse-client", 8008, synapse, fixed),
            _tcp("synapse-replication", REPLICATION_PORT, synapse, fixed),
            _tcp("synapse-metrics", config.synapse.metrics_port, synapse, "config.yaml synapse.metrics_port"),
        ]
        if config.synapse.mode == "native":
            counts = "config.yaml synapse.workers (or the scale)"
            workers = workers_for(config)
            uses += [PortUse(label, first, last, "tcp", synapse, counts) for label, first, last in port_ranges(workers)]
            if workers.total:
                uses.append(_tcp("synapse-redis", REDIS_PORT, ("redis-server",), fixed))
                uses.append(_tcp("synapse-redis-exporter", SYNAPSE_REDIS_EXPORTER_PORT, (REDIS_EXPORTER,), fixed))
        return uses
    if group == "backup":
        return [_tcp("pgbackrest-server", PGBACKREST_PORT, ("pgbackrest",), fixed)]
    if group == "monitoring":
        return [
            _tcp("prometheus", PROMETHEUS_PORT, ("prometheus",), fixed),
            _tcp("alertmanager", ALERTMANAGER_PORT, (comm("prometheus-alertmanager"), "alertmanager"), fixed),
            _tcp("blackbox-exporter", BLACKBOX_PORT, (comm("prometheus-blackbox-exporter"),), fixed),
            _tcp("grafana", GRAFANA_PORT, ("grafana", "grafana-server"), fixed),
        ]
    return []


def host_ports(config: Config, groups: list[str], ssh_port: int) -> list[PortUse]:
    """Every port a host in `groups` listens on, including what every server runs."""
    uses = [
        _tcp("ssh", ssh_port, ("sshd", "systemd"), "inventory port"),
        _tcp(
            "node-exporter",
            config.monitoring.node_exporter_port,
            (comm("prometheus-node-exporter"), "node_exporter"),
            "config.yaml monitoring.node_exporter_port",
        ),
    ]
    for group in groups:
        uses.extend(group_ports(config, group))
    return uses


def clashes(uses: list[PortUse]) -> list[tuple[PortUse, PortUse]]:
    """Pairs of different services that would listen on the same port and protocol."""
    found = []
    for index, first in enumerate(uses):
        for second in uses[index + 1 :]:
            if first.service != second.service and first.overlaps(second):
                found.append((first, second))
    return found
