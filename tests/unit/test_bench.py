"""The benchmarks stay runnable: each answers --help (which imports all it uses) without touching the lab."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.deploy import critical_path
from core.step import Step
from tests.conftest import REPO

BENCHMARKS = sorted(path for path in (REPO / "bench").glob("*.py") if path.name not in ("__init__.py", "figures.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_each_benchmark_imports_what_it_uses(script: Path) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_the_critical_path_goes_host_by_host_through_per_host_steps() -> None:
    """A cluster step waits for a per-host step on its own hosts only; hosts let in a few at a time keep their
    place in that step's schedule."""

    def step(name: str, *after: str, **more: object) -> Step:
        return Step(name, "", lambda task, settings: None, after=after, **more)  # type: ignore[arg-type]

    declared = (
        step("install", per_host=True, at_once=lambda settings: 1),
        step("trust", "install", per_host=True),
        step("cluster", "trust"),
        step("last", "cluster"),
    )

    def ran(host_ends: dict[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
        return {host: {"at": end, "seconds": seconds} for host, (end, seconds) in host_ends.items()}

    report = [
        {"name": "site-identity", "at": 99.0, "seconds": 1.0},
        # one host at a time: fast1 ends 4 s after the step began, slow1 9 s after (5 s of its own)
        {"name": "install", "at": 100.0, "seconds": 9.0, "hosts": ran({"fast1": (104, 4), "slow1": (109, 5)})},
        {"name": "trust", "at": 104.0, "seconds": 7.0, "hosts": ran({"fast1": (105, 1), "slow1": (111, 2)})},
        {"name": "cluster", "at": 105.0, "seconds": 3.0, "hosts": ran({"fast1": (108, 3)})},
        {"name": "last", "at": 108.0, "seconds": 0.5, "hosts": {}},
    ]
    # cluster: 1 (identity) + 4 (install on fast1) + 1 (trust there) + 3, then last 0.5 → 9.5;
    # trust on slow1: 1 + 9 + 2 = 12 is longer.
    assert critical_path(report, declared) == 12.0
    report[3]["seconds"] = 6.0  # now the chain through fast1 is the longest: 1 + 4 + 1 + 6 + 0.5
    assert critical_path(report, declared) == 12.5
