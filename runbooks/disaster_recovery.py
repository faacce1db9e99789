"""Disaster recovery: a new database cluster from the backups, then the rest of the platform.

    python runbooks/disaster_recovery.py                  # new servers: restore the newest backup
    python runbooks/disaster_recovery.py --time 2026-11-28T03:00:00+00:00   # … to a point in time
    python runbooks/disaster_recovery.py --wipe           # replace an existing (broken) cluster; its
                                                          # data directories are moved aside, not deleted

Synapse is stopped; Patroni bootstraps the cluster from the backup host's repository (the
member that wins restores and replays the archived WAL, the others are cloned from it);
e2e_one_time_keys_json is emptied before Synapse starts again; every other deploy step
follows. Needs the secrets file of the lost site (the repository's cipher pass, the
signing key). Media: copy the newest snapshot back (README, "Disaster recovery").
The runbook options (--lab, --check, --yes, …) go with them.
"""

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.step import Step
from runbooks.commands import Command, Commands, flag
from runbooks.deploy import RUNBOOK as DEPLOY
from runbooks.restore_drill import RESTORE_TIME
from runbooks.shell import Runbook
from tasks.disaster_recovery import (
    cluster_state,
    forget_cluster,
    forget_one_time_keys,
    occupied,
    set_aside,
    stop_synapse,
)
from tasks.patroni import Recovery, patroni_component
from tasks.restore_drill import pgbackrest_time

INFRASTRUCTURE = ("firewall", "ca-trust", "hosts-file", "node-exporter", "etcd")


def steps(wipe: bool, time: str | None) -> list[Step]:
    """The deploy's steps around a Patroni step that bootstraps from the backup."""
    recovery = Recovery(pgbackrest_time(time) if time else None)
    before = [
        Step(
            "cluster-state",
            "whether Patroni runs and data directories hold a cluster (refused without --wipe)",
            cluster_state,
            groups=("patroni",),
            gate=None if wipe else occupied,
        ),
        Step(
            "stop-synapse",
            "Synapse and its workers stopped until the database is back",
            stop_synapse,
            groups=("synapse",),
        ),
    ]
    if wipe:
        before += [
            Step(
                "set-aside", "Patroni stopped, each data directory moved aside (dated)", set_aside, groups=("patroni",)
            ),
            Step("forget-cluster", "the cluster's keys removed from etcd", forget_cluster, groups=("patroni",)),
        ]
    deploy = {s.name: s for s in DEPLOY.steps}
    infrastructure = [deploy[name] for name in INFRASTRUCTURE]
    database = [
        deploy["pgbackrest"],  # the restore reads pgBackRest's config on the database hosts
        replace(
            deploy["patroni"],
            summary="Patroni bootstraps the cluster from the newest backup (custom bootstrap with pgBackRest)",
            task=patroni_component(recovery).converge,
        ),
    ]
    keys = Step(
        "forget-one-time-keys",
        "on the new leader: e2e_one_time_keys_json emptied before Synapse starts",
        forget_one_time_keys,
        groups=("patroni",),
    )
    rest: list[Step] = []
    for step in DEPLOY.steps:
        if step.name not in ("preflight", "packages", *INFRASTRUCTURE, "pgbackrest", "patroni"):
            rest += [step, keys] if step.name == "synapse-database" else [step]
    return [deploy["preflight"], *before, deploy["packages"], *infrastructure, *database, *rest]


COMMANDS = Commands(
    "disaster_recovery.py",
    __doc__ or "",
    (
        Command(
            "",
            "disaster recovery",
            lambda flags: Runbook("disaster_recovery", __doc__ or "", steps(flags.wipe, flags.time), confirm=True),
            flags=(
                RESTORE_TIME,
                flag(
                    "--wipe",
                    action="store_true",
                    help="replace an existing cluster: its data directories are moved aside, not deleted",
                ),
            ),
        ),
    ),
    default="",
)
runbook = COMMANDS.choose


if __name__ == "__main__":
    sys.exit(COMMANDS.main(sys.argv[1:]))
