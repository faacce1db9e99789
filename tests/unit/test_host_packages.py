"""The package transaction as data: which packages and early files each host gets, from the declarations."""

from __future__ import annotations

from dataclasses import replace

from core.settings import Settings
from tasks.host_packages import first_files, host_packages, on_host
from tasks.patroni import NO_MAIN_CLUSTER_FILE
from tasks.registry import DEPLOYED, deployed


def wanted(settings: Settings, name: str) -> tuple[list[str], list[str]]:
    host = settings.hosts[name]
    present = on_host(DEPLOYED, deployed, settings, host)
    return host_packages(present, settings, host), [spec.path for spec in first_files(present, settings, host)]


def test_a_host_gets_every_package_of_its_components_once_and_the_files_that_steer_the_install(
    lab_settings: Settings,
) -> None:
    packages, files = wanted(lab_settings, "patroni1")
    assert {"etcd-server", "postgresql-15", "pgbackrest", "prometheus-postgres-exporter", "nftables"} <= set(packages)
    assert len(packages) == len(set(packages))
    assert files == [NO_MAIN_CLUSTER_FILE]  # before PostgreSQL's package, which would make a stock cluster
    # PgBouncer's own HAProxy route is a part of its step: its package comes with it.
    assert {"pgbouncer", "haproxy", "keepalived"} <= set(wanted(lab_settings, "haproxy1")[0])
    # The third sentinel beside two LiveKit hosts lives on the monitoring host.
    assert "redis-sentinel" in wanted(lab_settings, "monitoring1")[0]


def test_a_component_the_settings_leave_out_installs_nothing(lab_settings: Settings) -> None:
    config = lab_settings.config
    off = replace(lab_settings, config=config.replace(livekit=config.livekit.replace(enabled=False)))
    assert {"redis-server", "redis-sentinel"} <= set(wanted(lab_settings, "livekit1")[0])
    assert not {"redis-server", "redis-sentinel"} & set(wanted(off, "livekit1")[0])
    assert "redis-sentinel" not in wanted(off, "monitoring1")[0]
    # MinIO runs from a vendor binary, not a package: its hosts get what every host gets.
    assert wanted(lab_settings, "minio1")[0] == ["nftables", "ca-certificates", "prometheus-node-exporter"]
