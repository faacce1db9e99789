"""Worker counts and database connection budgets derived from concurrent users (CCU).

SPEC "Sizing": sync workers ≈ CCU/200 but capped at a practical 8–12, generic = sync/2,
3–4 federation senders, 1–2 event persisters; reference points Small 4/2/2/1,
Medium 6/3/3/2, Large 8/4/4/2. CCU/200 alone gives 5/25/50, so the practical count
interpolates between the reference points instead and keeps CCU/200 as the "ideal" the
sizing table shows next to it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from core.config import Config

SCALE_CCU = {"small": 1_000, "medium": 5_000, "large": 10_000}

# (CCU, sync workers): the reference points, then the practical ceiling of 12.
SYNC_CURVE = ((1_000, 4), (5_000, 6), (10_000, 8), (20_000, 12))
MAX_CONNECTIONS_FLOOR = 300
CONNECTION_HEADROOM = 1.5  # reconnect storms after a failover, maintenance sessions
# Each PgBouncer's session-pooled maintenance pool (the state compressor: its lock session, its two
# connections, and a second run's attempt that the lock refuses).
MAINTENANCE_POOL = 4


@dataclass(frozen=True)
class Workers:
    sync: int
    generic: int
    federation_sender: int
    event_persister: int
    media_repository: int = 1

    @property
    def total(self) -> int:
        """Every worker process: each opens its own database pool."""
        return self.sync + self.generic + self.federation_sender + self.event_persister + self.media_repository


@dataclass(frozen=True)
class Sizing:
    """Everything derived from the scale, computed once per run."""

    ccu: int
    ideal_sync_workers: float
    workers: Workers
    cp_max: int
    reserved_connections: int
    pgbouncer_hosts: int
    pgbouncer_pool: int
    pgbouncer_reserve: int

    @property
    def main_pool(self) -> int:
        return self.cp_max

    @property
    def connection_budget(self) -> int:
        """Synapse's worst case: main pool + every worker's pool + a reserve.

        Large: SPEC's 10 + 18 × 10 + 20 = 210 counts sync, generic, federation-sender and
        event-persister workers; the media worker opens a pool too, so 220.
        """
        return self.main_pool + self.workers.total * self.cp_max + self.reserved_connections

    @property
    def pgbouncer_server_connections(self) -> int:
        """What all PgBouncers together may open to PostgreSQL at most."""
        return self.pgbouncer_hosts * (self.pgbouncer_pool + self.pgbouncer_reserve + MAINTENANCE_POOL)

    @property
    def max_connections(self) -> int:
        """PostgreSQL max_connections: the larger demand with headroom, in steps of 50, at least 300."""
        demand = max(self.connection_budget, self.pgbouncer_server_connections + self.reserved_connections)
        return max(MAX_CONNECTIONS_FLOOR, 50 * math.ceil(demand * CONNECTION_HEADROOM / 50))


def sync_workers(ccu: int) -> int:
    """Practical sync workers: piecewise linear through the reference points, 2..12."""
    points = SYNC_CURVE
    if ccu <= points[0][0]:
        return max(2, round(points[0][1] * ccu / points[0][0]))
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if ccu <= x1:
            return round(y0 + (y1 - y0) * (ccu - x0) / (x1 - x0))
    return points[-1][1]


def derive_workers(ccu: int) -> Workers:
    sync = sync_workers(ccu)
    return Workers(
        sync=sync,
        generic=math.ceil(sync / 2),
        federation_sender=2 if ccu <= 1_000 else 3 if ccu <= 5_000 else 4,
        event_persister=1 if ccu <= 1_000 else 2,
    )


def chosen_workers(ccu: int, overrides: dict[str, int | None]) -> Workers:
    """The derived counts with the explicit ones (config.yaml synapse.workers) put over them."""
    derived = derive_workers(ccu)
    chosen = {name: overrides.get(name) for name in ("sync", "generic", "federation_sender", "event_persister")}
    counts = {name: getattr(derived, name) if value is None else value for name, value in chosen.items()}
    media = overrides.get("media_repository")
    return Workers(**counts, media_repository=1 if media is None else media)


def workers_for(config: Config) -> Workers:
    return chosen_workers(config.ccu or SCALE_CCU[config.scale], config.synapse.workers.dump())


def size(
    ccu: int,
    *,
    overrides: dict[str, int | None],
    cp_max: int,
    reserved_connections: int,
    pgbouncer_hosts: int,
    pgbouncer_pool: int,
    pgbouncer_reserve: int,
) -> Sizing:
    return Sizing(
        ccu=ccu,
        ideal_sync_workers=ccu / 200,
        workers=chosen_workers(ccu, overrides),
        cp_max=cp_max,
        reserved_connections=reserved_connections,
        pgbouncer_hosts=pgbouncer_hosts,
        pgbouncer_pool=pgbouncer_pool,
        pgbouncer_reserve=pgbouncer_reserve,
    )


def for_config(config: Config, pgbouncer_hosts: int) -> Sizing:
    """The sizing a deployment of `config` with that many PgBouncers gets."""
    return size(
        config.ccu or SCALE_CCU[config.scale],
        overrides=config.synapse.workers.dump(),
        cp_max=config.synapse.database_cp_max,
        reserved_connections=config.database.reserved_connections,
        pgbouncer_hosts=pgbouncer_hosts,
        pgbouncer_pool=config.pgbouncer.default_pool_size,
        pgbouncer_reserve=config.pgbouncer.reserve_pool_size,
    )


# SPEC "Sizing", storage: per 10k users; users are taken as the concurrent users here.
DATABASE_GB_PER_10K = (100, 500)
MEDIA_GB_PER_DAY_PER_10K = (200, 500)
PLANNING_MONTHS = (3, 6)
DAYS_PER_MONTH = 30.4


@dataclass(frozen=True)
class Line:
    """One row of the sizing table: what, the figure, and how it was reached."""

    what: str
    value: str
    formula: str


def per_10k(ccu: int, low_high: tuple[int, int], factor: float = 1.0) -> str:
    """A range scaled from SPEC's per-10k-users figures, in GB (TB from 1000 GB on)."""
    low, high = (ccu / 10_000 * x * factor for x in low_high)
    if high < 1000:
        return f"{low:,.0f}–{high:,.0f} GB"
    return f"{low / 1000:,.1f}–{high / 1000:,.1f} TB"


def explain(sizing: Sizing, overridden: set[str], max_client_conn: int) -> list[Line]:
    """The derived table with its formulas; `overridden` names the worker counts config.yaml sets."""
    ccu, workers, cp = sizing.ccu, sizing.workers, sizing.cp_max

    def count(name: str, rule: str) -> Line:
        label = name.replace("_", " ")
        how = f"config.yaml synapse.workers.{name} (derived: {getattr(derive_workers(ccu), name)})"
        return Line(f"{label} workers", str(getattr(workers, name)), how if name in overridden else rule)

    curve = ", ".join(f"{x:,}→{y}" for x, y in SYNC_CURVE)
    core_workers = workers.total - workers.media_repository
    spec_budget = sizing.main_pool + core_workers * cp + sizing.reserved_connections
    demand = max(sizing.connection_budget, sizing.pgbouncer_server_connections + sizing.reserved_connections)
    lines = [
        Line(
            "concurrent users (CCU)",
            f"{ccu:,}",
            "--ccu, config.yaml ccu, or the scale (small 1k, medium 5k, large 10k)",
        ),
        count(
            "sync",
            f"CCU/200 = {sizing.ideal_sync_workers:g} is the ideal; practical: linear between {curve} (2..12)",
        ),
        count("generic", f"⌈sync/2⌉ = ⌈{workers.sync}/2⌉"),
        count("federation_sender", "2 up to 1k CCU, 3 up to 5k, else 4"),
        count("event_persister", "1 up to 1k CCU, else 2"),
        Line("media repository workers", str(workers.media_repository), "config.yaml synapse.workers.media_repository"),
        Line("worker processes", str(workers.total), "the sum of the counts above"),
        Line("connections per process", str(cp), "config.yaml synapse.database_cp_max (Synapse's cp_max)"),
        Line(
            "Synapse connections (SPEC's count)",
            str(spec_budget),
            f"main {sizing.main_pool} + {core_workers} workers × {cp} + reserve {sizing.reserved_connections}"
            " (sync, generic, federation senders, event persisters)",
        ),
        Line(
            "Synapse connections (all processes)",
            str(sizing.connection_budget),
            f"the above + {workers.media_repository} media worker(s) × {cp}",
        ),
        Line(
            "PgBouncer pools",
            f"{sizing.pgbouncer_pool} + {sizing.pgbouncer_reserve} reserve per PgBouncer",
            "config.yaml pgbouncer.default_pool_size + reserve_pool_size (transaction pooling)",
        ),
        Line(
            "PgBouncer server connections",
            str(sizing.pgbouncer_server_connections),
            f"{sizing.pgbouncer_hosts} PgBouncer host(s) × ({sizing.pgbouncer_pool} + {sizing.pgbouncer_reserve} "
            f"+ {MAINTENANCE_POOL} maintenance)",
        ),
        Line(
            "PgBouncer max_client_conn",
            f"{max_client_conn}{'' if max_client_conn >= sizing.connection_budget else '  (TOO LOW)'}",
            f"config.yaml pgbouncer.max_client_conn; must be ≥ the {sizing.connection_budget} Synapse connections",
        ),
        Line(
            "PostgreSQL max_connections",
            str(sizing.max_connections),
            f"max({MAX_CONNECTIONS_FLOOR}, ⌈{CONNECTION_HEADROOM} × max(Synapse {sizing.connection_budget}, "
            f"PgBouncer {sizing.pgbouncer_server_connections} + reserve {sizing.reserved_connections}) = "
            f"{CONNECTION_HEADROOM * demand:g}⌉ in steps of 50)",
        ),
        Line(
            "database storage",
            per_10k(ccu, DATABASE_GB_PER_10K),
            f"CCU/10k × {DATABASE_GB_PER_10K[0]}–{DATABASE_GB_PER_10K[1]} GB (SPEC, per 10k users)",
        ),
        Line(
            "media per day",
            per_10k(ccu, MEDIA_GB_PER_DAY_PER_10K),
            f"CCU/10k × {MEDIA_GB_PER_DAY_PER_10K[0]}–{MEDIA_GB_PER_DAY_PER_10K[1]} GB/day (SPEC)",
        ),
    ]
    lines += [
        Line(
            f"media after {months} months",
            per_10k(ccu, MEDIA_GB_PER_DAY_PER_10K, months * DAYS_PER_MONTH),
            f"per day × {months} × {DAYS_PER_MONTH} days (MinIO usable space, before erasure-coding overhead)",
        )
        for months in PLANNING_MONTHS
    ]
    return lines
