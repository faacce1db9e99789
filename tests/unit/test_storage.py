"""Storage, as data: the report's volumes from df, growth from Prometheus and what to do at each level; the
media purge's requests and report; the state compressor's report."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

from core.settings import Settings
from tasks.compress_state import compress_table, parse_metrics
from tasks.media_purge import PURGE, lifetimes, media_url, purge_table
from tasks.storage import (
    Growth,
    Volume,
    advice,
    database_table,
    growth_queries,
    media_command,
    needing_action,
    parse_df,
    parse_growth,
    parse_media,
    volumes_table,
)

DF = """Filesystem     Type      1B-blocks         Used      Available Mounted on
/dev/sda1      ext4    105089261568  95000000000    5137076224 /
/dev/sdb1      xfs    4398046511104 879609302220 3518437208884 /var/lib/postgresql
/dev/sdb1      xfs    4398046511104 879609302220 3518437208884 /srv/bind mount
none           fuse               0            0             0 /proc/fake
"""
GB = 10**9


def test_df_gives_each_filesystem_once() -> None:
    volumes = parse_df("patroni1", DF)
    assert [(v.mountpoint, v.fstype) for v in volumes] == [("/", "ext4"), ("/var/lib/postgresql", "xfs")]
    assert round(volumes[0].used_percent) == 95  # of used + available, as df counts it


def test_growth_is_joined_by_host_and_mountpoint() -> None:
    answers = {
        "per_day": [[{"host": "minio1", "mountpoint": "/data1"}, 432e9], [{"host": "haproxy1", "mountpoint": "/"}, -1]],
        "hours": [[{"host": "minio1", "mountpoint": "/data1"}, 720.0]],
    }
    assert parse_growth(answers) == [Growth("minio1", "/data1", 432e9, 720.0), Growth("haproxy1", "/", -1, 0)]
    assert parse_growth({"error": "connection refused"}) == []


def test_what_to_do_follows_the_level_and_the_rate() -> None:
    half = Volume("minio1", "/data1", "/dev/sdb1", "xfs", 1000 * GB, 500 * GB, 500 * GB)
    assert advice(half, None) == (None, "ok")  # no metrics: judged by its level alone
    assert advice(half, Growth("minio1", "/data1", -5 * GB, 24)) == (None, "ok")  # shrinking
    assert advice(half, Growth("minio1", "/data1", 10 * GB, 24)) == (50, "ok")  # full in 50 days
    assert advice(half, Growth("minio1", "/data1", 20 * GB, 24)) == (25, "plan: grow the volume within weeks")
    days, action = advice(half, Growth("minio1", "/data1", 100 * GB, 24))
    assert days == 5 and action.startswith("act now")
    full = Volume("minio1", "/data1", "/dev/sdb1", "xfs", 1000 * GB, 950 * GB, 50 * GB)
    assert advice(full, None)[1].startswith("act now")
    assert advice(Volume("b", "/", "d", "ext4", 100, 85, 15), None)[1].startswith("plan")


def test_the_gate_names_the_volume_to_act_on_and_the_table_says_where_growth_is_unknown() -> None:
    result = {
        "patroni1": [SimpleNamespace(result={"volumes": [v.__dict__ for v in parse_df("patroni1", DF)]})],
        "monitoring1": [SimpleNamespace(result={"volumes": [], "growth": [], "growth_error": ""})],
    }
    assert needing_action(result, None) == ["patroni1:/ 95% used: act now: grow the volume, or shorten media/message "
                                            "retention and purge"]  # fmt: skip
    table = volumes_table(result, None)
    assert "no metrics" in table and "days until full are unknown" in table


def test_the_growth_fit_spans_the_retention(lab_settings: Settings) -> None:
    queries = growth_queries(lab_settings)
    window = f"[{lab_settings.config.monitoring.retention_days}d]"
    assert window in queries["per_day"] and window in queries["hours"] and "overlay" in queries["per_day"]


def test_the_media_command_counts_each_kind_on_disk(tmp_path: Path) -> None:
    """Run as on the Synapse host, against a store with two uploads and one remote copy."""
    for name, size in (("local_content/ab/cd/one", 5000), ("local_content/ab/ef/two", 7000),
                       ("remote_content/remote.example/xy/three", 3000)):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * size)
    out = subprocess.run(media_command(str(tmp_path)), shell=True, capture_output=True, text=True, check=True).stdout
    kinds = parse_media(out)
    assert kinds["local_content"][1] == 2 and kinds["local_content"][0] >= 12000
    assert kinds["remote_content"][1] == 1 and kinds["url_cache"] == (0, 0)


def test_the_database_table_shows_long_table_names_whole() -> None:
    long_name = "cache_invalidation_stream_by_instance"
    tables = [{"name": long_name, "total": 90112, "heap": 8192, "live": 12, "dead": 3},
              {"name": "events", "total": 65536, "heap": 16384, "live": 40, "dead": 0}]  # fmt: skip
    found = {"primary": True, "bytes": 34_000_000, "xid_age": 59_473, "tables": tables}
    text = database_table(
        {"patroni1": [SimpleNamespace(result=found)], "patroni2": [SimpleNamespace(result=None)]}, None
    )
    rows = [line.split() for line in text.splitlines()[2:-1]]
    assert [row[0] for row in rows] == [long_name, "events"] and rows[0][-1] == "20%"
    assert "59,473" in text and "high" not in text


def test_a_purge_applies_each_kinds_lifetime_at_the_media_worker(lab_settings: Settings) -> None:
    assert lifetimes(lab_settings) == {"remote": "90d", "local": "10y"}
    ip = lab_settings.members("synapse")[0].private_ip
    assert media_url(lab_settings, ip) == f"http://{ip}:18551"  # the lab runs a media worker
    found = {"remote": 0, "local": 3}
    text = purge_table({"synapse1": [SimpleNamespace(result=found)], "synapse2": [SimpleNamespace(result=None)]},
                       lab_settings)  # fmt: skip
    assert text.splitlines() == [
        "  synapse1: copies of other servers' media: 0 deleted (unused for 90d)",
        "  synapse1: uploads of this server's users: 3 deleted (unused for 10y)",
    ]
    kept = purge_table({"synapse1": [SimpleNamespace(result={"remote": 5})]}, lab_settings)
    assert "uploads of this server's users: kept (no lifetime set)" in kept


class FakeSynapse(BaseHTTPRequestHandler):
    """What the purge script asks of Synapse, recorded; answers as Synapse's admin API does."""

    asked: ClassVar[list[tuple[str, str, str]]] = []
    failing: ClassVar[str] = ""  # a path answered with HTTP 500

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"] or 0)).decode()
        self.asked.append((self.path, self.headers.get("Authorization", ""), body))
        answers = {"/login": {"access_token": "t0ken"}, "/logout": {}, "/purge_media_cache": {"deleted": 2}}
        answer = next((a for key, a in answers.items() if key in self.path.split("?")[0]), {"total": 1})
        failed = bool(self.failing) and self.failing in self.path
        payload = json.dumps({"errcode": "M_UNKNOWN"} if failed else answer).encode()
        self.send_response(500 if failed else 200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_args: object) -> None:
        pass


def purge(*lifetimes: str, failing: str = "") -> tuple[int, dict]:
    """Run the purge script against a recording HTTP server on loopback: its exit status and JSON answer."""
    FakeSynapse.asked, FakeSynapse.failing = [], failing
    server = HTTPServer(("127.0.0.1", 0), FakeSynapse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        done = subprocess.run([sys.executable, "-c", PURGE, base, base, "admin", *lifetimes],
                              input="pass word\n", capture_output=True, text=True, timeout=30)  # fmt: skip
    finally:
        server.shutdown()
    return done.returncode, json.loads(done.stdout)


def test_the_purge_script_logs_in_purges_before_each_lifetime_and_logs_out() -> None:
    """The script the purge runs on the Synapse host, against a recording HTTP server on loopback."""
    started = time.time() * 1000
    assert purge("3600", "0") == (0, {"remote": 2})  # local media kept: its lifetime is 0
    (login, _, credentials), (purged, token, _), (logout, token_out, _) = FakeSynapse.asked
    assert login == "/_matrix/client/v3/login" and json.loads(credentials)["password"] == "pass word"
    assert purged.startswith("/_synapse/admin/v1/purge_media_cache?before_ts=") and token == "Bearer t0ken"
    before = int(purged.rsplit("=", 1)[1])
    assert started - 3600_000 - 1000 <= before <= time.time() * 1000 - 3600_000
    assert logout == "/_matrix/client/v3/logout" and token_out == "Bearer t0ken"


def test_a_failed_purge_says_what_it_had_deleted_and_still_logs_out() -> None:
    code, answer = purge("3600", "60", failing="/media/delete")
    assert code == 1 and answer["done"] == {"remote": 2}
    assert answer["error"].startswith("POST /_synapse/admin/v1/media/delete: HTTP 500")
    assert FakeSynapse.asked[-1][0] == "/_matrix/client/v3/logout"


def test_a_compressor_runs_metrics_become_its_report_line() -> None:
    metrics = parse_metrics(
        "# HELP x\nmatrix_platform_state_compressor_rows_saved 1234\n"
        'matrix_platform_state_compressor_chunks{outcome="compressed"} 3\n'
        'matrix_platform_state_compressor_chunks{outcome="skipped"} 1\n'
        "matrix_platform_state_compressor_pending_state_groups 50000\n"
        "matrix_platform_state_compressor_last_run_seconds 12.34\n"
        "a line cut short by a full disk\n"
    )
    ran = {"refused": False, "said": [], "metrics": metrics}
    refused = {"refused": True, "said": ["another state compressor run holds the lock (…)"], "metrics": {}}
    text = compress_table({"synapse1": [SimpleNamespace(result=ran)], "synapse2": [SimpleNamespace(result=refused)]},
                          None)  # fmt: skip
    assert text.splitlines() == [
        "  synapse1: 1,234 rows of state_groups_state saved; chunks: 3 compressed, 1 skipped (nothing to save); "
        "50,000 state groups not compressed yet; 12.3 s",
        "  synapse2: refused: another state compressor run holds the lock (…)",
    ]
