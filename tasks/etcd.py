"""Deployment step 1: etcd, the DCS Patroni keeps its leader lock in; one member per patroni host.

Members bootstrap statically from the inventory. Debian's package would start a
single-member etcd on install, whose data dir would then refuse to join our cluster, so
the package is installed without autostart and the data dir is named after the cluster.
"""

from __future__ import annotations

import json

from nornir.core.task import Result, Task

from core.errors import HostError
from core.ports import tcp
from core.settings import Settings
from core.targets import Job, per_host
from tasks.component import Component
from tasks.declaration import Context, File, Service, template
from tasks.remote import Expectation, lost_hosts, run
from tasks.waits import command_script

CLIENT_PORT = 2379
PEER_PORT = 2380


def cluster_token(settings: Settings) -> str:
    return f"matrix-{settings.site}-etcd"


def environment(context: Context) -> dict[str, object]:
    """The variables of this member's /etc/default/etcd: its name and address, the static member list."""
    settings, host = context.settings, context.host
    return {
        "host_name": host.name,
        "ip": host.private_ip,
        "initial_cluster": ",".join(f"{h.name}=http://{h.private_ip}:{PEER_PORT}" for h in settings.members("patroni")),
        "cluster_token": cluster_token(settings),
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
    endpoints = ",".join(f"http://{h.private_ip}:{CLIENT_PORT}" for h in answering)
    healthy = f"etcdctl --endpoints={endpoints} endpoint health >/dev/null 2>&1"
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


MEMBERS = f"etcdctl --endpoints=http://127.0.0.1:{CLIENT_PORT} member list -w json"


def member_names(members_json: str) -> list[str]:
    """Names of the members in MEMBERS's output."""
    return sorted(m.get("name", "") for m in json.loads(members_json).get("members", []))


ETCD = Component(
    "etcd",
    groups=("patroni",),
    summary="etcd members, static bootstrap; every member healthy",
    packages=("etcd-server", "etcd-client"),
    files=(File("/etc/default/etcd", template("etcd/etcd.env.j2", environment)),),
    services=(Service("etcd.service"),),
    check=etcd_healthy,
    ports=(
        tcp("etcd-client", CLIENT_PORT, ("etcd",), ("patroni", "monitoring")),  # Patroni; Prometheus's metrics
        tcp("etcd-peer", PEER_PORT, ("etcd",), ("patroni",)),
    ),
    scrape=lambda settings: [Job("etcd", per_host(settings, "patroni", CLIENT_PORT))],
)
