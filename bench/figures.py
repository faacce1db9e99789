"""Where the benchmarks put their figures: printed, and kept as JSON in bench/results/ (not in git)."""

from __future__ import annotations

import json
import os
import resource
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def publish(name: str, figures: dict) -> None:
    """Print `figures` and write them to bench/results/<name>.json."""
    text = json.dumps(figures, indent=2)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text + "\n")


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> tuple[float, float]:
    """(this process, or with RUSAGE_CHILDREN its finished children; the whole machine) CPU seconds so far.

    The lab hosts run on this machine: its CPU is theirs and the controller's together.
    """
    own = resource.getrusage(who)
    with open("/proc/stat") as stat:
        ticks = sum(int(field) for field in stat.readline().split()[1:4])
    return own.ru_utime + own.ru_stime, ticks / os.sysconf("SC_CLK_TCK")


def spread(values: list[float]) -> dict[str, float]:
    """min / median / max of one figure over a benchmark's runs."""
    return {"min": min(values), "median": round(statistics.median(values), 3), "max": max(values)}
