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
        return self.pgbouncer_hosts * (self.pgbouncer_pool + self.pgbouncer_reserve)

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
    return chosen_workers(config.ccu or SCALE_CCU[config.scale], config.synapse.workers.model_dump())


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
        overrides=config.synapse.workers.model_dump(),
        cp_max=config.synapse.database_cp_max,
        reserved_connections=config.database.reserved_connections,
        pgbouncer_hosts=pgbouncer_hosts,
        pgbouncer_pool=config.pgbouncer.default_pool_size,
        pgbouncer_reserve=config.pgbouncer.reserve_pool_size,
    )
