"""The benchmarks stay runnable: each answers --help (which imports all it uses) without touching the lab."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BENCHMARKS = sorted(path for path in (REPO / "bench").glob("*.py") if path.name not in ("__init__.py", "figures.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_each_benchmark_imports_what_it_uses(script: Path) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
