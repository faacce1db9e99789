"""SPEC "Sizing": the reference points and the connection budget."""

from __future__ import annotations

import pytest

from core.sizing import derive_workers, size, sync_workers


@pytest.mark.parametrize(
    ("ccu", "expected"),
    [
        (1_000, (4, 2, 2, 1)),
        (5_000, (6, 3, 3, 2)),
        (10_000, (8, 4, 4, 2)),
    ],
)
def test_reference_points(ccu: int, expected: tuple[int, int, int, int]) -> None:
    workers = derive_workers(ccu)
    assert (workers.sync, workers.generic, workers.federation_sender, workers.event_persister) == expected


def test_sync_workers_grow_monotonically_and_stop_at_the_practical_cap() -> None:
    counts = [sync_workers(ccu) for ccu in range(100, 60_000, 100)]
    assert counts == sorted(counts)
    assert min(counts) == 2 and max(counts) == 12


def large(**overrides: int | None) -> object:
    return size(
        10_000,
        overrides=overrides,
        cp_max=10,
        reserved_connections=20,
        pgbouncer_hosts=2,
        pgbouncer_pool=50,
        pgbouncer_reserve=10,
    )


def test_large_connection_budget_is_210_plus_the_media_worker_and_max_connections_in_range() -> None:
    sizing = large()
    assert sizing.workers.total == 18 + 1
    assert sizing.connection_budget == 10 + 18 * 10 + 20 + 10 == 210 + 10
    assert large(media_repository=0).connection_budget == 210
    assert 300 <= sizing.max_connections <= 500
    assert sizing.max_connections >= sizing.pgbouncer_server_connections + sizing.reserved_connections


def test_explicit_worker_counts_override_the_derived_ones() -> None:
    sizing = large(sync=12, event_persister=None)
    assert sizing.workers.sync == 12 and sizing.workers.event_persister == 2
    assert sizing.connection_budget == 10 + 23 * 10 + 20
