"""Storage over the years, against the deployed lab: the storage report (every server's volumes, the largest
tables, the media), the state compressor after a burst of state changes and its lock, and a media purge run."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import time
from pathlib import Path

import pytest

from core.matrix import MatrixClient, MatrixError
from core.settings import Settings
from lab import LAB_CONFIG
from lab.lab import Lab
from tasks.drills import wait_until
from tasks.state_compressor import LOCK_KEY, PUBLISHED, REFUSED, SCRIPT, UNIT
from tests.conftest import REPO, load_runbook
from tests.lab.conftest import patroni_cluster, ssh
from tests.lab.matrix_client import run_client

TABLE_NAMES = "SELECT relname FROM pg_stat_user_tables"


def test_the_storage_report_names_every_volume_the_largest_tables_and_the_media(
    deployed: None, lab: Lab, lab_settings: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report = tmp_path / "storage.json"
    chosen, rest = load_runbook("maintenance").runbook(["storage", "--lab", "--report", str(report)])
    code = chosen.main(rest)
    out = capsys.readouterr().out
    assert code == 0, out  # the lab's volumes are the machine's disk, far from full
    steps = {step["name"]: step for step in json.loads(report.read_text())["steps"]}
    volumes = steps["volumes"]["report"]
    for host in lab_settings.hosts:
        assert f"\n  {host} " in volumes, (host, volumes)
    # node-exporter reports no overlay filesystem (the lab's roots): their growth is honestly unknown.
    assert "no metrics" in volumes and "growth:" in volumes
    tables = steps["database-usage"]["report"]
    assert "oldest transaction ID age" in tables
    listed = [line.split()[0] for line in tables.splitlines()[2:-1]]
    leader = next(m["name"] for m in patroni_cluster(lab)["members"] if m["role"] == "leader")
    names = ssh(lab, leader, f"sudo runuser -u postgres -- psql -XAtq -d synapse -c '{TABLE_NAMES}'").stdout.split()
    assert len(listed) == 10 and set(listed) <= set(names) and len(names) > 100, tables  # Synapse's own tables
    media = steps["media-usage"]["report"]
    assert "/var/lib/synapse/media" in media and "local_content" in media, media


# A public room with many members and many topic changes: Synapse stores its state as deltas with a
# full snapshot (every member) every hundred state groups, which the compressor turns into deltas.
# Two scenarios, each well inside one SSH call's time: the members (joined by the admin API: a room
# admits one join a second of its own, rc_joins_per_room), then the topic changes of another member.
MEMBERS_JOIN = r"""
import uuid
tag = uuid.uuid4().hex[:8]
token = register("burst-" + tag, admin=True)["access_token"]
room = call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "name": "burst " + tag,
            "power_level_content_override": {"events": {"m.room.topic": 0}}}, token)["room_id"]
for n in range(MEMBERS):
    member = register("member-%s-%d" % (tag, n))
    call("POST", "/_synapse/admin/v1/join/" + room, {"user_id": member["user_id"]}, token)
print(json.dumps({"room": room}))
"""
TOPICS_CHANGE = r"""
import uuid
changer = register("topics-" + uuid.uuid4().hex[:8], admin=True)
token = changer["access_token"]
call("POST", "/_synapse/admin/v1/users/%s/override_ratelimit" % changer["user_id"],
     {"messages_per_second": 0, "burst_count": 0}, token)
call("POST", "/_matrix/client/v3/join/" + ROOM, {}, token)
for n in range(TOPICS):
    call("PUT", "/_matrix/client/v3/rooms/%s/state/m.room.topic" % ROOM, {"topic": "topic %d" % n}, token)
print(json.dumps({"topics": TOPICS}))
"""
# The room's current state as the admin API returns it: what compression must not change.
STATE = r"""
import hashlib, uuid
token = register("reader-" + uuid.uuid4().hex[:8], admin=True)["access_token"]
state = call("GET", "/_synapse/admin/v1/rooms/%s/state" % ROOM, token=token)["state"]
members = sum(1 for e in state if e["type"] == "m.room.member" and e["content"].get("membership") == "join")
topic = next(e["content"]["topic"] for e in state if e["type"] == "m.room.topic")
digest = hashlib.sha256(json.dumps(sorted(e["event_id"] for e in state)).encode()).hexdigest()
print(json.dumps({"members": members, "topic": topic, "digest": digest}))
"""
# A new member joins (Synapse resolves the room's state to authorise it) and reads its message back.
STILL_SERVING = r"""
import uuid
token = register("late-" + uuid.uuid4().hex[:8])["access_token"]
call("POST", "/_matrix/client/v3/join/" + ROOM, {}, token)
body = "after compression " + uuid.uuid4().hex
sent = call("PUT", "/_matrix/client/v3/rooms/%s/send/m.room.message/%s" % (ROOM, uuid.uuid4().hex),
            {"msgtype": "m.text", "body": body}, token)["event_id"]
chunk = call("GET", "/_matrix/client/v3/rooms/%s/messages?dir=b&limit=5" % ROOM, token=token)["chunk"]
print(json.dumps({"read_back": any(e["event_id"] == sent and e["content"].get("body") == body for e in chunk)}))
"""
MEMBERS, TOPICS = 80, 300
COUNT_ROWS = "SELECT count(*) FROM state_groups_state"
ADVISORY_HELD = f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {LOCK_KEY} AND granted"
TABLE_HELD = (
    "SELECT count(*) FROM pg_locks WHERE relation = 'state_compressor_total_progress'::regclass "
    "AND mode = 'AccessExclusiveLock' AND granted"
)


def primary_sql(lab: Lab, query: str) -> str:
    """One value from the Synapse database on the current primary, as postgres."""
    leader = next(m["name"] for m in patroni_cluster(lab)["members"] if m["role"] == "leader")
    return ssh(lab, leader, f"sudo runuser -u postgres -- psql -XAtq -d synapse -c {shlex.quote(query)}").stdout.strip()


def test_the_state_compressor_saves_rows_after_a_burst_and_synapse_keeps_serving(
    deployed: None, lab: Lab, lab_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    room = run_client(lab, lab_settings, f"MEMBERS = {MEMBERS}\n{MEMBERS_JOIN}")["room"]
    reading = f"ROOM = {room!r}\n"
    run_client(lab, lab_settings, f"{reading}TOPICS = {TOPICS}\n{TOPICS_CHANGE}")
    before_state = run_client(lab, lab_settings, reading + STATE)
    assert before_state["members"] == MEMBERS + 2 and before_state["topic"] == f"topic {TOPICS - 1}", before_state
    rows_before = int(primary_sql(lab, COUNT_ROWS))

    chosen, rest = load_runbook("maintenance").runbook(["compress-state", "--lab"])
    code = chosen.main(rest)
    out = capsys.readouterr().out
    assert code == 0, out
    rows_after = int(primary_sql(lab, COUNT_ROWS))
    saved = int(re.search(r"synapse1: ([\d,]+) rows of state_groups_state saved", out)[1].replace(",", ""))  # type: ignore[index]
    print(f"state_groups_state: {rows_before} rows before, {rows_after} after; the run reported {saved} saved")
    assert rows_after < rows_before and saved == rows_before - rows_after, out
    assert run_client(lab, lab_settings, reading + STATE) == before_state  # the same state, fewer rows
    assert run_client(lab, lab_settings, reading + STILL_SERVING)["read_back"]
    metrics = ssh(lab, "synapse1", f"cat {PUBLISHED}").stdout
    assert 'matrix_platform_state_compressor_last_run_result{result="success"} 1' in metrics, metrics
    assert f"matrix_platform_state_compressor_rows_saved {saved}" in metrics, metrics


def test_a_second_compressor_run_is_refused_while_one_holds_the_lock(deployed: None, lab: Lab) -> None:
    """Run 1 (the timer's unit) takes the advisory lock and then waits on a table this test holds locked;
    run 2, started by hand meanwhile, is refused and does nothing; run 1 completes once the table is free."""
    leader = next(m["name"] for m in patroni_cluster(lab)["members"] if m["role"] == "leader")
    hold = "BEGIN; LOCK TABLE state_compressor_total_progress IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(25); COMMIT;"
    background = f"nohup psql -XAtq -d synapse -c {shlex.quote(hold)} >/dev/null 2>&1 &"
    ssh(lab, leader, f"sudo runuser -u postgres -- sh -c {shlex.quote(background)}")
    assert wait_until(lambda: primary_sql(lab, TABLE_HELD) == "1", 10) is not None
    ssh(lab, "synapse1", f"sudo systemctl start --no-block {UNIT}")
    assert wait_until(lambda: primary_sql(lab, ADVISORY_HELD) == "1", 10) is not None, "run 1 never took the lock"
    second = ssh(lab, "synapse1", f"sudo -u synapse {SCRIPT}", check=False)
    assert second.returncode == REFUSED, (second.stdout, second.stderr)
    assert "another state compressor run holds the lock (synapse-state-compressor on synapse1" in second.stderr
    assert ssh(lab, "synapse1", f"systemctl is-active {UNIT}", check=False).stdout.strip() == "activating"
    done = wait_until(
        lambda: ssh(lab, "synapse1", f"systemctl is-active {UNIT}", check=False).stdout.strip() == "inactive", 60
    )
    assert done is not None, "run 1 did not finish once the table was free"
    result = ssh(lab, "synapse1", f"systemctl show -P Result {UNIT}").stdout.strip()
    assert result == "success", result
    metrics = ssh(lab, "synapse1", f"cat {PUBLISHED}").stdout
    assert 'matrix_platform_state_compressor_last_run_result{result="success"} 1' in metrics, metrics


def test_a_purge_run_deletes_media_past_its_lifetime_and_keeps_younger_media(
    deployed: None, lab: Lab, lab_settings: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """With a 20 s lifetime for uploads, one unused for longer disappears on the purge run (from Synapse
    and from the disk), one uploaded just before stays; counted on the disk before and after."""
    matrix = MatrixClient(lab_settings.vip, lab_settings.config.homeserver_fqdn, lab_settings.ca.cert_path)
    matrix.login(lab_settings.config.synapse.admin_user, lab_settings.secrets["synapse_admin_password"])
    try:
        old = matrix.upload(os.urandom(4096), "old.bin")
        time.sleep(LIFETIME + 5)
        young_data = os.urandom(4096)
        young = matrix.upload(young_data, "young.bin")
        files_before = local_files(lab)
        assert {media_id(old), media_id(young)} <= files_before
        shutil.copytree(REPO / ".secrets", tmp_path / ".secrets")  # the same site: its secrets and CA, copied
        config = tmp_path / "config.yaml"
        config.write_text(
            LAB_CONFIG.read_text()
            .replace("    local_media: 10y", f"    local_media: {LIFETIME}s")
            .replace("    remote_media: 90d", f"    remote_media: {LIFETIME}s")
        )
        chosen, rest = load_runbook("maintenance").runbook(["purge-media", "--lab", "--config", str(config)])
        code = chosen.main(rest)
        out = capsys.readouterr().out
        assert code == 0, out
        files_after = local_files(lab)
        deleted = int(re.search(r"uploads of this server's users: (\d+) deleted", out)[1])  # type: ignore[index]
        print(f"local media files: {len(files_before)} before, {len(files_after)} after; the run reported {deleted}")
        assert media_id(old) not in files_after and media_id(young) in files_after
        assert deleted == len(files_before - files_after) >= 1, out
        assert "copies of other servers' media: 0 deleted" in out  # the lab has no federation peer to copy from
        with pytest.raises(MatrixError, match="HTTP 404"):
            matrix.download(old)
        assert matrix.download(young) == young_data
    finally:
        matrix.logout()


LIFETIME = 20  # seconds


def media_id(mxc: str) -> str:
    return mxc.rsplit("/", 1)[1]


def local_files(lab: Lab) -> set[str]:
    """The media IDs of the uploads on the Synapse host's disk (local_content/aa/bb/rest)."""
    listing = ssh(lab, "synapse1", "sudo find /var/lib/synapse/media/local_content -type f -printf '%P\\n'").stdout
    return {line.replace("/", "") for line in listing.split()}
