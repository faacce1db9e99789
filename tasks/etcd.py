"""Deployment step 1: etcd, the DCS Patroni keeps its leader lock in; one member per patroni host.

Members bootstrap statically from the inventory. Debian's package would start a
single-member etcd on install, whose data dir would then refuse to join our cluster, so
the package is installed without autostart and the data dir is named after the cluster.

Peers and clients speak TLS with certificates from the site CA, and both sides must show
one (client-certificate authentication): a host without a certificate of the site cannot
read or rewrite Patroni's state. Metrics and /health stay on a plain listener of their
own (`METRICS_PORT`), like every exporter's, for Prometheus.
"""

from __future__ import annotations

import json

from nornir.core.task import Result, Task

from core.errors import HostError
from core.pki import ServerCertificate
from core.ports import tcp
from core.settings import HostInfo, Settings
from core.targets import Job, per_host
from tasks.component import Component
from tasks.declaration import Command, Context, File, Service, template
from tasks.facts import HostFacts
from tasks.remote import Expectation, lost_hosts, run
from tasks.waits import command_script

CLIENT_PORT = 2379
PEER_PORT = 2380
METRICS_PORT = 2381
TLS_DIR = "/etc/etcd/tls"
CA, CERT, KEY = f"{TLS_DIR}/ca.crt", f"{TLS_DIR}/member.crt", f"{TLS_DIR}/member.key"


def member_certificate(settings: Settings, host: HostInfo) -> ServerCertificate:
    """A member's certificate: a server to its clients and peers, a client to its peers (and to etcdctl on the
    host); for its service name, its address and loopback."""
    return settings.certificate(
        f"etcd-{host.name}", [settings.service_name(host), host.private_ip, "127.0.0.1"], client=True
    )


def endpoints(hosts: list[HostInfo]) -> str:
    return ",".join(f"https://{h.private_ip}:{CLIENT_PORT}" for h in hosts)


def etcdctl(endpoints: str) -> str:
    """etcdctl against `endpoints`, as this member (run on a patroni host, by root)."""
    return f"ETCDCTL_API=3 etcdctl --endpoints={endpoints} --cacert={CA} --cert={CERT} --key={KEY}"


def cluster_token(settings: Settings) -> str:
    return f"matrix-{settings.site}-etcd"


def environment(context: Context) -> dict[str, object]:
    """The variables of this member's /etc/default/etcd: its name and address, the static member list."""
    settings, host = context.settings, context.host
    return {
        "host_name": host.name,
        "ip": host.private_ip,
        "initial_cluster": ",".join(
            f"{h.name}=https://{h.private_ip}:{PEER_PORT}" for h in settings.members("patroni")
        ),
        "cluster_token": cluster_token(settings),
        "client_port": CLIENT_PORT,
        "peer_port": PEER_PORT,
        "metrics_port": METRICS_PORT,
        "ca": CA,
        "cert": CERT,
        "key": KEY,
    }


def etcd_healthy(task: Task, settings: Settings) -> Result:
    """Health check: every member still in the run answers (a majority must), and the members are exactly the
    inventory's patroni hosts."""
    lost = lost_hosts(task)
    answering = [h for h in settings.members("patroni") if h.name not in lost]
    total = len(settings.members("patroni"))
    if len(answering) <= total // 2:
        raise HostError(
            f"{task.host.name}: etcd has no quorum in this run: {len(answering)} of {total} members answer "
            f"({', '.join(sorted(lost))} dropped out); bring them back, then re-run"
        )
    healthy = f"{etcdctl(endpoints(answering))} endpoint health >/dev/null 2>&1"
    out = run(
        task,
        f"{command_script(healthy, 90)} && {MEMBERS}",
        timeout=120,
        what=Expectation("every etcd member healthy within 90 s", "check 'systemctl status etcd' on each member"),
        reads_only=True,
    )
    seen = member_names(out.stdout)
    wanted = sorted(h.name for h in settings.members("patroni"))
    if seen != wanted:
        raise HostError(
            f"{task.host.name}: etcd members are {seen}, expected {wanted}: a host name or address "
            "changed after bootstrap, or another cluster's data dir is in /var/lib/etcd"
        )
    return Result(host=task.host, result=f"members {', '.join(seen)} healthy")


MEMBERS = f"{etcdctl(f'https://127.0.0.1:{CLIENT_PORT}')} member list -w json"


def member_names(members_json: str) -> list[str]:
    """Names of the members in MEMBERS's output."""
    return sorted(m.get("name", "") for m in json.loads(members_json).get("members", []))


PLAINTEXT_PEERS = "grep -s '^ETCD_LISTEN_PEER_URLS=\"http://' /etc/default/etcd; true"


def refuse_plaintext_cluster(context: Context, facts: HostFacts | None, _written: frozenset[str]) -> list[Command]:
    """A member set up before etcd spoke TLS keeps its peers' plaintext URLs in the cluster's own membership:
    rewriting its config would cut it from its peers. Refused, nothing written, until a migration exists."""
    if facts is not None and facts.commands["plaintext"].strip():
        raise HostError(
            f"{context.host.name}: this etcd member speaks plaintext to its peers (/etc/default/etcd), and this "
            "version runs etcd over TLS only; switching a running cluster needs a migration it does not do yet. "
            "Keep the previous version for this site, or rebuild the database tier from a backup onto fresh hosts"
        )
    return []


ETCD = Component(
    "etcd",
    groups=("patroni",),
    summary="etcd members, static bootstrap; every member healthy",
    packages=("etcd-server", "etcd-client"),
    files=(
        File("/etc/default/etcd", template("etcd/etcd.env.j2", environment)),
        File(CA, lambda c: c.settings.ca.ca_pem()),
        File(CERT, lambda c: member_certificate(c.settings, c.host).cert_pem),
        File(KEY, lambda c: member_certificate(c.settings, c.host).key_pem, "etcd", "etcd", 0o600, secret=True),
    ),
    # A renewed certificate needs no restart: etcd reads its certificate and key again for each new
    # connection. Its settings and the CA it trusts are read at start: a change restarts the
    # members one at a time, so the cluster keeps its quorum (and Patroni its leader key).
    services=(Service("etcd.service", restart_on=("/etc/default/etcd", CA), rolling=True),),
    reads={"plaintext": PLAINTEXT_PEERS},
    behaviour=refuse_plaintext_cluster,
    check=etcd_healthy,
    ports=(
        tcp("etcd-client", CLIENT_PORT, ("etcd",), ("patroni",)),
        tcp("etcd-peer", PEER_PORT, ("etcd",), ("patroni",)),
        tcp("etcd-metrics", METRICS_PORT, ("etcd",), ("monitoring",)),
    ),
    scrape=lambda settings: [Job("etcd", per_host(settings, "patroni", METRICS_PORT))],
)
