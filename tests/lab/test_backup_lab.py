"""Backups in the lab: WAL reaches the repository, a full backup is taken from a standby
through the timer's service, and its success is visible to Prometheus."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.settings import Settings
from lab import LAB_CONFIG
from lab.lab import Lab
from tasks.restore_drill import KEY_TABLES, counts_sql
from tests.conftest import REPO, load_runbook
from tests.lab.conftest import failed_units, patroni_cluster, ssh
from tests.lab.matrix_client import run_client

INFO = "sudo -u postgres pgbackrest --stanza=matrix --output=json info"


def test_a_first_deploy_leaves_backups_that_check_and_the_restore_drill_accept(
    deployed: None, lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first module to deploy: no timer has fired yet, the deploy itself took the backups."""
    backups = json.loads(ssh(lab, "backup1", INFO).stdout)[0]["backup"]
    assert backups and backups[0]["type"] == "full", backups
    assert as_root(lab, "backup1", f"ls {KEYS}/keys-*.tar").stdout.strip()
    for name, argv in (("backup_setup", ["check", "--lab"]), ("restore_drill", ["--lab"])):
        chosen, options = load_runbook(name).runbook(argv)
        code = chosen.main(options)
        out = capsys.readouterr().out
        assert code == 0, out
        if name == "backup_setup":  # every kind present and young
            assert all(f"  {kind} " in out for kind in ("database", "media", "keys")) and " none" not in out


def test_archiving_works_and_a_full_backup_is_taken_from_a_standby(deployed: None, lab: Lab) -> None:
    ssh(lab, "backup1", "sudo -u postgres pgbackrest --stanza=matrix --archive-timeout=180 check")
    timers = ssh(lab, "backup1", "systemctl list-timers --all --no-legend 'matrix-backup-database-*'").stdout
    assert "matrix-backup-database-full.timer" in timers and "matrix-backup-database-diff.timer" in timers
    before = json.loads(ssh(lab, "backup1", INFO).stdout)[0]["backup"]
    trigger(lab, "matrix-backup-database-full.timer")  # what the weekly timer runs
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
    assert {(r["metric"]["host"], r["metric"]["kind"]) for r in result} >= {("backup1", "database")}
    assert {r["metric"]["host"] for r in result} == {"backup1"}


# Known data through the VIP: two users, a room with messages, two media files and
# one-time keys uploaded for alice's device.
KNOWN_DATA = r"""
suffix = uuid.uuid4().hex[:8]
alice, bob = "alice" + suffix, "bob" + suffix
register(alice); register(bob)
a = login(alice)
room = call("POST", "/_matrix/client/v3/createRoom", {"invite": ["@%s:lab.example" % bob]}, a)["room_id"]
for i in range(5):
    call("PUT", "/_matrix/client/v3/rooms/%s/send/m.room.message/%s%d" % (room, suffix, i),
         {"msgtype": "m.text", "body": "known message %d" % i}, a)
media = []
for i in range(2):
    uri = json.loads(call("POST", "/_matrix/media/v3/upload?filename=known%d.txt" % i, token=a,
                          raw=b"known media %d %s" % (i, suffix.encode()), content_type="text/plain"))["content_uri"]
    media.append(uri.rsplit("/", 1)[1])
signatures = {"@%s:lab.example" % alice: {"ed25519:KNOWN": "unchecked"}}
keys = {"signed_curve25519:%s%d" % (suffix, i): {"key": "%043d" % i, "signatures": signatures} for i in range(5)}
counts = call("POST", "/_matrix/client/v3/keys/upload", {"one_time_keys": keys}, a)["one_time_key_counts"]
print(json.dumps({"alice": alice, "media": media, "one_time_keys": counts.get("signed_curve25519", 0)}))
"""
MEDIA = "/var/lib/synapse/media"
KEYS = "/var/backups/matrix/keys/synapse1"
NEWEST_KEYS = f"$(ls -1 {KEYS}/keys-*.tar | tail -n 1)"
SNAPSHOT = "/var/backups/matrix/media/synapse1/latest"


def as_root(lab: Lab, host: str, script: str) -> subprocess.CompletedProcess[str]:
    """`script` run by a root shell on `host` (globs in root-only folders expand)."""
    return ssh(lab, host, f"sudo sh -c {shlex.quote(script)}")


def trigger(lab: Lab, timer: str) -> None:
    """Start the service `timer` runs, as its schedule would (oneshot: returns when it finished)."""
    unit = ssh(lab, "backup1", f"systemctl show -P Unit {timer}").stdout.strip()
    assert unit, timer
    ssh(lab, "backup1", f"sudo systemctl start {unit}")


@pytest.fixture(scope="module")
def backed_up(deployed: None, lab: Lab, lab_settings: Settings) -> dict:
    """Known data written, remote media and URL previews cached on synapse1, then every backup timer's
    service started: a differential database backup (from a standby) and the media/key pull."""
    data = run_client(lab, lab_settings, KNOWN_DATA)
    foreign = f"{MEDIA}/remote_content/remote.example/ab/cd/efgh {MEDIA}/url_cache/2026-11-28/preview"
    ssh(
        lab,
        "synapse1",
        f"for f in {foreign}; do sudo -u synapse sh -c 'mkdir -p $(dirname $0) && echo x > $0' $f; done",
    )
    for timer in ("matrix-backup-database-diff.timer", "matrix-backup-files.timer"):
        trigger(lab, timer)
    return data


def test_each_timer_is_scheduled_and_its_manual_run_succeeded(backed_up: dict, lab: Lab) -> None:
    timers = ssh(
        lab,
        "backup1",
        "systemctl show -P NextElapseUSecRealtime matrix-backup-database-full.timer "
        "matrix-backup-database-diff.timer matrix-backup-files.timer",
    ).stdout.split("\n")
    assert len([t for t in timers if t.strip()]) == 3, timers  # each has a next run
    results = ssh(
        lab, "backup1", "systemctl show -P Result matrix-backup-database@diff.service matrix-backup-files.service"
    ).stdout.split()
    assert results == ["success", "success"]
    backups = json.loads(ssh(lab, "backup1", INFO).stdout)[0]["backup"]
    assert backups[-1]["type"] == "diff"
    metrics = ssh(lab, "backup1", "cat /var/lib/prometheus/node-exporter/backup-files.prom").stdout
    assert 'kind="media"' in metrics and 'kind="keys"' in metrics


def test_the_media_pull_copies_only_local_media(backed_up: dict, lab: Lab) -> None:
    top = ssh(lab, "backup1", f"sudo ls -1 {SNAPSHOT}/").stdout.split()
    assert top == ["local_content"]  # no thumbnails for text files; never remote_content or url_cache
    found = ssh(lab, "backup1", f"sudo find {SNAPSHOT}/ -type f -printf '%P\\n'").stdout.split()
    for media_id in backed_up["media"]:
        assert f"local_content/{media_id[:2]}/{media_id[2:4]}/{media_id[4:]}" in found
    assert not [f for f in found if f.startswith(("remote_content", "url_cache"))]
    source_foreign = ssh(lab, "synapse1", f"sudo ls -1 {MEDIA}").stdout.split()
    assert "remote_content" in source_foreign and "url_cache" in source_foreign  # they were there to copy


def test_the_key_archive_holds_the_signing_key_and_the_platform_secrets(
    backed_up: dict, lab: Lab, lab_settings: Settings
) -> None:
    listing = as_root(lab, "backup1", f"tar -tvf {NEWEST_KEYS}").stdout
    names = [line.split()[-1] for line in listing.splitlines()]
    assert {"etc/synapse/signing.key", "etc/synapse/homeserver.yaml", "platform-secrets.yaml"} <= set(names)
    assert any(n.startswith("etc/synapse/workers/") for n in names)
    modes = as_root(lab, "backup1", f"stat -c '%a %U' {KEYS} {NEWEST_KEYS}").stdout.split("\n")
    assert modes[0] == "700 root" and modes[1] == "600 root"
    archived = as_root(lab, "backup1", f"tar -xOf {NEWEST_KEYS} etc/synapse/signing.key | sha256sum").stdout.split()[0]
    expected = hashlib.sha256((lab_settings.secrets["synapse_signing_key"] + "\n").encode()).hexdigest()
    assert archived == expected


def test_the_restore_drill_reproduces_the_source(backed_up: dict, lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    drill, rest = load_runbook("restore_drill").runbook(["--lab", "--keep"])
    try:
        code = drill.main(rest)
        out = capsys.readouterr().out
        print(out)
        assert code == 0, out
        rows = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(r"^  (\w+) +(\d+) +(\d+)$", out, re.M)}
        assert set(rows) == set(KEY_TABLES), out
        assert all(source == restored for source, restored in rows.values()), rows
        assert rows["users"][0] >= 2 and rows["events"][0] >= 5 and rows["local_media_repository"][0] >= 2
        assert rows["e2e_one_time_keys_json"][0] >= backed_up["one_time_keys"] >= 5
        assert "e2e_one_time_keys_json after TRUNCATE: 0 rows" in out
        assert re.search(r"restored to replica patroni\d at \S+ in [\d.]+ s", out)
        # The kept scratch instance, asked directly: alice is there, her one-time keys are not.
        user = f"@{backed_up['alice']}:lab.example"
        found = scratch_sql(lab, f"SELECT count(*) FROM users WHERE name = '{user}'")
        assert (found, scratch_sql(lab, "SELECT count(*) FROM e2e_one_time_keys_json")) == ("1", "0")
    finally:
        drop_scratch(lab)


def scratch_sql(lab: Lab, sql: str) -> str:
    """One query on the drill's kept scratch instance on backup1."""
    psql = "sudo -u postgres psql -h /var/lib/matrix-restore/run -p 5439 -d synapse -XAt -c"
    return ssh(lab, "backup1", f"{psql} {shlex.quote(sql)}").stdout.strip()


def drop_scratch(lab: Lab) -> None:
    ssh(
        lab,
        "backup1",
        "sudo -u postgres /usr/lib/postgresql/15/bin/pg_ctl -D /var/lib/matrix-restore/data "
        "-m fast -w stop; sudo rm -rf /var/lib/matrix-restore",
        check=False,
    )


LATE_USER = r"""
user = "dave" + uuid.uuid4().hex[:8]
register(user)
print(json.dumps({"user": user}))
"""


def test_a_point_in_time_restore_stops_at_the_time(
    backed_up: dict, lab: Lab, lab_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user registered after the chosen time is not in the copy; one registered before is."""
    moment = datetime.now(UTC).replace(microsecond=0)
    time.sleep(1.5)
    late = run_client(lab, lab_settings, LATE_USER)["user"]
    drill, rest = load_runbook("restore_drill").runbook(["--lab", "--keep", "--time", moment.isoformat()])
    try:
        code = drill.main(rest)
        out = capsys.readouterr().out
        print(out)
        assert code == 0, out
        assert f"restored to time {moment:%Y-%m-%d %H:%M:%S}+00" in out
        users = scratch_sql(lab, "SELECT name FROM users").split()
        assert f"@{backed_up['alice']}:lab.example" in users and f"@{late}:lab.example" not in users
        assert scratch_sql(lab, "SELECT count(*) FROM e2e_one_time_keys_json") == "0"
    finally:
        drop_scratch(lab)


def test_an_old_backup_is_reported_by_the_check_and_the_alert(
    backed_up: dict, lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = load_runbook("backup_setup")
    fresh, rest = setup.runbook(["check", "--lab"])
    assert fresh.main(rest) == 0, capsys.readouterr().out
    # A limit of 36 s makes the backups just taken "old": the check fails naming each kind,
    # and Prometheus, given the same limit by the backup-files step, raises BackupTooOld.
    shutil.copytree(REPO / ".secrets", tmp_path / ".secrets")  # the lab's secrets and CA beside it
    strict = tmp_path / "config.yaml"
    strict.write_text(LAB_CONFIG.read_text() + "\nbackup:\n  max_age_hours: 0.01\n")
    try:
        applied, rest = setup.runbook(["--lab", "--config", str(strict), "--step", "backup-files"])
        assert applied.main(rest) == 0
        time.sleep(40)
        check, rest = setup.runbook(["check", "--lab", "--config", str(strict)])
        capsys.readouterr()
        assert check.main(rest) == 1
        out = capsys.readouterr().out
        print(out)
        for kind in ("database", "media", "keys"):
            assert re.search(rf"^  {kind} .* TOO OLD$", out, re.M), out
        assert "older than backup.max_age_hours (0.01)" in out
        firing = wait_for_alert(lab, "BackupTooOld", deadline=90)
        assert {a["labels"]["kind"] for a in firing} == {"database", "media", "keys"}
    finally:
        restored, rest = setup.runbook(["--lab", "--step", "backup-files"])
        assert restored.main(rest) == 0


def wait_for_alert(lab: Lab, name: str, deadline: float) -> list[dict]:
    """The firing alerts called `name` in Prometheus on monitoring1, once there are any (or [] at the deadline)."""
    program = (
        "import json, urllib.request; "
        "print(json.dumps(json.load(urllib.request.urlopen('http://198.18.1.71:9090/api/v1/alerts', timeout=10))"
        "['data']['alerts']))"
    )
    end = time.monotonic() + deadline
    while True:
        alerts = json.loads(ssh(lab, "monitoring1", f"python3 -c {shlex.quote(program)}").stdout)
        firing = [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"]
        if firing or time.monotonic() > end:
            return firing
        time.sleep(3)


# A client of the recovered homeserver: a new user, a room and a message through the VIP.
FRESH_CONVERSATION = r"""
suffix = uuid.uuid4().hex[:8]
user = "carol" + suffix
register(user)
token = login(user)
room = call("POST", "/_matrix/client/v3/createRoom", {}, token)["room_id"]
call("PUT", "/_matrix/client/v3/rooms/%s/send/m.room.message/%s" % (room, suffix),
     {"msgtype": "m.text", "body": "after"}, token)
print(json.dumps({"room": room}))
"""


def replica_counts(lab: Lab, host: str) -> dict[str, int]:
    sql = counts_sql()
    return json.loads(ssh(lab, host, f"sudo -u postgres psql -XAt -d synapse -c {shlex.quote(sql)}").stdout)


def leader(lab: Lab) -> str:
    return next(m["name"] for m in patroni_cluster(lab)["members"] if m["role"] == "leader")


def test_disaster_recovery_rebuilds_the_cluster_from_the_backups(
    backed_up: dict, lab: Lab, lab_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs last in this module: it replaces the lab's database cluster with one restored from the backups."""
    recovery = load_runbook("disaster_recovery")
    refused, rest = recovery.runbook(["--lab", "--yes"])
    capsys.readouterr()
    assert refused.main(rest) == 1
    assert "re-run with --wipe" in capsys.readouterr().out
    before = patroni_cluster(lab)
    assert len([m for m in before["members"] if m["state"] in ("running", "streaming")]) == 3  # untouched
    old_leader = leader(lab)
    counts = replica_counts(lab, old_leader)
    timeline = next(m["timeline"] for m in before["members"] if m["role"] == "leader")
    ssh(lab, "backup1", "sudo -u postgres pgbackrest --stanza=matrix --archive-timeout=180 check")  # WAL archived

    wiped, rest = recovery.runbook(["--lab", "--yes", "--wipe"])
    code = wiped.main(rest)
    out = capsys.readouterr().out
    print(out)
    assert code == 0, f"{out}\n{failed_units(lab)}"
    after = patroni_cluster(lab)
    new_leader = leader(lab)
    assert next(m["timeline"] for m in after["members"] if m["role"] == "leader") > timeline
    assert sorted(m["state"] for m in after["members"]) == ["running", "streaming", "streaming"], after
    restored = replica_counts(lab, new_leader)
    for table in ("users", "rooms", "events", "local_media_repository", "e2e_device_keys_json"):
        assert restored[table] == counts[table], (table, restored[table], counts[table])
    assert counts["e2e_one_time_keys_json"] >= 5 and restored["e2e_one_time_keys_json"] == 0
    aside = as_root(lab, old_leader, "ls -d /var/lib/postgresql/15/main.before-recovery-*").stdout.split()
    assert len(aside) == 1  # the replaced cluster's data is kept
    assert run_client(lab, lab_settings, FRESH_CONVERSATION)["room"].startswith("!")
