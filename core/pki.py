"""The site's internal certificate authority, kept on the controller.

An air-gapped site cannot reach a public ACME CA once the internet is gone, so the
framework can be its own CA: one ECDSA P-384 root (10 years) whose key never leaves
the controller (`.secrets/<site>-ca/`, 0600 in a 0700 folder), issuing ECDSA P-256
server certificates with the SANs each service is reached by. Certificates are
re-used until they come within `renew_before_days` of expiry or their names change,
so a re-run issues nothing and no consumer reloads.
"""

from __future__ import annotations

import datetime
import os
import threading
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

# cryptography's X.509 module is imported where a certificate is handled, not here: this module is
# imported by every run before its first remote command, and that import alone took 12 ms of it.
if TYPE_CHECKING:
    from cryptography import x509

CA_LIFETIME = datetime.timedelta(days=3650)
# Hosts run in threads: without this, each would make its own root on a fresh site.
_LOCK = threading.Lock()


# Where the ca-trust step puts the site CA on every server (the trust store's source, and the
# file a client that must trust the site CA alone points at).
TRUSTED_CA = "/usr/local/share/ca-certificates/matrix-platform-{site}.crt"


def trusted_ca(site: str) -> str:
    return TRUSTED_CA.format(site=site)


def libpq_verify_full(site: str) -> dict[str, str]:
    """libpq options of a client of PgBouncer (the playbook's Synapse, the drills, the login check): TLS, the server's
    certificate verified for the address connected to, against the site CA."""
    return {"sslmode": "verify-full", "sslrootcert": trusted_ca(site)}


@dataclass(frozen=True)
class ServerCertificate:
    """A server certificate, its private key and the CA that signed it, all PEM."""

    name: str
    cert_pem: str
    key_pem: str
    ca_pem: str

    @property
    def haproxy_bundle(self) -> str:
        """HAProxy's `crt` file: the certificate followed by its key."""
        return self.cert_pem + self.key_pem

    @property
    def not_after(self) -> datetime.datetime:
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.cert_pem.encode()).not_valid_after_utc


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(names: list[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            address = ip_address(name)
        except ValueError:
            entries.append(x509.DNSName(name))
            continue
        assert isinstance(address, IPv4Address | IPv6Address)
        entries.append(x509.IPAddress(address))
    return entries


def _usages(client: bool) -> list[x509.ObjectIdentifier]:
    from cryptography.x509.oid import ExtendedKeyUsageOID

    server = [ExtendedKeyUsageOID.SERVER_AUTH]
    return [*server, ExtendedKeyUsageOID.CLIENT_AUTH] if client else server


class InternalCA:
    """The CA of one site; `folder` holds ca.key, ca.crt and one key/cert pair per service."""

    def __init__(self, folder: Path, site: str) -> None:
        self.folder = folder
        self.site = site

    @property
    def cert_path(self) -> Path:
        return self.folder / "ca.crt"

    def ca_pem(self) -> str:
        with _LOCK:
            self._ensure_root()
            return self.cert_path.read_text()

    def server(
        self, name: str, names: list[str], lifetime_days: int, renew_before_days: int, client: bool = False
    ) -> ServerCertificate:
        """The certificate `name` for `names` (DNS names or IPs), issued anew only when needed.

        `client`: also good for TLS client authentication (pgBackRest's hosts are both).
        """
        usages = _usages(client)
        with _LOCK:
            self._ensure_root()
            cert_path, key_path = self.folder / f"{name}.crt", self.folder / f"{name}.key"
            if not (cert_path.exists() and key_path.exists()) or self._needs_new(
                cert_path, names, renew_before_days, usages
            ):
                self._issue(cert_path, key_path, names, lifetime_days, usages)
            return ServerCertificate(name, cert_path.read_text(), key_path.read_text(), self.cert_path.read_text())

    def retire(self, name: str) -> bool:
        """Drop the certificate `name` so that the next use issues a new one (renew); False if none."""
        with _LOCK:
            cert_path = self.folder / f"{name}.crt"
            if not cert_path.exists():
                return False
            cert_path.unlink()
            return True

    def issued(self) -> list[str]:
        """Names of the server certificates this CA has issued and keeps."""
        return sorted(p.stem for p in self.folder.glob("*.crt") if p.stem != "ca")

    def _needs_new(
        self, cert_path: Path, names: list[str], renew_before_days: int, usages: list[x509.ObjectIdentifier]
    ) -> bool:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        root = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return True
        return (
            cert.issuer != root.subject
            or set(san) != set(_san(names))
            or set(eku) != set(usages)
            or cert.not_valid_after_utc - _now() < datetime.timedelta(days=renew_before_days)
        )

    def _ensure_root(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path = self.folder / "ca.key"
        if key_path.exists() and self.cert_path.exists():
            return
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP384R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Matrix platform"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Matrix platform CA ({self.site})"),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384())
        )
        _write_private(key_path, _pem_key(key))
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _issue(
        self, cert_path: Path, key_path: Path, names: list[str], lifetime_days: int, usages: list[x509.ObjectIdentifier]
    ) -> None:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        ca_key = serialization.load_pem_private_key((self.folder / "ca.key").read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        root = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=lifetime_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(key_path, _pem_key(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class CertificateFacts:
    """What matters about a certificate for checks: its names, issuer and validity end."""

    subject: str
    issuer: str
    names: tuple[str, ...]
    not_after: datetime.datetime

    @property
    def days_left(self) -> float:
        return (self.not_after - _now()).total_seconds() / 86400


def facts(der: bytes) -> CertificateFacts:
    """What matters of a certificate in DER form (as a TLS handshake gives it)."""
    from cryptography import x509

    certificate = x509.load_der_x509_certificate(der)
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(n.value) for n in san)
    except x509.ExtensionNotFound:
        names = ()
    return CertificateFacts(
        certificate.subject.rfc4514_string(),
        certificate.issuer.rfc4514_string(),
        names,
        certificate.not_valid_after_utc,
    )


def imported(directory: Path, required_names: list[str]) -> tuple[ServerCertificate | None, list[str]]:
    """An ACME certificate set (certbot's fullchain.pem + privkey.pem) and what is wrong with it.

    Refused: a missing or unreadable file, a key that does not belong to the certificate,
    a name clients use that the certificate does not cover, an expired certificate.
    """
    chain_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    missing = [str(p) for p in (chain_path, key_path) if not p.is_file()]
    if missing:
        return None, [f"{' and '.join(missing)} not found"]
    from cryptography import x509

    try:
        chain = x509.load_pem_x509_certificates(chain_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        return None, [f"cannot read the certificate set in {directory}: {error}"]
    leaf = chain[0]
    problems = []
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        problems.append(f"{key_path} is not the key of the certificate in {chain_path}")
    found = facts(leaf.public_bytes(serialization.Encoding.DER))
    uncovered = [name for name in required_names if not _covers(found.names, name)]
    if uncovered:
        problems.append(f"{chain_path} does not cover {', '.join(uncovered)} (its names: {', '.join(found.names)})")
    if found.days_left <= 0:
        problems.append(f"{chain_path} expired on {found.not_after:%Y-%m-%d}")
    if problems:
        return None, problems
    ca = chain[-1].public_bytes(serialization.Encoding.PEM).decode() if len(chain) > 1 else ""
    cert_pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
    return ServerCertificate("imported", cert_pem, key_path.read_text(), ca), []


def _covers(names: tuple[str, ...], name: str) -> bool:
    """Whether a SAN list covers `name`, a wildcard covering one label."""
    return name in names or any(n.startswith("*.") and name.split(".", 1)[-1] == n[2:] for n in names)
