"""The package transaction as data: which packages and early files each host gets, from the declarations."""

from __future__ import annotations

from dataclasses import replace

from core.settings import Settings
from tasks.declaration import Command, Venv
from tasks.facts import HostFacts
from tasks.files import Copy
from tasks.host_packages import first_files, first_venv_actions, home_key, host_packages, host_venvs, on_host
from tasks.patroni import NO_MAIN_CLUSTER_FILE
from tasks.registry import DEPLOYED, deployed
from tasks.systemd import AddUser


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


def venvs_of(settings: Settings, name: str) -> list[tuple[Venv, tuple[str, ...]]]:
    host = settings.hosts[name]
    return host_venvs(on_host(DEPLOYED, deployed, settings, host), settings, host)


def test_a_host_without_a_program_gets_its_venv_after_the_packages_with_the_account_its_install_needs(
    lab_settings: Settings,
) -> None:
    venvs = venvs_of(lab_settings, "synapse1")
    assert [venv.home for venv, _ in venvs] == ["/opt/synapse/venvs", "/opt/synapse-state-compressor/venv"]
    assert [venv.home for venv, _ in venvs_of(lab_settings, "patroni1")] == ["/opt/patroni/venv"]
    assert venvs_of(lab_settings, "haproxy1") == []
    fresh = HostFacts(users={"synapse": False}, commands={home_key(venv): "" for venv, _ in venvs})
    actions = first_venv_actions(venvs, lab_settings, fresh)
    assert isinstance(actions[0], AddUser) and actions[0].name == "synapse"  # Synapse's folders are its account's
    copied = {action.spec.path for action in actions if isinstance(action, Copy)}
    assert copied == {spec.path for venv, _ in venvs for spec in venv.wheels.specs()}
    assert [str(action) for action in actions if isinstance(action, Command)] == [
        "pip install matrix-synapse[redis]==1.163.2 into /opt/synapse/venvs/1.163.2 (from /opt/synapse/wheels)",
        "pip install synapse-auto-compressor==0.1.2 into /opt/synapse-state-compressor/venv "
        "(from /opt/synapse-state-compressor/wheels)",
    ]


def test_a_venv_the_host_has_stays_with_its_component_and_an_unread_host_gets_none(lab_settings: Settings) -> None:
    venvs = venvs_of(lab_settings, "synapse1")
    # An older Synapse's venv: the new version is the Synapse step's, which restarts what runs the old one.
    older = HostFacts(users={"synapse": True}, commands={home_key(venv): venv.home for venv, _ in venvs})
    assert first_venv_actions(venvs, lab_settings, older) == []
    assert first_venv_actions(venvs, lab_settings, None) == []  # plan mode: the component's step shows it
