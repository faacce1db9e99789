"""Failover drills: a real fault under load, measured, undone, and the cluster checked after.

    python runbooks/failover_drill.py patroni [--variant stop|kill|partition|switchover] [--runs N]
    python runbooks/failover_drill.py vip [--variant haproxy|keepalived]
    python runbooks/failover_drill.py etcd [--variant member|quorum]
    python runbooks/failover_drill.py coturn [--variant stop|partition]
    python runbooks/failover_drill.py redis      # LiveKit's Redis master killed: Sentinel promotes its replica
    python runbooks/failover_drill.py all        # patroni (each variant), vip, etcd member, coturn, redis
    python runbooks/failover_drill.py soak [--minutes N] [--seed S]
                                                 # random faults of every kind, one at a time, for N minutes

Each drill first checks the platform is healthy and refuses otherwise, having touched
nothing. Throughout every drill a write probe on the Synapse host inserts numbered rows
through PgBouncer every 50 ms, two Matrix users send messages through the VIP, a Sentinel
client writes to LiveKit's Redis, and the controller requests the VIP over HTTPS every 50 ms
and allocates a TURN relay on each Coturn host every 250 ms; afterwards every acknowledged
write and message must be there. Prints a table per run and writes its JSON record and
timeline PNG to drills/<site>/. The soak prints each kind of fault's unavailability per probe
(p50/p95/max, from acknowledgements) and the totals, with one JSON record and one timeline.
Exit 1 when a verdict fails or the platform is left unhealthy. The runbook options (--lab,
--yes, …) go before or after the drill. MinIO and LiveKit server drills come when their binaries can be deployed
(artifacts/manifest.yaml).
"""

import argparse
import random
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.step import Step
from runbooks.commands import Command, Commands, flag
from runbooks.shell import Runbook
from tasks.drills import drill_report, failed_verdicts, healthy, refuse_unless_healthy, still_healthy
from tasks.faults import coturn_drill, etcd_drill, has_coturn, patroni_drill, redis_drill, uses_redis, vip_drill
from tasks.soak import failed_soak, soak, soak_report

DRILLS = {
    "patroni": (patroni_drill, ("stop", "kill", "partition", "switchover")),
    "vip": (vip_drill, ("haproxy", "keepalived")),
    "etcd": (etcd_drill, ("member", "quorum")),
    "coturn": (coturn_drill, ("stop", "partition")),
    "redis": (redis_drill, ("kill",)),
}
APPLIES = {"coturn": has_coturn, "redis": uses_redis}
ALL = [
    ("patroni", "stop"),
    ("patroni", "kill"),
    ("patroni", "partition"),
    ("vip", "haproxy"),
    ("etcd", "member"),
    ("coturn", "stop"),
    ("redis", "kill"),
]


HEALTHY = Step(
    "healthy",
    "the platform is healthy: one Patroni leader, streaming replicas, etcd, one VIP holder, TURN on every host, "
    "LiveKit's Redis with its replica and sentinels",
    healthy,
    groups=("synapse",),
    gate=refuse_unless_healthy,
    blocks=True,
)


def healthy_after(index: int) -> Step:
    return Step(
        f"healthy-after-{index}",
        "the platform is healthy again",
        healthy,
        groups=("synapse",),
        gate=still_healthy,
        blocks=True,
    )


def steps(runs: list[tuple[str, str]]) -> list[Step]:
    chosen = [HEALTHY]
    for index, (drill, variant) in enumerate(runs, 1):
        task, _ = DRILLS[drill]
        chosen += [
            Step(
                f"{drill}-{variant}-{index}",
                f"{drill} drill ({variant}) under load; the fault undone whatever happens",
                partial(task, variant=variant),
                groups=("synapse",),
                gate=failed_verdicts,
                report=drill_report,
                applies=APPLIES.get(drill),
            ),
            healthy_after(index),
        ]
    return chosen


def soak_steps(minutes: float, seed: int) -> list[Step]:
    return [
        HEALTHY,
        Step(
            "soak",
            # The seed is in the report (to repeat a run with --seed), not here: the handbook lists this summary.
            f"random faults, one at a time, for {minutes:g} minutes under every probe",
            partial(soak, minutes=minutes, seed=seed),
            groups=("synapse",),
            gate=failed_soak,
            report=soak_report,
        ),
        healthy_after(1),
    ]


RUNS = flag("--runs", type=int, default=1, metavar="N", help="how many times to run it (1 to 100)")


def runs_problem(flags: argparse.Namespace) -> str:
    return "" if 1 <= flags.runs <= 100 else f"--runs {flags.runs}: give how many times to run each drill, 1 to 100"


def drill(name: str) -> Command:
    """The command running the drill `name` (its first variant unless --variant names another)."""
    variants = DRILLS[name][1]
    chosen = flag("--variant", choices=variants, default=variants[0], help=f"one of {', '.join(variants)}")

    def build(flags: argparse.Namespace) -> Runbook:
        return Runbook("failover_drill", __doc__ or "", steps([(name, flags.variant)] * flags.runs), confirm=True)

    return Command(name, f"the {name} drill under load", build, (chosen, RUNS), runs_problem)


def soaking(flags: argparse.Namespace) -> Runbook:
    seed = flags.seed if flags.seed is not None else random.randrange(1 << 31)
    return Runbook("failover_drill", __doc__ or "", soak_steps(flags.minutes, seed), confirm=True)


COMMANDS = Commands(
    "failover_drill.py",
    __doc__ or "",
    (
        *(drill(name) for name in DRILLS),
        Command(
            "all",
            "patroni (each variant), vip, etcd member, coturn, redis",
            lambda flags: Runbook("failover_drill", __doc__ or "", steps(ALL * flags.runs), confirm=True),
            (RUNS,),
            runs_problem,
        ),
        Command(
            "soak",
            "random faults of every kind, one at a time, under every probe",
            soaking,
            (
                flag("--minutes", type=float, default=3.0, metavar="N", help="how long, more than 0 and at most 1440"),
                flag(
                    "--seed", type=int, default=None, metavar="S", help="the random sequence of faults, to repeat one"
                ),
            ),
            lambda flags: (
                ""
                if 0 < flags.minutes <= 24 * 60
                else f"--minutes {flags.minutes:g}: give the soak's length in minutes, more than 0 and at most 1440"
            ),
        ),
    ),
    default="all",
)
runbook = COMMANDS.choose


if __name__ == "__main__":
    sys.exit(COMMANDS.main(sys.argv[1:]))
