"""Certificates on the servers: the site CA in every trust store, and what each TLS endpoint serves.

Every server trusts the internal CA (core/pki.py), so services and tools on one server
verify the TLS of another (the VIP, Coturn, etcd, Patroni, PostgreSQL, PgBouncer) without
extra options. The served certificates are checked over the network the way clients see
them (from the monitoring host, or an internal endpoint from its own host, which its
firewall lets in): chain, name and days left; their expiry goes to node-exporter's textfile
directory on the monitoring host, so Prometheus alerts before a certificate runs out.
"""

from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass

from nornir.core.task import AggregatedResult, Result, Task

from core import pki
from core.errors import InputProblem
from core.pki import TRUSTED_CA
from core.settings import Settings
from tasks import etcd, patroni
from tasks.backup import PGBACKREST_PORT, Tls
from tasks.component import Component
from tasks.declaration import File, Handler, Procedure
from tasks.executor import execute
from tasks.files import FileSpec, put_files
from tasks.monitoring import TEXTFILE_DIR
from tasks.remote import Expectation, run

CA_TRUST = Component(
    "ca-trust",
    groups=None,
    per_host=True,  # a host's trust store is all that host's later steps need of it
    summary="the site CA certificate in every server's trust store",
    packages=("ca-certificates",),
    autostart=True,
    files=(File(TRUSTED_CA, lambda c: c.settings.ca.ca_pem()),),
    # Not --fresh: that links every certificate of the store again (1.4 s of a host's CPU against 0.8 s);
    # a plain run links the new ones and drops the links of removed ones (a retired site CA) all the same.
    handlers=(
        Handler(
            "update-ca-certificates >/dev/null",
            after=(TRUSTED_CA,),
            expect="the trust store rebuilt",
        ),
    ),
)


@dataclass(frozen=True)
class Endpoint:
    """A TLS listener clients or other servers use, and the name they ask for."""

    label: str  # what the tables and the metric call it
    address: str
    port: int
    server_name: str
    via: str = ""  # the host that checks it, when not the monitoring host (one its firewall lets in)
    postgres: bool = False  # PostgreSQL's protocol: TLS after an SSLRequest
    client: tuple[str, str] | None = None  # certificate and key shown, on `via`, to a server that asks for one


def endpoints(settings: Settings) -> list[Endpoint]:
    """Every TLS endpoint of the platform: the VIP (443, 8448), each HAProxy host, each Coturn (5349), and inside
    the perimeter etcd, Patroni's REST API, PostgreSQL, PgBouncer and pgBackRest, each for the name its clients
    verify."""
    config = settings.config
    fqdn = config.homeserver_fqdn
    found = [Endpoint(f"{fqdn}:443 (VIP)", settings.vip, 443, fqdn)]
    if config.synapse.federation:
        found.append(Endpoint(f"{fqdn}:8448 (VIP)", settings.vip, 8448, fqdn))
    found += [Endpoint(f"{h.name}:443", h.private_ip, 443, fqdn) for h in settings.members("haproxy")]
    found += [Endpoint(f"{h.name}:5349", h.private_ip, 5349, h.private_ip) for h in settings.members("coturn")]
    for h in settings.members("patroni"):
        ip = h.private_ip
        found += [
            # etcd answers only a certificate of the site CA: the member checks itself with its own.
            Endpoint(
                f"{h.name}:{etcd.CLIENT_PORT} (etcd)", ip, etcd.CLIENT_PORT, ip, h.name, client=(etcd.CERT, etcd.KEY)
            ),
            Endpoint(f"{h.name}:{patroni.REST_PORT} (patroni)", ip, patroni.REST_PORT, settings.service_name(h)),
            Endpoint(f"{h.name}:{patroni.POSTGRES_PORT} (postgresql)", ip, patroni.POSTGRES_PORT, ip, h.name, True),
        ]
    port = config.pgbouncer.port
    found += [
        Endpoint(f"{h.name}:{port} (pgbouncer)", h.private_ip, port, h.private_ip, h.name, True)
        for h in settings.members("pgbouncer")
    ]
    # pgBackRest's servers ask every client for a certificate too: each host checks itself with its own.
    found += [
        Endpoint(
            f"{h.name}:{PGBACKREST_PORT} (pgbackrest)",
            h.private_ip,
            PGBACKREST_PORT,
            settings.service_name(h),
            h.name,
            client=(Tls.cert, Tls.key),
        )
        for h in (*settings.members("patroni"), *settings.members("backup"))
    ]
    return found


# On the checking host: for each endpoint, the served certificate (DER, base64) and whether
# it verifies against the host's trust store for the name clients use.
SERVED = r"""
import base64, json, socket, ssl, struct, sys
def connect(address, port, postgres):
    raw = socket.create_connection((address, port), timeout=5)
    if postgres:  # PostgreSQL's SSLRequest; "S": TLS follows
        raw.sendall(struct.pack("!II", 8, 80877103))
        if raw.recv(1) != b"S":
            raw.close()
            raise OSError("the server declined TLS")
    return raw
out = []
for label, address, port, name, postgres, client in json.load(sys.stdin):
    entry = {"label": label, "der": None, "verified": False, "error": ""}
    try:
        loose, strict = ssl.create_default_context(), ssl.create_default_context()
        loose.check_hostname, loose.verify_mode = False, ssl.CERT_NONE
        for context in (loose, strict) if client else ():
            context.load_cert_chain(*client)
        with connect(address, port, postgres) as raw:
            with loose.wrap_socket(raw, server_hostname=name) as tls:
                entry["der"] = base64.b64encode(tls.getpeercert(binary_form=True)).decode()
        with connect(address, port, postgres) as raw:
            with strict.wrap_socket(raw, server_hostname=name):
                entry["verified"] = True
    except (OSError, ssl.SSLError) as error:
        entry["error"] = str(error)
    out.append(entry)
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Served:
    endpoint: Endpoint
    facts: pki.CertificateFacts | None
    verified: bool
    error: str


def served_certificates(task: Task, settings: Settings) -> Result:
    """Fetch and verify the certificate of every endpoint over the network: from the monitoring host, or
    from the host the endpoint names (one its firewall lets in)."""
    points = endpoints(settings)
    found: dict[Endpoint, Served] = {}
    for via in dict.fromkeys(e.via for e in points):
        batch = [e for e in points if e.via == via]
        out = run(
            task,
            f"python3 -c {shlex.quote(SERVED)}",
            stdin=json.dumps([[e.label, e.address, e.port, e.server_name, e.postgres, e.client] for e in batch]),
            what=Expectation("one JSON entry per TLS endpoint"),
            host=via or None,
        )
        for endpoint, entry in zip(batch, json.loads(out.stdout), strict=True):
            der = entry["der"]
            facts = pki.facts(base64.b64decode(der)) if der else None
            found[endpoint] = Served(endpoint, facts, entry["verified"], entry["error"])
    return Result(host=task.host, result=[found[e] for e in points])


def served_of(result: AggregatedResult) -> list[Served]:
    return [item for multi in result.values() for item in (multi[0].result or [])]


def expiry_table(result: AggregatedResult, settings: Settings) -> str:
    """Every endpoint, fewest days left first."""
    rows = sorted(served_of(result), key=lambda s: s.facts.days_left if s.facts else -1e9)
    width = max((len(s.endpoint.label) for s in rows), default=10)
    lines = [f"  {'endpoint':{width}}  {'days left':>9}  {'expires':10}  verified  subject / error"]
    for s in rows:
        if s.facts is None:
            lines.append(f"  {s.endpoint.label:{width}}  {'-':>9}  {'-':10}  no        {s.error}")
            continue
        verified = "yes" if s.verified else "NO"
        detail = s.facts.subject if s.verified else f"{s.facts.subject}: {s.error}"
        expires = f"{s.facts.not_after:%Y-%m-%d}"
        lines.append(f"  {s.endpoint.label:{width}}  {s.facts.days_left:9.1f}  {expires:10}  {verified:8}  {detail}")
    return "\n".join(lines)


def unverified(result: AggregatedResult, settings: Settings) -> list[str]:
    """Gate: every endpoint serves a certificate that verifies for the name clients use."""
    return [
        f"{s.endpoint.label}: {s.error or 'no certificate'} (expected a chain to the site CA or the imported one)"
        for s in served_of(result)
        if not s.verified
    ]


def expiring(result: AggregatedResult, settings: Settings) -> list[str]:
    """Gate of `check`: unverified endpoints, and those with fewer than certificates.min_days_left days."""
    limit = settings.config.certificates.min_days_left
    return unverified(result, settings) + [
        f"{s.endpoint.label}: {s.facts.days_left:.1f} days left, fewer than certificates.min_days_left ({limit}): "
        "python runbooks/certificates.py renew"
        for s in served_of(result)
        if s.facts and s.facts.days_left < limit
    ]


def metrics_text(served: list[Served]) -> str:
    """node-exporter textfile: each endpoint's expiry (a timestamp) and whether it verifies."""
    lines = [
        "# HELP matrix_platform_certificate_expiry_timestamp_seconds When the certificate an endpoint serves expires.",
        "# TYPE matrix_platform_certificate_expiry_timestamp_seconds gauge",
    ]
    lines += [
        f'matrix_platform_certificate_expiry_timestamp_seconds{{endpoint="{s.endpoint.label}"}} '
        f"{s.facts.not_after.timestamp():.0f}"
        for s in served
        if s.facts
    ]
    lines += [
        "# HELP matrix_platform_certificate_verified 1 when the endpoint's chain verifies for its name.",
        "# TYPE matrix_platform_certificate_verified gauge",
    ]
    lines += [
        f'matrix_platform_certificate_verified{{endpoint="{s.endpoint.label}"}} {int(s.verified)}' for s in served
    ]
    return "\n".join(lines) + "\n"


def expiry_check(task: Task, settings: Settings) -> Result:
    """Fetch every served certificate and write their expiry for Prometheus (node-exporter's textfile)."""
    served = task.run(task=served_certificates, settings=settings, severity_level=10)[0].result
    spec = FileSpec(f"{TEXTFILE_DIR}/certificates.prom", metrics_text(served))
    written = task.run(task=put_files, specs=[spec], severity_level=10)[0]
    return Result(host=task.host, result=served, changed=written.changed, diff=written.diff)


def chosen(settings: Settings, names: tuple[str, ...]) -> list[str]:
    return settings.ca.issued() if "all" in names else list(names)


def unknown_names(settings: Settings, names: tuple[str, ...]) -> list[InputProblem]:
    """`renew --name` values the site CA has not issued (refused before any host is touched)."""
    unknown = sorted(set(chosen(settings, names)) - set(settings.ca.issued()))
    if not unknown:
        return []
    return [
        InputProblem(
            "--name",
            ", ".join(unknown),
            "no certificate of the site CA has this name",
            f"use 'all' or one of: {', '.join(settings.ca.issued())}",
        )
    ]


def reissue(task: Task, settings: Settings, names: tuple[str, ...]) -> Result:
    """Internal CA: retire the named certificates so that the distribution steps issue and push new ones."""
    wanted = chosen(settings, names)

    def retire(_task: Task) -> list[str]:
        for name in wanted:
            settings.ca.retire(name)
        return [f"to be issued anew: {', '.join(wanted)}"]

    return execute(
        task, [Procedure(f"retire {', '.join(wanted)}", f"would issue anew: {', '.join(wanted)}", retire)], None
    )[0]
