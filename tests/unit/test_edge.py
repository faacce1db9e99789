"""Edge tier decisions: the internal CA, Keepalived's interface fact, firewall port sets, HAProxy's admin ACLs."""

from __future__ import annotations

import datetime
import json
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from core.errors import HostError
from core.pki import InternalCA
from core.ports import PortUse
from core.secrets import Redactor
from core.settings import load_settings
from tasks.files import jinja
from tasks.firewall import port_set
from tasks.haproxy import edge, well_known
from tasks.keepalived import interface_of
from tasks.registry import CATALOG
from tests.conftest import Site

IP_OUTPUT = """1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 198.18.1.21/16 brd 198.18.255.255 scope global eth0\\       valid_lft forever preferred_lft forever
2: eth0    inet 198.18.0.10/16 scope global secondary eth0\\       valid_lft forever preferred_lft forever
"""


def test_ca_issues_a_verifiable_certificate_and_keeps_its_key_private(tmp_path: Path) -> None:
    ca = InternalCA(tmp_path / "ca", "lab")
    cert = ca.server("edge", ["chat.example.org", "example.org", "198.18.0.10"], 30, 7)
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca" / "edge.key").stat().st_mode) == 0o600
    leaf = x509.load_pem_x509_certificate(cert.cert_pem.encode())
    root = x509.load_pem_x509_certificate(cert.ca_pem.encode())
    leaf.verify_directly_issued_by(root)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["chat.example.org", "example.org"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["198.18.0.10"]
    assert (
        datetime.timedelta(days=29)
        < cert.not_after - datetime.datetime.now(datetime.UTC)
        <= datetime.timedelta(days=30)
    )
    public = root.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"


def test_hosts_asking_at_once_on_a_fresh_site_get_one_ca(tmp_path: Path) -> None:
    """The deploy's threads all ask for the CA; a fresh site must still end up with exactly one."""
    ca = InternalCA(tmp_path / "ca", "lab")
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = set(pool.map(lambda _: ca.ca_pem(), range(32)))
    assert answers == {ca.cert_path.read_text()}


def test_ca_reuses_a_certificate_until_names_change_or_expiry_nears(tmp_path: Path) -> None:
    ca = InternalCA(tmp_path / "ca", "lab")
    first = ca.server("edge", ["chat.example.org"], 30, 7)
    assert ca.server("edge", ["chat.example.org"], 30, 7) == first
    renamed = ca.server("edge", ["chat.example.org", "example.org"], 30, 7)
    assert renamed.cert_pem != first.cert_pem and renamed.key_pem != first.key_pem
    assert ca.server("edge", ["chat.example.org", "example.org"], 30, 30).cert_pem != renamed.cert_pem
    assert ca.server("edge", ["chat.example.org", "example.org"], 30, 7).ca_pem == first.ca_pem  # one root


def test_private_keys_never_leave_through_the_redactor(tmp_path: Path) -> None:
    cert = InternalCA(tmp_path / "ca", "lab").server("edge", ["chat.example.org"], 30, 7)
    shown = Redactor(None)(f"diff:\n{cert.haproxy_bundle}end")
    assert "PRIVATE KEY" not in shown and cert.cert_pem in shown and shown.endswith("<private key>\nend")


def test_keepalived_finds_the_interface_of_the_private_address() -> None:
    assert interface_of(IP_OUTPUT, "198.18.1.21") == ("eth0", 16)
    with pytest.raises(HostError, match=r"no interface holds the private address 198\.18\.1\.99"):
        interface_of(IP_OUTPUT, "198.18.1.99")


def test_firewall_port_sets_merge_services_per_protocol() -> None:
    uses = [
        PortUse("turn", 3478, 3478, "udp", (), ""),
        PortUse("turn", 3478, 3478, "tcp", (), ""),
        PortUse("relay", 49152, 49172, "udp", (), ""),
        PortUse("relay", 49152, 49172, "udp", (), ""),
    ]
    assert port_set(uses, "udp") == "{ 3478, 49152-49172 }"
    assert port_set(uses, "tcp") == "{ 3478 }"
    assert port_set([], "tcp") == ""


@pytest.mark.parametrize(
    ("admin_path", "acls"),
    [("/synapse-admin", ["path /synapse-admin", "path_beg /synapse-admin/"]), ("/", ["path_beg /"])],
)
def test_admin_ui_acls(site: Site, admin_path: str, acls: list[str]) -> None:
    site.edit("config.yaml", "admin_path: /synapse-admin", f"admin_path: {admin_path}")
    settings, _ = load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)
    frontends = edge(settings, settings.hosts["haproxy1"])
    assert frontends is not None and frontends["admin_ui"] == acls
    assert "/_matrix/" in frontends["matrix_paths"]  # stays public when the UI is at "/"
    assert edge(settings, settings.hosts["synapse1"]) is None


def test_the_edge_answers_the_well_known_files_in_native_mode_only(site: Site) -> None:
    settings, _ = load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)
    assert settings.config.synapse.mode == "playbook" and well_known(settings) is None  # the playbook serves them
    site.edit("config.yaml", "mode: playbook", "mode: native")
    settings, _ = load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)
    documents = {kind: json.loads(text) for kind, text in (well_known(settings) or {}).items()}
    assert documents == {
        "server": {"m.server": "chat.z3r0d3v.com:443"},
        "client": {"m.homeserver": {"base_url": "https://chat.z3r0d3v.com"}},
    }
    text = (
        jinja()
        .get_template("haproxy/haproxy.cfg.j2")
        .render(
            host_name="haproxy1",
            turns=None,
            edge=edge(settings, settings.hosts["haproxy1"]),
            stats_password="x",
            admin_socket="/x",
            server_state_file="/x",
        )
    )
    assert """string '{"m.server": "chat.z3r0d3v.com:443"}' if { path /.well-known/matrix/server }""" in text
