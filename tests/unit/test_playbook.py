"""Playbook mode without servers: vars.yml from the settings, the checked variable list, the tags a change needs."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import yaml

from core.settings import Settings, load_settings
from tasks import playbook
from tasks.registry import CATALOG
from tests.conftest import Site

Deploy = Callable[..., tuple[int, str]]


def settings_of(site: Site) -> Settings:
    return load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)[0]


@pytest.mark.parametrize(
    ("scale", "counts"),
    [("small", (4, 2, 2, 1)), ("medium", (6, 3, 3, 2)), ("large", (8, 4, 4, 2))],
)
def test_worker_counts_follow_the_scale(site: Site, scale: str, counts: tuple[int, int, int, int]) -> None:
    site.edit("config.yaml", "scale: large", f"scale: {scale}")
    values = playbook.playbook_vars(settings_of(site))
    assert values["matrix_synapse_workers_enabled"] is True
    assert values["matrix_synapse_workers_preset"] == "specialized-workers"
    found = tuple(
        values[f"matrix_synapse_workers_{name}_count"]
        for name in (
            "sync_workers",
            "room_workers",
            "federation_sender_workers",
            "stream_writer_events_stream_workers",
        )
    )
    assert found == counts
    assert values["matrix_synapse_workers_media_repository_workers_count"] == 1


def test_database_is_ours_through_every_pgbouncer(site: Site) -> None:
    values = playbook.playbook_vars(settings_of(site))
    assert values["postgres_enabled"] is False
    assert values["matrix_synapse_database_host"] == "10.0.1.11,10.0.1.12"  # both PgBouncer hosts, libpq order
    assert values["matrix_synapse_database_port"] == 6432
    assert (values["matrix_synapse_database_cp_min"], values["matrix_synapse_database_cp_max"]) == (5, 10)
    # Over TLS, each PgBouncer verified for its address against the site CA, mounted into the containers.
    args = yaml.safe_load(values["matrix_synapse_configuration_extension_yaml"])["database"]["args"]
    ca = args["sslrootcert"]
    assert args["sslmode"] == "verify-full" and ca.startswith("/usr/local/share/ca-certificates/")
    assert values["matrix_synapse_container_additional_volumes"] == [{"src": ca, "dst": ca, "options": "ro"}]


def test_federation_switch(site: Site) -> None:
    on = playbook.playbook_vars(settings_of(site))
    assert on["matrix_homeserver_federation_enabled"] is True
    assert on["matrix_synapse_tls_federation_listener_enabled"] is False  # HAProxy terminates TLS
    assert on["matrix_synapse_workers_federation_reader_workers_count"] == 1
    site.edit("config.yaml", "federation: true", "federation: false")
    off = playbook.playbook_vars(settings_of(site))
    assert off["matrix_homeserver_federation_enabled"] is False
    assert off["matrix_synapse_workers_federation_reader_workers_count"] == 0
    assert off["matrix_synapse_federation_port_openid_resource_required"] is True  # the JWT service needs it


def test_external_services_replace_the_playbooks_own(site: Site) -> None:
    settings = settings_of(site)
    values = playbook.playbook_vars(settings)
    assert values["coturn_enabled"] is False
    assert values["matrix_synapse_turn_uris"][0].startswith("turn:10.0.4.")
    assert values["matrix_synapse_turn_shared_secret"] == settings.secrets["turn_shared_secret"]
    assert values["livekit_server_enabled"] is False
    foci = [{"type": "livekit", "livekit_service_url": "https://chat.z3r0d3v.com/livekit/jwt"}]
    assert values["matrix_synapse_matrix_rtc_transports_custom"] == foci
    assert values["matrix_static_files_file_matrix_client_property_org_matrix_msc4143_rtc_foci_custom"] == foci
    assert values["matrix_synapse_ext_synapse_s3_storage_provider_config_endpoint_url"] == "http://10.0.3.21:9000"
    # Traefik on the private address, without TLS, trusting only the HAProxy hosts.
    assert values["traefik_container_web_host_bind_port"] == "10.0.5.51:81"
    assert values["traefik_config_entrypoint_web_forwardedHeaders_trustedIPs"] == ["10.0.1.11/32", "10.0.1.12/32"]
    assert values["matrix_ketesa_container_labels_traefik_ipallowlist_sourcerange"] == ["10.0.1.11/32", "10.0.1.12/32"]
    assert json.loads(values["matrix_client_element_configuration_extension_json"])["default_server_config"] == {
        "m.homeserver": {"base_url": "https://chat.z3r0d3v.com", "server_name": "z3r0d3v.com"}
    }


def test_air_gap_settings(site: Site) -> None:
    site.edit("config.yaml", 'registry_prefix: ""', "registry_prefix: registry.internal:5000/")
    site.edit("config.yaml", 'synapse_image: ""', "synapse_image: registry.internal:5000/synapse-s3:v1.159.0")
    values = playbook.playbook_vars(settings_of(site))
    assert values["matrix_container_global_registry_prefix_override"] == "registry.internal:5000/"
    assert values["matrix_synapse_container_image"] == "registry.internal:5000/synapse-s3:v1.159.0"
    assert values["matrix_synapse_container_image_customizations_s3_storage_provider_installation_enabled"] is False


@pytest.mark.parametrize(
    "edits",
    [
        [],
        [("federation: true", "federation: false")],
        [("livekit:\n  enabled: true", "livekit:\n  enabled: false")],
        [
            ('registry_prefix: ""', "registry_prefix: r.internal/"),
            ('synapse_image: ""', "synapse_image: r.internal/s:1"),
        ],
        [
            ("    messages: null", "    messages: 365d"),
            ("    local_media: null", "    local_media: 90d"),
        ],
    ],
    ids=["default", "no-federation", "no-livekit", "air-gap", "retention"],
)
def test_every_emitted_variable_was_checked_against_the_playbook(site: Site, edits: list[tuple[str, str]]) -> None:
    for old, new in edits:
        site.edit("config.yaml", old, new)
    values = playbook.playbook_vars(settings_of(site))
    assert playbook.unchecked(values) == []
    assert not [name for name in values if name.startswith("matrix_synapse_admin_")]


def test_the_checked_list_belongs_to_the_pinned_playbook(site: Site) -> None:
    checked = yaml.safe_load(playbook.CHECKED.read_text())
    assert checked["commit"].startswith(settings_of(site).config.versions.playbook)
    assert playbook.unchecked({"matrix_synapse_admin_enabled": True, "made_up_variable": 1}) == [
        "made_up_variable",
        "matrix_synapse_admin_enabled",
    ]


def test_an_invalid_admin_path_is_refused_before_the_playbook_runs(deploy: Deploy, site: Site) -> None:
    site.accept_examples()
    vars_yml = playbook.vars_path(settings_of(site))
    site.edit("config.yaml", "admin_path: /synapse-admin", "admin_path: /synapse-admin/")
    code, out = deploy(*site.args())
    assert code == 2 and "nothing was touched" in out and "synapse.admin_path" in out
    assert not vars_yml.exists()


def test_a_missing_playbook_checkout_is_refused_before_any_host(deploy: Deploy, site: Site) -> None:
    site.accept_examples()
    code, out = deploy(*site.args("--step", "synapse-playbook"))
    assert code == 2 and "nothing was touched" in out
    assert "playbook.directory" in out and "is not a matrix-docker-ansible-deploy checkout" in out


def test_tags_follow_what_changed(site: Site) -> None:
    values = playbook.playbook_vars(settings_of(site))
    assert playbook.tags_for(None, values)[0] == "setup-all,ensure-matrix-users-created,start"
    applied = playbook.fingerprints(values)
    assert playbook.tags_for(applied, values) == (None, [])
    assert playbook.tags_for(applied, values | {"matrix_synapse_workers_sync_workers_count": 9})[0].startswith(
        "setup-all"
    )
    assert playbook.tags_for(applied, values | {"matrix_synapse_database_cp_max": 20}) == (
        "setup-synapse,start",
        ["matrix_synapse_database_cp_max"],
    )
    changed = values | {"matrix_ketesa_container_labels_traefik_path_prefix": "/admin"}
    assert playbook.tags_for(applied, changed)[0] == "install-all,ensure-matrix-users-created,start"
    # A new playbook commit (an update: new image versions) with the same variables.
    moved = playbook.fingerprints(values | {playbook.CHECKOUT: "0123abc"})
    assert playbook.tags_for(moved, values | {playbook.CHECKOUT: "4567def"}) == (
        "install-all,ensure-matrix-users-created,start",
        [playbook.CHECKOUT],
    )
    # The record holds hashes, never a secret's value.
    assert settings_of(site).secrets["synapse_db_password"] not in json.dumps(applied)


ANSIBLE_OUTPUT = """
TASK [galaxy/com.devture.ansible.role.systemd_service_manager : Ensure systemd services are running] ***
ok: [chat.example.org] => (item=matrix-synapse.service)

PLAY RECAP *********************************************************************
chat.example.org           : ok=412  changed=3    unreachable=0    failed=0    skipped=1203 rescued=0    ignored=0
"""


def test_play_recap_is_read_per_host() -> None:
    (recap,) = playbook.parse_recap(ANSIBLE_OUTPUT)
    assert (recap.host, recap.ok, recap.changed, recap.unreachable, recap.failed) == ("chat.example.org", 412, 3, 0, 0)
    assert playbook.parse_recap("ERROR! the playbook: setup.yml could not be found") == []


def test_inventory_names_the_synapse_host_by_the_homeserver_name(site: Site) -> None:
    text = playbook.inventory_text(settings_of(site))
    assert "[matrix_servers]\nchat.z3r0d3v.com ansible_host=10.0.5.51 ansible_port=22 ansible_ssh_user=root\n" in text


def test_a_registry_prefix_without_its_slash_is_refused(deploy: Deploy, site: Site) -> None:
    site.edit("config.yaml", 'registry_prefix: ""', "registry_prefix: registry.internal:5000")
    code, out = deploy(*site.args("--plan"))
    assert code == 2 and "nothing was touched" in out and "playbook.registry_prefix" in out
    assert "ending in '/'" in out and "Traceback" not in out


def test_the_plan_holds_the_playbooks_inventory_and_vars_with_every_secret_masked(deploy: Deploy, site: Site) -> None:
    code, out = deploy(*site.args("--plan", "--step", "synapse-playbook"))
    assert code == 0, out
    settings = settings_of(site)
    plan = site.root / "plan" / "production" / playbook.CONTROLLER_PLAN / "playbook" / "inventory"
    written = yaml.safe_load((plan / "host_vars" / "chat.z3r0d3v.com" / "vars.yml").read_text())
    assert written["matrix_domain"] == "z3r0d3v.com"
    assert written["matrix_homeserver_generic_secret_key"] == "<secret:playbook_generic_secret_key>"
    text = (plan / "host_vars" / "chat.z3r0d3v.com" / "vars.yml").read_text() + (plan / "hosts").read_text()
    assert not [name for name, value in settings.secrets.values.items() if len(value) >= 8 and value in text]
    assert (plan / "hosts").read_text() == playbook.inventory_text(settings)
    assert "vars.yml: would be written on the controller" in out
