"""Deployment step 1: etcd, the DCS Patroni keeps its leader lock in; one member per patroni host.

Members bootstrap statically from the inventory. Debian's package would start a
single-member etcd on install, whose data dir would then refuse to join our cluster, so
the package is installed without autostart and the data dir is named after the cluster.
"""

from __future__ import annotations

import json

from nornir.core.task import Result, Task

from core.errors import HostError
from core.settings import Settings
from tasks.facts import read_ahead
from tasks.files import FileSpec, put_files, render
from tasks.packages import packages
from tasks.remote import Expectation, Mode, lost_hosts, mode, run
from tasks.systemd import service
from tasks.waits import command_script

CLIENT_PORT = 2379


def cluster_token(settings: Settings) -> str:
    return f"matrix-{settings.site}-etcd"


def etcd(task: Task, settings: Settings) -> Result:
    """Install, configure and start this host's etcd member (the health check follows once all started)."""
    read_ahead(task, packages=["etcd-server", "etcd-client"], files=["/etc/default/etcd"], units=["etcd.service"])
    task.run(task=packages, names=["etcd-server", "etcd-client"], autostart=False, severity_level=10)
    host = settings.hosts[task.host.name]
    members = ",".join(f"{h.name}=http://{h.private_ip}:2380" for h in settings.members("patroni"))
    env = render(
        task,
        "etcd/etcd.env.j2",
        host_name=host.name,
        ip=host.private_ip,
        initial_cluster=members,
        cluster_token=cluster_token(settings),
    )
    changed = task.run(task=put_files, specs=[FileSpec("/etc/default/etcd", env)], severity_level=10)[0].changed
    task.run(task=service, unit="etcd.service", restart=changed, severity_level=10)
    return Result(host=task.host, changed=changed)


def etcd_healthy(task: Task, settings: Settings) -> Result:
    """Health check: every member still in the run answers (a majority must), and the members are exactly the
    inventory's patroni hosts."""
    if mode(task) is Mode.PLAN:
        return Result(host=task.host, result="not checked in this mode")
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


MEMBERS = "etcdctl --endpoints=http://127.0.0.1:2379 member list -w json"


def member_names(members_json: str) -> list[str]:
    """Names of the members in MEMBERS's output."""
    return sorted(m.get("name", "") for m in json.loads(members_json).get("members", []))
