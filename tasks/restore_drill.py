"""The restore drill: the newest backup restored into a scratch PostgreSQL on the backup host.

Without a target time, the drill first reads the key tables' row counts on a streaming
replica together with its replay position (one snapshot, position read before and
after), has pgBackRest archive WAL through it (`check`), and restores to exactly that
position: the restored counts must then equal the source's. With a target time it is a
point-in-time restore, reported without that comparison. The production cluster is only
read; everything written is on the backup host, under /var/lib/matrix-restore.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from nornir.core.task import AggregatedResult, Result, Task

from core.errors import HostError, InputProblem
from core.settings import Settings
from tasks.backup import REPO_PATH, pgbackrest
from tasks.backup_files import ROOT
from tasks.files import FileSpec, put_files, render
from tasks.patroni import POSTGRESQL_SERVER
from tasks.remote import Expectation, Mode, mode, run
from tasks.synapse import SIGNING_KEY, native

SCRIPT = "/usr/local/sbin/matrix-restore-drill"
DRILL_CONFIG = "/etc/pgbackrest/restore-drill.conf"
SCRATCH = "/var/lib/matrix-restore"
PORT = 5439  # the scratch instance's socket; it listens on no address
# Tables whose row counts show a complete restore: accounts, rooms, history, media, E2EE.
KEY_TABLES = (
    "users",
    "profiles",
    "devices",
    "access_tokens",
    "rooms",
    "events",
    "room_memberships",
    "current_state_events",
    "local_media_repository",
    "e2e_device_keys_json",
    "e2e_one_time_keys_json",
)
PLAYBOOK_SIGNING_KEYS = "/matrix/synapse/config/*.signing.key"  # matrix-docker-ansible-deploy's layout
ATTEMPTS = 5


@dataclass(frozen=True)
class SourcePoint:
    """Row counts on a replica at one replay position."""

    host: str
    lsn: str
    counts: dict[str, int]


def counts_sql() -> str:
    pairs = ", ".join(f"'{table}', (SELECT count(*) FROM {table})" for table in KEY_TABLES)
    return f"SELECT json_build_object({pairs})"


def source_point(task: Task, settings: Settings) -> SourcePoint:
    """Counts on the first streaming replica, in one snapshot whose replay position did not move."""
    sql = (
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n"
        f"SELECT json_build_object('recovery', pg_is_in_recovery(), 'lsn', pg_last_wal_replay_lsn(), "
        f"'counts', ({counts_sql()}));\n"
        "SELECT pg_last_wal_replay_lsn();\nCOMMIT;\n"
    )
    command = f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d {settings.config.database.name}"
    for host in settings.members("patroni"):
        for _ in range(ATTEMPTS):
            out = run(task, command, stdin=sql, host=host.name, what=Expectation("key table counts on a replica"))
            first, after = out.stdout.split("\n")[:2]  # on the primary the position is NULL: ''
            fact = json.loads(first)
            if not fact["recovery"]:
                break  # the primary: try the next host
            if fact["lsn"] == after:
                return SourcePoint(host.name, fact["lsn"], fact["counts"])
    raise HostError(
        "no Patroni replica held still for the counts (or none is streaming): check `patronictl list` "
        f"and re-run the drill in a quieter moment; tried {ATTEMPTS} times per replica"
    )


def source_signing_key(task: Task, settings: Settings) -> str:
    """SHA-256 of the signing key on the (first) Synapse host, never the key."""
    path = SIGNING_KEY if native(settings) else PLAYBOOK_SIGNING_KEYS
    host = settings.members("synapse")[0].name
    out = run(task, f"sha256sum {path}", host=host, what=Expectation(f"the signing key {path} on {host}"))
    return out.stdout.split()[0]


def drill_files(task: Task, settings: Settings) -> Result:
    """PostgreSQL's server binaries (no cluster), the drill's pgBackRest config and script."""
    POSTGRESQL_SERVER.converge(task, settings)
    version = settings.config.versions.postgresql
    config = render(
        task,
        "backup/pgbackrest-drill.conf.j2",
        repo_path=REPO_PATH,
        cipher_pass=settings.secrets["pgbackrest_cipher_pass"],
        stanza=settings.config.backup.stanza,
        data_dir=f"{SCRATCH}/data",
    )
    script = render(
        task,
        "backup/restore-drill.py.j2",
        stanza=settings.config.backup.stanza,
        scratch=SCRATCH,
        bin_dir=f"/usr/lib/postgresql/{version}/bin",
        port=PORT,
        database=settings.config.database.name,
        media_root=f"{ROOT}/media",
        keys_root=f"{ROOT}/keys",
        pgbackrest_config=DRILL_CONFIG,
    )
    specs = [
        FileSpec(DRILL_CONFIG, config, group="postgres", mode=0o640, secret=True),
        FileSpec(SCRIPT, script, mode=0o755),
    ]
    return task.run(task=put_files, specs=specs, severity_level=10)[0]


def restore_drill(task: Task, settings: Settings, time: str | None = None, keep: bool = False) -> Result:
    """Restore into the scratch instance and collect what the verdict compares."""
    files = task.run(task=drill_files, settings=settings, severity_level=10)[0]
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, changed=files.changed, diff=files.diff, result={})
    source = None if time else source_point(task, settings)
    # WAL through the target reaches the repository (pgBackRest switches the WAL segment).
    pgbackrest(task, f"--stanza={settings.config.backup.stanza} --archive-timeout=180 check", timeout=300)
    target = {"type": "lsn", "value": source.lsn} if source else {"type": "time", "value": time}
    request = json.dumps({"target": target, "counts_sql": counts_sql(), "keep": keep})
    out = run(
        task,
        SCRIPT,
        stdin=request,
        timeout=6 * 3600,
        what=Expectation(
            "the scratch restore's findings as JSON",
            f"read the message above; pgBackRest's log is in /var/log/pgbackrest, PostgreSQL's in {SCRATCH}",
        ),
    )
    found = json.loads(out.stdout)
    found["target"] = target
    found["source"] = None if source is None else {"host": source.host, "lsn": source.lsn, "counts": source.counts}
    found["source_signing_key_sha256"] = source_signing_key(task, settings)
    return Result(host=task.host, changed=True, result=found)


def findings(result: AggregatedResult) -> list[dict]:
    return [host[0].result for host in result.values() if host[0].result]


def drill_problems(result: AggregatedResult, settings: Settings) -> list[str]:
    """Gate: counts equal the source's, no one-time keys, every media file present, the same signing key."""
    problems = []
    for found in findings(result):
        source = found["source"]
        if source:
            problems += [
                f"{table}: restored {found['counts'][table]} rows, the source had {count} (at {source['lsn']})"
                for table, count in source["counts"].items()
                if found["counts"][table] != count
            ]
        if found["one_time_keys_after_truncate"]:
            problems.append("e2e_one_time_keys_json is not empty after TRUNCATE")
        media = found["media"]
        if media["missing_count"]:
            problems.append(
                f"{media['missing_count']} of {media['expected']} local media files are not in the newest "
                f"snapshot (first: {', '.join(media['missing'][:5])}); run systemctl start matrix-backup-files"
            )
        foreign = [name for name in media["folders"] if name not in ("local_content", "local_thumbnails")]
        if foreign:
            problems.append(f"the media snapshot holds {', '.join(foreign)}: the pull must copy local media only")
        key = found["signing_key"]
        if not key.get("sha256"):
            problems.append("no signing key in the newest key archive: run systemctl start matrix-backup-files")
        elif key["sha256"] != found["source_signing_key_sha256"]:
            problems.append(f"the archived signing key ({key['key_id']}) differs from the Synapse host's")
    return problems


def drill_report(result: AggregatedResult, settings: Settings) -> str:
    lines = []
    for found in findings(result):
        source = found["source"]
        where = f"replica {source['host']} at {source['lsn']}" if source else f"time {found['target']['value']}"
        lines.append(f"  restored to {where} in {found['restore_seconds']} s ({found['size_bytes'] / 2**20:.0f} MiB)")
        lines.append(f"  last transaction replayed: {found['last_transaction'] or '-'}")
        lines.append(f"  {'table':24} {'source':>10} {'restored':>10}")
        for table, count in found["counts"].items():
            expected = source["counts"][table] if source else "-"
            lines.append(f"  {table:24} {expected!s:>10} {count:>10}")
        lines.append(f"  e2e_one_time_keys_json after TRUNCATE: {found['one_time_keys_after_truncate']} rows")
        media = found["media"]
        present = media["expected"] - media["missing_count"]
        lines.append(f"  media: {present} of {media['expected']} files in the snapshot; folders {media['folders']}")
        key = found["signing_key"]
        same = key.get("sha256") == found["source_signing_key_sha256"]
        lines.append(f"  signing key {key.get('key_id')}: {'identical to' if same else 'DIFFERENT from'} the source")
    return "\n".join(lines)


def target_time_problems(value: str | None) -> list[InputProblem]:
    """--time must be an ISO time with its UTC offset, e.g. 2026-11-28T03:00:00+00:00."""
    if value is None:
        return []
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        return [
            InputProblem(
                "--time",
                value,
                "not an ISO time with a UTC offset",
                "give e.g. --time 2026-11-28T03:00:00+00:00 (the time to restore to)",
            )
        ]
    return []


def restore_time(value: str) -> str:
    """The argparse type of --time: `value`, if `target_time_problems` finds nothing wrong with it (else exit 2)."""
    for problem in target_time_problems(value):
        raise argparse.ArgumentTypeError(f"{value}: {problem.message}; {problem.fix}")
    return value


def pgbackrest_time(value: str) -> str:
    """pgBackRest's --target form of an ISO time, in UTC."""
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00")
