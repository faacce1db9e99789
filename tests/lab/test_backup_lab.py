"""Backups in the lab: WAL reaches the repository, a full backup is taken from a standby
through the timer's service, and its success is visible to Prometheus."""

from __future__ import annotations

import json
import shlex
import time

from lab.lab import Lab
from tests.lab.conftest import ssh

INFO = "sudo -u postgres pgbackrest --stanza=matrix --output=json info"


def test_archiving_works_and_a_full_backup_is_taken_from_a_standby(deployed: None, lab: Lab) -> None:
    ssh(lab, "backup1", "sudo -u postgres pgbackrest --stanza=matrix --archive-timeout=180 check")
    timers = ssh(lab, "backup1", "systemctl list-timers --all --no-legend 'matrix-backup-database-*'").stdout
    assert "matrix-backup-database-full.timer" in timers and "matrix-backup-database-diff.timer" in timers
    before = json.loads(ssh(lab, "backup1", INFO).stdout)[0]["backup"]
    ssh(lab, "backup1", "sudo systemctl start matrix-backup-database@full.service")  # what the weekly timer runs
    backups = json.loads(ssh(lab, "backup1", INFO).stdout)[0]["backup"]
    assert len(backups) == len(before) + 1 and backups[-1]["type"] == "full"
    # Taken from a standby: pgBackRest waited for a standby to replay up to the backup's start.
    log = ssh(lab, "backup1", "sudo cat /var/log/pgbackrest/matrix-backup.log").stdout
    last_run = log.rsplit("backup command begin", 1)[1]
    assert "wait for replay on the standby" in last_run, last_run[-2000:]
    metric = ssh(lab, "backup1", "cat /var/lib/prometheus/node-exporter/backup-database.prom").stdout
    assert 'matrix_platform_backup_last_success_timestamp_seconds{kind="database"}' in metric


def test_the_backup_metric_reaches_prometheus(deployed: None, lab: Lab) -> None:
    query = "matrix_platform_backup_last_success_timestamp_seconds"
    program = (
        "import json, sys, urllib.request; "
        "print(json.dumps(json.load(urllib.request.urlopen(sys.argv[1], timeout=10))['data']['result']))"
    )
    url = f"http://198.18.1.71:9090/api/v1/query?query={query}"
    deadline = time.monotonic() + 30  # node-exporter reads the file at the next scrape
    while True:
        result = json.loads(ssh(lab, "monitoring1", f"python3 -c {shlex.quote(program)} {shlex.quote(url)}").stdout)
        if result or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert [r["metric"]["host"] for r in result] == ["backup1"]
