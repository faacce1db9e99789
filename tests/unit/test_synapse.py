"""Synapse native mode without servers: homeserver.yaml from the settings, the signing key format."""

from __future__ import annotations

import base64

import pytest
import yaml

from core.secrets import GENERATORS
from core.settings import Settings, load_settings
from lab import LAB_CONFIG, LAB_INVENTORY
from tasks import synapse
from tasks.files import JINJA
from tests.conftest import Site


def rendered(settings: Settings) -> dict:
    host = settings.members("synapse")[0]
    text = JINJA.get_template("synapse/homeserver.yaml.j2").render(
        **synapse.homeserver_config(settings, host.private_ip)
    )
    return yaml.safe_load(text)


@pytest.fixture
def lab_settings() -> Settings:
    return load_settings(LAB_CONFIG, LAB_INVENTORY, allow_placeholders=True)[0]


def test_homeserver_config_for_the_lab(lab_settings: Settings) -> None:
    config = rendered(lab_settings)
    assert config["server_name"] == "lab.example" and config["public_baseurl"] == "https://chat.lab.example/"
    client, metrics = config["listeners"]
    assert client["bind_addresses"] == ["198.18.1.61"] and client["x_forwarded"] is True
    assert client["resources"][0]["names"] == ["client", "federation"]
    assert metrics == {"port": 9100, "bind_addresses": ["198.18.1.61"], "type": "metrics"}
    args = config["database"]["args"]
    assert args["host"] == "198.18.1.21,198.18.1.22" and args["port"] == 6432  # every PgBouncer, in order
    assert config["trusted_key_servers"] == [] and config["report_stats"] is False  # air gap
    assert "turn:198.18.1.41:3478?transport=udp" in config["turn_uris"]
    assert "federation_domain_whitelist" not in config


def test_federation_off_keeps_openid_and_allows_no_server(site: Site) -> None:
    site.edit("config.yaml", "federation: true", "federation: false")
    config = rendered(load_settings(site.config, site.inventory, allow_placeholders=True)[0])
    assert config["listeners"][0]["resources"][0]["names"] == ["client", "openid"]  # the JWT service needs openid
    assert config["federation_domain_whitelist"] == []


def test_signing_key_has_signedjson_format() -> None:
    algorithm, key_id, seed = GENERATORS["synapse_signing_key"]().split()
    assert algorithm == "ed25519" and key_id.startswith("a_") and len(key_id) == 6
    assert len(base64.b64decode(seed + "=" * (-len(seed) % 4))) == 32 and not seed.endswith("=")
