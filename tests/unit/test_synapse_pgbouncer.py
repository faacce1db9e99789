"""Synapse's own PgBouncer without servers: what it connects to and how it verifies it (where it may run:
tests/unit/test_validation.py)."""

from __future__ import annotations

from cryptography import x509

from core.settings import Settings
from tasks.declaration import Context
from tasks.pgbouncer import certificate
from tasks.synapse_pgbouncer import SYNAPSE_PGBOUNCER, hosts_lines


def test_it_reaches_every_pgbouncer_host_by_one_name_their_certificates_carry(lab_settings: Settings) -> None:
    synapse1 = lab_settings.hosts["synapse1"]
    context = Context(lab_settings, synapse1, None)
    files = {f.path: f.content(context) for f in SYNAPSE_PGBOUNCER.files_on(lab_settings, synapse1)}
    text = files["/etc/pgbouncer/pgbouncer.ini"]
    assert "synapse = host=pgbouncers.internal port=6432 dbname=synapse" in text
    assert "server_tls_sslmode = verify-full" in text and "pool_mode = transaction" in text
    assert "%include /etc/pgbouncer/listen.ini\n" in text
    listen = files["/etc/pgbouncer/listen.ini"]
    assert "listen_addr = 127.0.0.1\n" in listen and "unix_socket_dir = /var/run/postgresql\n" in listen
    assert hosts_lines(context) == "198.18.1.21 pgbouncers.internal\n198.18.1.22 pgbouncers.internal\n"
    for name in ("haproxy1", "haproxy2"):
        cert = x509.load_pem_x509_certificate(certificate(lab_settings, lab_settings.hosts[name]).cert_pem.encode())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "pgbouncers.internal" in names.get_values_for_type(x509.DNSName)
