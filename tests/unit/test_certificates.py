"""Certificates without servers: imported ACME sets are checked before distribution, the
check's table and metric, and renew's names."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core import pki
from core.settings import load_settings
from lab import LAB_CONFIG, LAB_INVENTORY
from tasks.certificates import Endpoint, Served, endpoints, metrics_text
from tasks.etcd import CERT as ETCD_CERT
from tasks.etcd import KEY as ETCD_KEY
from tasks.haproxy import edge_certificate
from tasks.registry import CATALOG
from tests.conftest import Site, load_runbook

NOW = datetime.datetime.now(datetime.UTC)


def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def acme_set(folder: Path, names: list[str], days: int = 60, key_of_other: bool = False) -> Path:
    """A certbot-like live/<name>/ folder: fullchain.pem (leaf + issuer) and privkey.pem."""
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test ACME issuer")])
    issuer = (
        x509.CertificateBuilder()
        .subject_name(issuer_name)
        .issuer_name(issuer_name)
        .public_key(issuer_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - datetime.timedelta(days=400))
        .not_valid_after(NOW + datetime.timedelta(days=400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(NOW - datetime.timedelta(days=90))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    chain = leaf.public_bytes(serialization.Encoding.PEM) + issuer.public_bytes(serialization.Encoding.PEM)
    (folder / "fullchain.pem").write_bytes(chain)
    (folder / "privkey.pem").write_bytes(pem(ec.generate_private_key(ec.SECP256R1()) if key_of_other else key))
    return folder


def test_a_good_acme_set_is_taken_with_its_chain(tmp_path: Path) -> None:
    certificate, problems = pki.imported(acme_set(tmp_path / "live", ["chat.example.org"]), ["chat.example.org"])
    assert problems == [] and certificate is not None
    assert certificate.cert_pem.count("BEGIN CERTIFICATE") == 2  # HAProxy serves the leaf and its issuer
    assert "PRIVATE KEY" in certificate.haproxy_bundle


def test_a_wildcard_covers_one_label(tmp_path: Path) -> None:
    _, problems = pki.imported(acme_set(tmp_path / "live", ["*.example.org"]), ["chat.example.org"])
    assert problems == []
    _, problems = pki.imported(acme_set(tmp_path / "deep", ["*.example.org"]), ["a.chat.example.org"])
    assert "does not cover a.chat.example.org" in problems[0]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: acme_set(d, ["chat.example.org"], key_of_other=True), "is not the key of the certificate"),
        (lambda d: acme_set(d, ["matrix.example.org"]), "does not cover chat.example.org"),
        (lambda d: acme_set(d, ["chat.example.org"], days=-1), "expired on"),
        (lambda d: d, "fullchain.pem and"),
    ],
    ids=["key-mismatch", "missing-name", "expired", "no-files"],
)
def test_a_bad_acme_set_is_refused(tmp_path: Path, make: Callable[[Path], Path], expected: str) -> None:
    folder = tmp_path / "live"
    folder.mkdir()
    certificate, problems = pki.imported(make(folder), ["chat.example.org"])
    assert certificate is None and any(expected in p for p in problems), problems


def import_site(site: Site, folder: Path) -> None:
    site.accept_examples()
    site.edit("config.yaml", "source: internal", "source: import")
    site.edit("config.yaml", "import_dir: null", f"import_dir: {folder}")


@pytest.mark.parametrize("runbook", ["deploy", "certificates"])
def test_a_bad_import_stops_distribution_before_any_host(
    site: Site, tmp_path: Path, runbook: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import_site(site, acme_set(tmp_path / "live", ["chat.z3r0d3v.com"], key_of_other=True))
    module = load_runbook(runbook)
    chosen = module.RUNBOOK if runbook == "deploy" else module.runbook([])[0]
    code = chosen.main(site.args())
    out = capsys.readouterr().out
    assert code == 2 and "nothing was touched" in out and "Traceback" not in out
    assert "certificates.import_dir" in out and "is not the key of the certificate" in out


def test_an_imported_certificate_is_what_haproxy_serves(site: Site, tmp_path: Path) -> None:
    import_site(site, acme_set(tmp_path / "live", ["chat.z3r0d3v.com"]))
    settings = load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=False)[0]
    served = edge_certificate(settings)
    assert served.name == "imported" and served.cert_pem == (tmp_path / "live" / "fullchain.pem").read_text()


def test_renew_refuses_a_name_the_ca_never_issued(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.accept_examples()
    chosen, rest = load_runbook("certificates").runbook(["renew", "--name", "turn-nosuchhost", *site.args()])
    assert chosen.main(rest) == 2
    out = capsys.readouterr().out
    assert "--name" in out and "turn-nosuchhost" in out and "no certificate of the site CA has this name" in out


def test_lab_endpoints_and_the_expiry_metric() -> None:
    settings = load_settings(LAB_CONFIG, LAB_INVENTORY, catalog=CATALOG, allow_placeholders=True)[0]
    found = {e.label: e for e in endpoints(settings)}
    assert list(found) == [
        "chat.lab.example:443 (VIP)",
        "chat.lab.example:8448 (VIP)",
        "haproxy1:443",
        "haproxy2:443",
        "coturn1:5349",
        "coturn2:5349",
        *(f"patroni{i}:{port}" for i in (1, 2, 3) for port in ("2379 (etcd)", "8008 (patroni)", "5432 (postgresql)")),
        "haproxy1:6432 (pgbouncer)",
        "haproxy2:6432 (pgbouncer)",
        *(f"{host}:8432 (pgbackrest)" for host in ("patroni1", "patroni2", "patroni3", "backup1")),
    ]
    # Inside the perimeter each endpoint is checked for the name its clients verify, from a host its firewall
    # lets in: etcd by the member itself, with its certificate (etcd answers no other).
    etcd = found["patroni2:2379 (etcd)"]
    assert (etcd.via, etcd.server_name, etcd.client) == ("patroni2", "198.18.1.12", (ETCD_CERT, ETCD_KEY))
    assert (
        found["patroni2:8008 (patroni)"].server_name == "patroni2.internal" and not found["patroni2:8008 (patroni)"].via
    )
    assert found["patroni3:5432 (postgresql)"].postgres and found["haproxy2:6432 (pgbouncer)"].via == "haproxy2"
    until = datetime.datetime(2027, 1, 2, tzinfo=datetime.UTC)
    served = [
        Served(
            Endpoint("coturn1:5349", "198.18.1.41", 5349, "198.18.1.41"),
            pki.CertificateFacts("", "", (), until),
            True,
            "",
        ),
        Served(Endpoint("coturn2:5349", "198.18.1.42", 5349, "198.18.1.42"), None, False, "refused"),
    ]
    text = metrics_text(served)
    assert (
        f'matrix_platform_certificate_expiry_timestamp_seconds{{endpoint="coturn1:5349"}} {until.timestamp():.0f}'
        in text
    )
    assert 'matrix_platform_certificate_verified{endpoint="coturn2:5349"} 0' in text
    assert 'expiry_timestamp_seconds{endpoint="coturn2:5349"}' not in text  # nothing served, no date


def test_a_certificate_for_client_use_gets_client_auth_and_is_reissued_for_it(tmp_path: Path) -> None:
    ca = pki.InternalCA(tmp_path / "ca", "test")
    server_only = ca.server("pgbackrest-patroni1", ["patroni1.internal", "10.0.2.11"], 365, 30)
    both = ca.server("pgbackrest-patroni1", ["patroni1.internal", "10.0.2.11"], 365, 30, client=True)
    assert both.cert_pem != server_only.cert_pem  # the usage changed: a new certificate
    usages = x509.load_pem_x509_certificate(both.cert_pem.encode()).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    )
    assert set(usages.value) == {x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH}
    assert ca.server("pgbackrest-patroni1", ["patroni1.internal", "10.0.2.11"], 365, 30, client=True) == both
    assert ca.issued() == ["pgbackrest-patroni1"] and ca.retire("pgbackrest-patroni1")
