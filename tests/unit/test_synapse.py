"""Synapse native mode without servers: homeserver.yaml from the settings, the signing key format."""

from __future__ import annotations

import base64
import re

import pytest
import yaml

from core.secrets import signing_key
from core.settings import Settings, load_settings
from tasks import synapse
from tasks.files import jinja
from tasks.haproxy import edge
from tasks.playbook import playbook_vars
from tasks.registry import CATALOG
from tests.conftest import Site


def rendered(settings: Settings) -> dict:
    host = settings.members("synapse")[0]
    text = (
        jinja()
        .get_template("synapse/homeserver.yaml.j2")
        .render(**synapse.homeserver_config(settings, host.private_ip))
    )
    return yaml.safe_load(text)


def test_homeserver_config_for_the_lab(lab_settings: Settings) -> None:
    config = rendered(lab_settings)
    assert config["server_name"] == "lab.example" and config["public_baseurl"] == "https://chat.lab.example/"
    client, metrics, replication = config["listeners"]
    assert client["bind_addresses"] == ["198.18.1.61"] and client["x_forwarded"] is True
    # Workers reach the main process on loopback only; all of them live on this host.
    assert replication == {
        "port": 9093,
        "bind_addresses": ["127.0.0.1"],
        "type": "http",
        "resources": [{"names": ["replication"]}],
    }
    assert client["resources"][0]["names"] == ["client", "federation"]
    assert metrics == {"port": 9100, "bind_addresses": ["198.18.1.61"], "type": "metrics"}
    args = config["database"]["args"]
    assert args["host"] == "/var/run/postgresql" and args["port"] == 6432  # the host's own PgBouncer
    assert config["trusted_key_servers"] == [] and config["report_stats"] is False  # air gap
    assert "turn:198.18.1.41:3478?transport=udp" in config["turn_uris"]
    assert "federation_domain_whitelist" not in config


def test_lab_workers_share_redis_and_the_instance_map(lab_settings: Settings) -> None:
    config = rendered(lab_settings)
    assert config["redis"] == {
        "enabled": True,
        "host": "127.0.0.1",
        "port": 6380,
        "password": lab_settings.secrets["synapse_redis_password"],
    }
    assert config["instance_map"] == {
        "main": {"host": "127.0.0.1", "port": 9093},
        "event_persister1": {"host": "127.0.0.1", "port": 25011},
        "event_persister2": {"host": "127.0.0.1", "port": 25012},
    }
    assert config["stream_writers"] == {"events": ["event_persister1", "event_persister2"]}
    assert config["federation_sender_instances"] == ["federation_sender1"]
    assert config["enable_media_repo"] is False and config["media_instance_running_background_jobs"] == "media1"
    assert config["worker_replication_secret"] == lab_settings.secrets["synapse_replication_secret"]


def worker_config(settings: Settings, name: str) -> dict:
    host = settings.members("synapse")[0]
    worker = next(w for w in synapse.workers(settings) if w.name == name)
    text = (
        jinja()
        .get_template("synapse/worker.yaml.j2")
        .render(worker=worker, ip=host.private_ip, loopback="127.0.0.1", log_config=synapse.LOG_CONFIG)
    )
    return yaml.safe_load(text)


def test_worker_configs_listen_where_haproxy_and_prometheus_reach_them(lab_settings: Settings) -> None:
    assert [w.name for w in synapse.workers(lab_settings)] == [
        "sync1",
        "sync2",
        "generic1",
        "federation_sender1",
        "event_persister1",
        "event_persister2",
        "media1",
    ]
    sync = worker_config(lab_settings, "sync2")
    assert sync["worker_app"] == "synapse.app.generic_worker" and sync["worker_name"] == "sync2"
    http, metrics = sync["worker_listeners"]
    assert http["port"] == 28212 and http["bind_addresses"] == ["198.18.1.61"]
    assert http["resources"][0]["names"] == ["client"]
    assert metrics == {"type": "metrics", "port": 29212, "bind_addresses": ["198.18.1.61"]}
    persister = worker_config(lab_settings, "event_persister1")["worker_listeners"][0]
    assert persister["bind_addresses"] == ["127.0.0.1"] and persister["resources"][0]["names"] == ["replication"]
    media = worker_config(lab_settings, "media1")
    assert media["enable_media_repo"] is True and "enable_media_repo" not in worker_config(lab_settings, "generic1")


def test_playbook_mode_runs_no_native_workers(site: Site) -> None:
    settings = load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)[0]
    assert settings.config.synapse.mode == "playbook" and synapse.workers(settings) == []


def test_federation_off_keeps_openid_and_allows_no_server(site: Site) -> None:
    site.edit("config.yaml", "federation: true", "federation: false")
    config = rendered(load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)[0])
    assert config["listeners"][0]["resources"][0]["names"] == ["client", "openid"]  # the JWT service needs openid
    assert config["federation_domain_whitelist"] == []


def test_signing_key_has_signedjson_format() -> None:
    algorithm, key_id, seed = signing_key().split()
    assert algorithm == "ed25519" and key_id.startswith("a_") and len(key_id) == 6
    assert len(base64.b64decode(seed + "=" * (-len(seed) % 4))) == 32 and not seed.endswith("=")


def routed(haproxy_cfg: str, path: str) -> str:
    """Where the rendered frontend's path_reg rules send `path` (first match wins, as in HAProxy)."""
    acls: dict[str, list[str]] = {}
    for line in haproxy_cfg.splitlines():
        words = line.split()
        if words[:1] == ["acl"] and words[2] == "path_reg":
            acls.setdefault(words[1], []).append(words[3])
        elif (
            words[:1] == ["use_backend"]
            and words[2:3] == ["if"]
            and any(re.search(regex, path) for regex in acls.get(words[3], []))
        ):
            return words[1]
    return "main"


def test_haproxy_routes_worker_paths_as_synapse_documents(lab_settings: Settings) -> None:
    host = lab_settings.hosts["haproxy1"]
    text = (
        jinja()
        .get_template("haproxy/haproxy.cfg.j2")
        .render(
            host_name=host.name,
            turns=None,
            edge=edge(lab_settings, host),
            stats_password="x",
            admin_socket="/x",
            server_state_file="/tmp/state",
        )
    )
    expected = {
        "/_matrix/client/v3/sync": "synapse_sync",
        "/_matrix/client/v3/rooms/!r:lab.example/send/m.room.message/t1": "synapse_workers",
        "/_matrix/client/v3/login": "synapse_workers",
        "/_matrix/federation/v1/send/123": "synapse_federation_workers",
        "/_matrix/media/v3/upload": "synapse_media",
        "/_matrix/client/v1/media/download/lab.example/abc": "synapse_media",
        # Pagination must stay on one process per room; stream writers' endpoints on main.
        "/_matrix/client/v3/rooms/!r:lab.example/messages": "main",
        "/_matrix/client/v3/rooms/!r:lab.example/typing/@a:lab.example": "main",
        "/_synapse/admin/v1/register": "main",
    }
    assert {path: routed(text, path) for path in expected} == expected
    sync = text.split("backend synapse_sync\n")[1].split("\nbackend ")[0]
    assert "balance hdr(Authorization)" in sync and "hash-type consistent" in sync
    assert "server sync1 198.18.1.61:28211 check\n" in sync and "server sync2 198.18.1.61:28212 check\n" in sync
    # The main process answers while the pool's only member restarts; media has no such backup.
    assert "server synapse1 198.18.1.61:8008 check backup" in sync
    media = text.split("backend synapse_media\n")[1].split("\nbackend ")[0]
    assert " backup" not in media


@pytest.mark.parametrize(
    ("who", "rules"),
    [
        ("everyone", [{"user_id": "*", "alias": "*", "room_id": "*", "action": "allow"}]),
        ("admin", [{"user_id": "@admin:z3r0d3v.com", "alias": "*", "room_id": "*", "action": "allow"}]),
        ("nobody", []),
    ],
)
def test_room_directory_publication_follows_the_config(site: Site, who: str, rules: list[dict[str, str]]) -> None:
    site.edit("config.yaml", "room_directory: everyone", f"room_directory: {who}")
    settings = load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)[0]
    assert rendered(settings)["room_list_publication_rules"] == rules
    assert playbook_vars(settings)["matrix_synapse_room_list_publication_rules"] == rules


def test_retention_is_the_same_synapse_setting_in_both_modes(site: Site) -> None:
    """The shipped defaults: remote media after 90 unused days, uploads, messages and forgotten rooms kept (the
    playbook's own default would purge forgotten rooms after 28 days). Then every lifetime set."""
    settings = load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)[0]
    native, values = rendered(settings), playbook_vars(settings)
    assert native["media_retention"] == {"remote_media_lifetime": "90d"} and "retention" not in native
    assert native["forgotten_room_retention_period"] is None
    assert values["matrix_synapse_media_retention_remote_media_lifetime"] == "90d"
    assert values["matrix_synapse_media_retention_local_media_lifetime"] is None
    assert values["matrix_synapse_forgotten_room_retention_period"] is None
    assert values["matrix_synapse_retention_enabled"] is False

    for key, lifetime in (("local_media", "365d"), ("messages", "180d"), ("forgotten_rooms", "4w")):
        site.edit("config.yaml", f"    {key}: null", f"    {key}: {lifetime}")
    site.edit("config.yaml", "    remote_media: 90d", "    remote_media: null")
    settings = load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)[0]
    native, values = rendered(settings), playbook_vars(settings)
    assert native["media_retention"] == {"local_media_lifetime": "365d"}
    assert native["retention"] == {
        "enabled": True,
        "default_policy": {"max_lifetime": "180d"},
        "allowed_lifetime_min": "1d",
        "allowed_lifetime_max": "180d",
        "purge_jobs": [{"interval": "12h"}],
    }
    assert native["forgotten_room_retention_period"] == "4w"
    assert values["matrix_synapse_media_retention_remote_media_lifetime"] is None
    assert values["matrix_synapse_retention_enabled"] is True
    assert values["matrix_synapse_retention_default_policy_max_lifetime"] == "180d"
    assert values["matrix_synapse_retention_allowed_lifetime_max"] == "180d"
    assert values["matrix_synapse_forgotten_room_retention_period"] == "4w"

    site.edit("config.yaml", "    messages: 180d", "    messages: 6h")
    settings = load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)[0]
    assert rendered(settings)["retention"]["allowed_lifetime_min"] == "6h"  # never above the maximum


def test_state_compression_in_playbook_mode_is_the_playbooks_compressor_through_the_maintenance_pool(
    site: Site,
) -> None:
    settings = load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)[0]
    values = playbook_vars(settings)
    assert values["matrix_synapse_auto_compressor_enabled"] is True
    assert values["matrix_synapse_auto_compressor_database_hostname"] == settings.members("pgbouncer")[0].private_ip
    assert values["matrix_synapse_auto_compressor_database_name"] == "synapse_maintenance"  # session-pooled
    assert values["matrix_synapse_auto_compressor_database_password"] == settings.secrets["synapse_db_password"]
    assert values["matrix_synapse_auto_compressor_schedule"] == "*-*-* 04:30:00"
    assert values["matrix_synapse_auto_compressor_chunk_size"] == 500
    assert values["matrix_synapse_auto_compressor_chunks_to_compress"] == 100

    site.edit(
        "config.yaml", '    enabled: true\n    schedule: "*-*-* 04:30', '    enabled: false\n    schedule: "*-*-* 04:30'
    )
    settings = load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)[0]
    compressor = {k: v for k, v in playbook_vars(settings).items() if k.startswith("matrix_synapse_auto_compressor")}
    assert compressor == {"matrix_synapse_auto_compressor_enabled": False}  # no password where nothing runs
