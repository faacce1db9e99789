"""What Prometheus scrapes: each component declares its jobs (`Component.scrape`), from the
inventory and what the deploy runs.

One list feeds the generated prometheus.yml and the checks that every target is UP, so
the two cannot drift apart. Every target carries `host` and `role` labels (and
`worker` for Synapse processes); a tier whose binary is not in the artifact cache
(LiveKit, MinIO) has no targets until it is deployed.
"""

from __future__ import annotations

from dataclasses import dataclass

from core import artifacts
from core.settings import HostInfo, Settings

# Where the monitoring host keeps HAProxy's stats password (Prometheus's basic auth for the haproxy job).
HAPROXY_PASSWORD_FILE = "/etc/prometheus/haproxy-stats.password"


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
    # Scraped over HTTPS, the target's certificate verified against this CA file on the monitoring host.
    tls_ca: str | None = None

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
