"""The state compressor's run script (rendered as the deploy writes it), run here with the database and the
compressor replaced by stand-ins: its exit status, the metrics it writes, and no password in what it prints.

The real compressor against the lab's database is tests/lab/test_storage_lab.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.settings import Settings
from tasks.compress_state import parse_metrics
from tasks.state_compressor import REFUSED, SCRIPT, STATE, STATE_COMPRESSOR
from tasks.synapse import CONFIG

PASSWORD = "pa ss'word"
PSYCOPG2 = """
import os
class Error(Exception):
    pass
class Cursor:
    def execute(self, sql, params=None):
        self.sql = sql
    def fetchone(self):
        if "pg_try_advisory_lock" in self.sql:
            return (os.environ["LOCK"] == "free",)
        if "to_regclass" in self.sql:
            return (False,)
        if "count(*)" in self.sql:
            return (42,)
        return ("synapse-state-compressor on synapse1 (pid 7)", "2026-12-04 04:30")
class Connection:
    autocommit = False
    def cursor(self):
        return Cursor()
def connect(dsn):
    return Connection()
"""
# As the real one does: it logs its connection string (password included) when it cannot connect.
COMPRESSOR = """
import logging, os
def compress_state_events_table(db_url, chunk_size, default_levels, number_of_chunks):
    log = logging.getLogger("synapse_auto_compressor.manager")
    if os.environ.get("FAIL"):
        log.error("Failed to connect to database at %s", db_url)
        raise RuntimeError("Failed to connect to database at " + db_url)
    log.info("Finished running compressor. Saved 17 rows. Skipped 1/3 chunks")
"""


@pytest.fixture
def script(lab_settings: Settings, tmp_path: Path) -> Path:
    """The rendered run script, its paths moved into `tmp_path`, with stand-in modules beside it."""
    context = STATE_COMPRESSOR.context(lab_settings, "synapse1", None)
    file = next(f for f in STATE_COMPRESSOR.files_on(lab_settings, context.host) if f.path == SCRIPT)
    text = file.spec(context).content
    homeserver = tmp_path / "homeserver.yaml"
    args = {"host": "/var/run/postgresql", "port": 6432, "user": "synapse", "password": PASSWORD}
    homeserver.write_text(yaml.safe_dump({"database": {"args": args}}))
    text = text.replace(CONFIG, str(homeserver)).replace(STATE, str(tmp_path))
    (tmp_path / "psycopg2.py").write_text(PSYCOPG2)
    (tmp_path / "synapse_auto_compressor.py").write_text(COMPRESSOR)
    path = tmp_path / "synapse-state-compressor"
    path.write_text(text)
    return path


def run(script: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], dict[str, float]]:
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(script.parent), "LOCK": "free", **env},
    )  # fmt: skip
    metrics = script.parent / "synapse-state-compressor.prom"
    return done, parse_metrics(metrics.read_text()) if metrics.exists() else {}


def result(metrics: dict[str, float]) -> str:
    prefix = 'matrix_platform_state_compressor_last_run_result{result="'
    return next(name[len(prefix) : -2] for name, value in metrics.items() if name.startswith(prefix) and value)


def test_a_run_writes_what_the_compressor_saved(script: Path) -> None:
    done, metrics = run(script)
    assert done.returncode == 0, done.stderr
    assert "saved 17 rows of state_groups_state in 3 chunk(s) (1 skipped" in done.stdout
    assert result(metrics) == "success" and metrics["matrix_platform_state_compressor_rows_saved"] == 17
    assert metrics['matrix_platform_state_compressor_chunks{outcome="compressed"}'] == 2
    assert metrics["matrix_platform_state_compressor_pending_state_groups"] == 42
    success = metrics["matrix_platform_state_compressor_last_success_timestamp_seconds"]

    done, metrics = run(script, LOCK="held")  # the next run finds the lock taken
    assert done.returncode == REFUSED and done.stdout == ""
    assert "holds the lock (synapse-state-compressor on synapse1 (pid 7), since 2026-12-04 04:30)" in done.stderr
    assert result(metrics) == "refused"
    assert metrics["matrix_platform_state_compressor_last_success_timestamp_seconds"] == success  # kept


def test_a_failed_run_never_prints_the_password(script: Path) -> None:
    done, metrics = run(script, FAIL="1")
    assert done.returncode == 1 and result(metrics) == "failed"
    assert "Failed to connect to database at" in done.stdout and "<secret>" in done.stdout + done.stderr
    assert PASSWORD not in done.stdout + done.stderr
