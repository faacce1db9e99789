"""SPEC "Sizing": the reference points and the connection budget."""

from __future__ import annotations

import pytest

from core.config import WorkerCounts
from core.settings import Settings
from core.sizing import derive_workers, explain, for_config, size, sync_workers
from tests.conftest import load_runbook


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


@pytest.mark.parametrize(
    ("ccu", "expected"),
    [(1_000, ("4", "2", "2", "1")), (5_000, ("6", "3", "3", "2")), (10_000, ("8", "4", "4", "2"))],
)
def test_the_sizing_table_shows_the_reference_points_with_their_formulas(
    ccu: int, expected: tuple[str, ...], lab_settings: Settings
) -> None:
    config = lab_settings.config.replace(ccu=ccu)
    config = config.replace(synapse=config.synapse.replace(workers=WorkerCounts()))
    lines = {line.what: line for line in explain(for_config(config, 2), set(), 1000)}
    names = ("sync workers", "generic workers", "federation sender workers", "event persister workers")
    assert tuple(lines[name].value for name in names) == expected
    assert lines["generic workers"].formula == f"⌈sync/2⌉ = ⌈{expected[0]}/2⌉"
    if ccu == 10_000:
        assert lines["Synapse connections (SPEC's count)"].value == "210"
        assert lines["Synapse connections (SPEC's count)"].formula.startswith("main 10 + 18 workers × 10 + reserve 20")
        assert lines["media after 6 months"].value == "36.5–91.2 TB"  # 200–500 GB/day × 182.4 days
    assert 300 <= int(lines["PostgreSQL max_connections"].value) <= 500


def test_explicit_counts_are_named_as_from_the_config(lab_settings: Settings) -> None:
    workers = WorkerCounts(sync=12)
    config = lab_settings.config.replace(ccu=10_000, synapse=lab_settings.config.synapse.replace(workers=workers))
    lines = {line.what: line for line in explain(for_config(config, 2), {"sync"}, 100)}
    assert lines["sync workers"].value == "12"
    assert lines["sync workers"].formula == "config.yaml synapse.workers.sync (derived: 8)"
    assert lines["PgBouncer max_client_conn"].value.endswith("(TOO LOW)")


def test_the_sizing_command_prints_the_table_and_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    sizing = load_runbook("sizing")
    assert sizing.main(["--lab", "--ccu", "10000"]) == 0
    out = capsys.readouterr().out
    assert "sizing for 10,000 concurrent users (config.lab.yaml, 2 PgBouncer hosts)" in out and "210" in out
    with pytest.raises(SystemExit) as refused:
        sizing.main(["--ccu", "5"])
    assert refused.value.code == 2
    assert sizing.main(["--config", "/nonexistent/config.yaml"]) == 2
    assert "/nonexistent/config.yaml: (file): file not found" in capsys.readouterr().out
