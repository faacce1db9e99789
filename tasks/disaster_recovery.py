"""Disaster recovery: a new database cluster from the backups (runbooks/disaster_recovery.py).

The cluster is rebuilt by Patroni itself: with no cluster in etcd and empty data
directories, the member that wins the bootstrap runs pgBackRest's restore (a Patroni
custom bootstrap method), replays the archived WAL and promotes; the other members are
cloned from it. Synapse is stopped first and started again only after
`e2e_one_time_keys_json` was emptied, so it never hands out one-time keys the lost
server already gave away. An existing cluster is only replaced when asked (`--wipe`):
its data directories are moved aside, never deleted.
"""

from __future__ import annotations

import time

from nornir.core.task import AggregatedResult, Result, Task

from core.settings import Settings
from tasks.etcd import CLIENT_PORT, etcdctl
from tasks.patroni import data_dir, rest_get, scope
from tasks.remote import Expectation, Mode, mode, run

SYNAPSE_UNITS = "'synapse*.service' 'matrix-synapse*.service'"  # native and playbook units; none loaded: no-op


def cluster_state(task: Task, settings: Settings) -> Result:
    """Fact: whether Patroni runs here and whether the data directory holds a cluster."""
    if mode(task) is Mode.PLAN:
        return Result(host=task.host, result={"patroni": False, "data": False})
    directory = data_dir(settings)
    out = run(
        task,
        f"systemctl is-active --quiet patroni.service && echo running || echo stopped; "
        f"test -s {directory}/PG_VERSION && echo data || echo empty",
        what=Expectation(f"Patroni's state and whether {directory} holds a cluster"),
    ).stdout.split()
    return Result(host=task.host, result={"patroni": out[0] == "running", "data": out[1] == "data"})


def occupied(result: AggregatedResult, settings: Settings) -> list[str]:
    """Gate without --wipe: recovery builds a new cluster, so none may exist yet."""
    return [
        f"{host}: {'Patroni is running' if facts['patroni'] else 'the data directory holds a cluster'}; "
        "recovery would replace it: re-run with --wipe (its data directory is kept aside) if that is intended"
        for host, multi in result.items()
        if (facts := multi[0].result) and (facts["patroni"] or facts["data"])
    ]


def stop_synapse(task: Task, settings: Settings) -> Result:
    """Stop every Synapse process; the synapse step starts them once the database is back."""
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, result="Synapse would be stopped")
    run(task, f"systemctl stop {SYNAPSE_UNITS}", what=Expectation("Synapse and its workers stopped"))
    return Result(host=task.host, changed=True, diff="synapse: stopped until the database is recovered")


def set_aside(task: Task, settings: Settings) -> Result:
    """Stop Patroni (and so PostgreSQL) and move the data directory aside, dated."""
    directory = data_dir(settings)
    aside = f"{directory}.before-recovery-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, result=f"{directory} would move to {aside}")
    out = run(
        task,
        f"systemctl stop patroni.service 2>/dev/null; "
        f"if [ -e {directory} ]; then mv {directory} {aside} && echo moved; fi",
        what=Expectation(f"Patroni stopped, {directory} moved to {aside}"),
    )
    where = f"→ {aside}" if out.stdout.strip() == "moved" else "absent"
    return Result(host=task.host, changed=True, diff=f"patroni stopped; {directory} {where}")


def forget_cluster(task: Task, settings: Settings) -> Result:
    """On the first Patroni host: remove the cluster's keys from etcd, so Patroni bootstraps anew."""
    if task.host.name != settings.members("patroni")[0].name:
        return Result(host=task.host, result="the first Patroni host clears etcd")
    prefix = f"/service/{scope(settings)}/"
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, result=f"etcd keys under {prefix} would be removed")
    out = run(
        task,
        # New hosts (the old ones lost) have no etcd yet, so no keys to remove.
        f"if command -v etcdctl >/dev/null; then "
        f"{etcdctl(f'https://127.0.0.1:{CLIENT_PORT}')} del --prefix {prefix}; fi",
        what=Expectation(f"the keys under {prefix} removed from etcd", "check `etcdctl endpoint health` here"),
    )
    removed = int(out.stdout.strip() or 0)
    return Result(host=task.host, changed=bool(removed), diff=f"etcd: {removed} keys under {prefix} removed")


def forget_one_time_keys(task: Task, settings: Settings) -> Result:
    """On the new leader: empty e2e_one_time_keys_json before Synapse starts on the restored data."""
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, result="one-time keys would be removed on the leader")
    status, _ = rest_get(task, "/primary", settings.hosts[task.host.name].private_ip)
    if status != 200:
        return Result(host=task.host, result="replica: the leader empties the table")
    database = settings.config.database.name
    out = run(
        task,
        f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d {database} "
        "-c 'SELECT count(*) FROM e2e_one_time_keys_json' -c 'TRUNCATE e2e_one_time_keys_json'",
        what=Expectation("e2e_one_time_keys_json emptied on the leader"),
    )
    return Result(host=task.host, changed=True, diff=f"e2e_one_time_keys_json: {out.stdout.split()[0]} rows removed")
