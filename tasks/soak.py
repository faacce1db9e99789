"""The fault soak (failover_drill.py soak): random faults, one at a time, under the probes for N minutes.

Patroni's Jepsen suite is the anchor (partitions, kill -9, switchover, a set checker for
lost writes); this soak covers the whole platform a user touches. A seeded schedule draws
the faults from a shuffled bag (every kind once before any repeats), each one a fault of
tasks/faults.py on the target the platform names at that moment (the leader, the VIP
holder, the Redis master). Between two faults the platform must be healthy again — else
the soak stops, since a fault on a broken platform measures nothing — and then rests a
random pause. The probes run throughout: database writes through PgBouncer, Matrix messages
through the VIP from two users, writes to LiveKit's Redis through Sentinel, HTTPS through the
VIP and TURN allocations. At the end every acknowledged write and message is checked, and
each fault's unavailability is measured per probe in its own window, from acknowledgements
(the last before the fault to the first after).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from nornir.core.task import AggregatedResult, Result, Task

from core import timeline
from core.settings import Settings
from tasks.drills import Load, Record, anchor, platform_problems, wait_until
from tasks.faults import (
    Fault,
    coturn_fault,
    etcd_fault,
    has_coturn,
    patroni_fault,
    redis_fault,
    switchover_fault,
    uses_redis,
    vip_fault,
)
from tasks.remote import Mode, mode

# Each kind of fault: how to make it from a random choice (which Coturn host), and whether the platform has it.
KINDS: dict[str, tuple[Callable[[int], Fault], Callable[[Settings], bool] | None]] = {
    "patroni-kill": (lambda _: partial(patroni_fault, variant="kill"), None),
    "patroni-partition": (lambda _: partial(patroni_fault, variant="partition"), None),
    "patroni-switchover": (lambda _: switchover_fault, None),
    "vip-haproxy": (lambda _: partial(vip_fault, variant="haproxy"), None),
    "vip-keepalived": (lambda _: partial(vip_fault, variant="keepalived"), None),
    "etcd-member": (lambda _: partial(etcd_fault, variant="member"), None),
    "coturn-stop": (lambda choice: partial(coturn_fault, variant="stop", target=choice), has_coturn),
    "redis-kill": (lambda _: redis_fault, uses_redis),
}
PAUSE = (3.0, 10.0)  # seconds of calm between the platform being healthy again and the next fault
HEALTHY_WITHIN = 180  # seconds after a fault's end for the platform to be healthy again
PROBES = ("writes", "messages", "redis", "https")  # whose unavailability each fault is measured by


@dataclass(frozen=True)
class Planned:
    kind: str
    choice: int  # picks a target where the kind has several (a Coturn host)
    pause: float  # seconds of calm after the platform is healthy again


def schedule(seed: int, kinds: Sequence[str]) -> Iterator[Planned]:
    """The soak's faults, endless: each round a shuffle of every kind, so every kind comes before one repeats."""
    rng = random.Random(seed)
    while True:
        bag = list(kinds)
        rng.shuffle(bag)
        for kind in bag:
            yield Planned(kind, rng.randrange(1 << 16), round(rng.uniform(*PAUSE), 1))


def longest_gap(samples: Sequence[tuple[float, bool, str]], probe: str, start: float, end: float) -> float | None:
    """The longest time between two acknowledgements of `probe` from `start` to `end` (None: fewer than two)."""
    times = sorted(at for at, ok, name in samples if name == probe and ok and start <= at <= end)
    return max((b - a for a, b in itertools.pairwise(times)), default=None)


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (`share` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def stats(values: Sequence[float]) -> dict[str, float] | None:
    """p50, p95 and the maximum, rounded to 10 ms (None when nothing was measured)."""
    if not values:
        return None
    return {
        "p50": round(percentile(values, 0.5), 2),
        "p95": round(percentile(values, 0.95), 2),
        "max": round(max(values), 2),
    }


@dataclass
class Soak:
    """One soak: its schedule, the faults as they ran, each one's unavailability per probe, the totals."""

    seed: int
    minutes: float
    whole: Record  # the probes' totals over the whole run
    faults: list[Record] = field(default_factory=list)
    gaps: list[dict[str, float | None]] = field(default_factory=list)  # per fault: probe → its longest gap
    errors: list[int] = field(default_factory=list)  # per fault: the Matrix client's failed sends in its window
    stopped: str = ""  # why the soak stopped before its time

    @property
    def problems(self) -> list[str]:
        found = [f"{r.drill}-{r.variant} on {r.target}: {p}" for r in self.faults for p in r.problems]
        found += self.whole.problems
        if self.stopped:
            found.append(f"the soak stopped early: the platform was not healthy again ({self.stopped})")
        if not self.faults:
            found.append("no fault ran")
        return found

    def by_kind(self) -> dict[str, dict[str, object]]:
        """Per kind of fault: how many ran, and p50/p95/max of each probe's unavailability (seconds)."""
        counts: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        gaps: dict[tuple[str, str], list[float]] = {}
        for record, measured, failed in zip(self.faults, self.gaps, self.errors, strict=True):
            kind = f"{record.drill}-{record.variant}"
            counts[kind] += 1
            errors[kind] += failed
            for probe, gap in measured.items():
                if gap is not None:
                    gaps.setdefault((kind, probe), []).append(gap)
        return {
            kind: {"count": n, **{p: stats(gaps.get((kind, p), [])) for p in PROBES}, "client_errors": errors[kind]}
            for kind, n in counts.items()
        }

    def summary(self) -> dict:
        whole = self.whole.summary()
        return {
            "seed": self.seed,
            "minutes": self.minutes,
            "started": self.whole.fault_at,
            "ended": self.whole.restored_at,
            "faults_run": len(self.faults),
            "by_kind": self.by_kind(),
            "faults": [
                {
                    "kind": f"{r.drill}-{r.variant}",
                    "target": r.target,
                    "at_s": round(r.fault_at - self.whole.fault_at, 1),
                    "detection_s": r.seconds(r.detected_at),
                    "rejoined_s": r.seconds(r.rejoined_at),
                    "unavailable_s": {p: None if g is None else round(g, 2) for p, g in gaps.items()},
                    "client_errors": failed,
                    "problems": r.problems,
                }
                for r, gaps, failed in zip(self.faults, self.gaps, self.errors, strict=True)
            ],
            **{key: whole[key] for key in TOTALS},
            "verdict": "FAIL" if self.problems else "PASS",
            "problems": self.problems,
        }


TOTALS = (
    "writes_acknowledged",
    "writes_lost",
    "messages_acknowledged",
    "messages_lost",
    "redis_writes_acknowledged",
    "redis_writes_lost",
    "client_errors",
    "client_stalls",
    "turn_gap_s",
)


def measure_faults(soak: Soak) -> None:
    """Each fault's unavailability per probe, in its window: from a second before it to a second before the next
    (the last: to the soak's end)."""
    ends = [r.fault_at - 1 for r in soak.faults[1:]] + [soak.whole.restored_at or time.time()]
    samples = soak.whole.samples
    windows = [(record.fault_at - 1, end) for record, end in zip(soak.faults, ends, strict=True)]
    soak.gaps = [
        {probe: longest_gap(samples, probe, start, end) for probe in PROBES if _has(samples, probe)}
        for start, end in windows
    ]
    soak.errors = [
        sum(1 for at, ok, name in samples if name == "messages" and not ok and start <= at <= end)
        for start, end in windows
    ]


def _has(samples: Sequence[tuple[float, bool, str]], probe: str) -> bool:
    return any(name == probe for _, _, name in samples)


def soak(task: Task, settings: Settings, minutes: float = 3, seed: int = 0) -> Result:
    """Random faults, one at a time with the platform healthy between them, for `minutes` under every probe."""
    if not anchor(task, settings) or mode(task) is not Mode.APPLY:
        return Result(host=task.host, result=None)
    kinds = [kind for kind, (_, applies) in KINDS.items() if applies is None or applies(settings)]
    whole = Record("soak", f"{minutes:g} min, seed {seed}", "platform", f"random faults of {len(kinds)} kinds")
    result = Soak(seed, minutes, whole)
    with Load(task, settings) as load:
        whole.fault_at = time.time()
        deadline = whole.fault_at + minutes * 60
        for planned in schedule(seed, kinds):
            if time.time() >= deadline:
                break
            make, _ = KINDS[planned.kind]
            result.faults.append(make(planned.choice)(task, settings, load))
            if wait_until(lambda: not platform_problems(task, settings), HEALTHY_WITHIN, 3) is None:
                result.stopped = "; ".join(platform_problems(task, settings))
                break
            time.sleep(planned.pause)
        whole.restored_at = time.time()
    load.measure(whole)
    measure_faults(result)
    return Result(host=task.host, changed=True, result=asdict(result))


def soaks_of(result: AggregatedResult) -> list[Soak]:
    found = []
    for host in result.values():
        data = host[0].result
        if data:
            whole = dict(data["whole"], samples=[tuple(s) for s in data["whole"]["samples"]])
            faults = [Record(**dict(f, samples=[])) for f in data["faults"]]
            measured = {key: data[key] for key in ("gaps", "errors", "stopped")}
            found.append(Soak(data["seed"], data["minutes"], Record(**whole), faults, **measured))
    return found


def failed_soak(result: AggregatedResult, settings: Settings) -> list[str]:
    return [f"soak: {problem}" for soak_run in soaks_of(result) for problem in soak_run.problems]


def soak_report(result: AggregatedResult, settings: Settings) -> str:
    """The table per kind of fault and the totals; the JSON record and the timeline PNG under drills/<site>/."""
    folder = settings.config_path.parent / "drills" / settings.site
    lines = []
    for run in soaks_of(result):
        row = run.summary()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(run.whole.fault_at))
        base = folder / f"{stamp}-soak"
        base.parent.mkdir(parents=True, exist_ok=True)
        base.with_suffix(".json").write_text(json.dumps(row, indent=2) + "\n")
        picture(base.with_suffix(".png"), run)
        lines.append(f"  soak: {row['faults_run']} faults in {row['minutes']:g} min, seed {run.seed}")
        lines.append(
            f"  {'fault':20} {'n':>3}  " + "  ".join(f"{p + ' p50/p95/max s':>26}" for p in PROBES) + "  client errors"
        )
        for kind, entry in row["by_kind"].items():
            cells = []
            for probe in PROBES:
                stats = entry[probe]
                cells.append(f"{stats['p50']:>8} {stats['p95']:>8} {stats['max']:>8}" if stats else f"{'-':>26}")
            lines.append(f"  {kind:20} {entry['count']:>3}  " + "  ".join(cells) + f"  {entry['client_errors']:>13}")
        errors = ", ".join(f"{n} × {kind}" for kind, n in sorted(row["client_errors"].items())) or "none"
        lines += [
            f"  database writes: {row['writes_acknowledged']} acknowledged, {row['writes_lost']} lost; Matrix "
            f"messages: {row['messages_acknowledged']} acknowledged, {row['messages_lost']} lost; LiveKit's Redis: "
            f"{row['redis_writes_acknowledged']} acknowledged, {row['redis_writes_lost']} lost",
            f"  Matrix client errors: {errors}; {row['client_stalls']} stalls; no TURN server for "
            f"{row['turn_gap_s'] or 0} s  — {row['verdict']}",
        ]
        lines += [f"    problem: {p}" for p in row["problems"]]
        lines.append(f"    record: {base.with_suffix('.json')}  timeline: {base.with_suffix('.png')}")
    return "\n".join(lines)


def picture(path: Path, run: Soak) -> None:
    """One timeline of the whole soak: every probe, each fault marked where it struck (beyond a dozen faults by its
    number alone, which the JSON record's list of faults follows)."""
    named = len(run.faults) <= 12
    marks: dict[str, float | None] = {
        f"fault: {n}" + (f" {r.drill}-{r.variant}" if named else ""): r.fault_at for n, r in enumerate(run.faults, 1)
    }
    title = f"soak {run.minutes:g} min, seed {run.seed}: {len(run.faults)} faults - {run.summary()['verdict']}"
    timeline.render(path, title, run.whole.samples, marks, run.whole.fault_at)
