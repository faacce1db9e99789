"""What Prometheus scrapes, computed from the inventory and what the deploy runs.

One list feeds the generated prometheus.yml and the checks that every target is UP, so
the two cannot drift apart. Every target carries `host` and `role` labels (and
`worker` for Synapse processes); a tier whose binary is not in the artifact cache
(LiveKit, MinIO) has no targets until it is deployed.
"""

from __future__ import annotations

from dataclasses import dataclass

from core import artifacts
from core.ports import (
    ALERTMANAGER_PORT,
    BLACKBOX_PORT,
    LIVEKIT_REDIS_EXPORTER_PORT,
    POSTGRES_EXPORTER_PORT,
    PROMETHEUS_PORT,
    SYNAPSE_REDIS_EXPORTER_PORT,
)
from core.settings import HostInfo, Settings
from core.sizing import workers_for
from core.workers import Worker, plan, playbook_plan

HAPROXY_STATS_PORT = 8404
LIVEKIT_METRICS_PORT = 6789
MINIO_PORT = 9000


@dataclass(frozen=True)
class Target:
    address: str  # host:port, or the URL/address a probe checks
    labels: dict[str, str]


@dataclass(frozen=True)
class Job:
    name: str
    targets: list[Target]
    metrics_path: str = "/metrics"
    # HAProxy's stats page: user and the file holding the password on the monitoring host.
    basic_auth: tuple[str, str] | None = None
    # Probes: the blackbox exporter checks each target with this module.
    module: str | None = None

    @property
    def path(self) -> str:
        """The URL path Prometheus scrapes: a probe's result is at the blackbox exporter's /probe."""
        return "/probe" if self.module else self.metrics_path


def deployed(name: str) -> bool:
    """Whether the artifact a tier needs is in the cache (else its step is skipped)."""
    return not artifacts.problems(artifacts.manifest()[name])


def labels(host: HostInfo, **extra: str) -> dict[str, str]:
    return {"host": host.name, "role": ",".join(host.groups), **extra}


def per_host(settings: Settings, group: str, port: int) -> list[Target]:
    return [Target(f"{h.private_ip}:{port}", labels(h)) for h in settings.members(group)]


def synapse_processes(settings: Settings) -> list[Worker]:
    """Every worker with a metrics listener: ours in native mode, the playbook's otherwise."""
    config = settings.config
    if config.synapse.mode == "native":
        return plan(workers_for(config))
    return playbook_plan(workers_for(config), config.synapse.federation)


def synapse_targets(settings: Settings) -> list[Target]:
    host = settings.members("synapse")[0]
    main = Target(f"{host.private_ip}:{settings.config.synapse.metrics_port}", labels(host, worker="main"))
    workers = [
        Target(f"{host.private_ip}:{w.metrics_port}", labels(host, worker=w.name, worker_type=w.kind))
        for w in synapse_processes(settings)
    ]
    return [main, *workers]


def jobs(settings: Settings, haproxy_password_file: str) -> list[Job]:
    """Every scrape job of the platform, in a stable order."""
    config = settings.config
    monitoring = settings.members("monitoring")[0]
    node_port = config.monitoring.node_exporter_port
    found = [
        Job("prometheus", [Target(f"{monitoring.private_ip}:{PROMETHEUS_PORT}", labels(monitoring))]),
        Job("alertmanager", [Target(f"{monitoring.private_ip}:{ALERTMANAGER_PORT}", labels(monitoring))]),
        Job("blackbox", [Target(f"{monitoring.private_ip}:{BLACKBOX_PORT}", labels(monitoring))]),
        Job("node", [Target(f"{h.private_ip}:{node_port}", labels(h)) for h in settings.hosts.values()]),
        Job("etcd", per_host(settings, "patroni", 2379)),
        Job("patroni", per_host(settings, "patroni", 8008)),
        Job("postgres", per_host(settings, "patroni", POSTGRES_EXPORTER_PORT)),
        Job(
            "haproxy",
            per_host(settings, "haproxy", HAPROXY_STATS_PORT),
            basic_auth=("stats", haproxy_password_file),
        ),
        Job("synapse", synapse_targets(settings)),
        # Coturn has no metrics of its own in Debian's build: probed from the monitoring host.
        Job("coturn", per_host(settings, "coturn", 3478), module="tcp_connect"),
        Job("coturn-tls", per_host(settings, "coturn", 5349), module="tls_connect"),
        Job(
            "edge",
            [Target(f"https://{config.homeserver_fqdn}/_matrix/client/versions", labels(monitoring))],
            module="http_2xx",
        ),
    ]
    if config.synapse.mode == "native" and workers_for(config).total:
        found.append(Job("synapse-redis", per_host(settings, "synapse", SYNAPSE_REDIS_EXPORTER_PORT)))
    if config.livekit.enabled:
        first = settings.members("livekit")[0]
        redis = [Target(f"{first.private_ip}:{LIVEKIT_REDIS_EXPORTER_PORT}", labels(first))]
        found.append(Job("livekit-redis", redis))
        if deployed("livekit-server"):
            found.append(Job("livekit", per_host(settings, "livekit", LIVEKIT_METRICS_PORT)))
    if config.minio.enabled and deployed("minio"):
        found.append(Job("minio", per_host(settings, "minio", MINIO_PORT), metrics_path="/minio/v2/metrics/node"))
    return [job for job in found if job.targets]
