"""Backups offline: the pull's files as rendered, the forced command run for real, drill and recovery inputs."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from core.settings import Settings
from tasks.backup import BACKUP_REPOSITORY, newest_wal_age, parse_ages, stanza
from tasks.facts import HostFacts
from tasks.files import jinja
from tasks.restore_drill import pgbackrest_time, target_time_problems
from tests.conftest import Site, load_runbook

Deploy = Callable[..., tuple[int, str]]


def test_plan_of_the_media_and_key_pull(deploy: Deploy, site: Site) -> None:
    site.edit("config.yaml", "media_bwlimit_kbps: 50000", "media_bwlimit_kbps: 1234")
    code, out = deploy(*site.args("--plan", "--step", "backup-source", "--step", "backup-files"))
    assert code == 0, out
    plan = site.root / "plan" / "production"
    script = (plan / "backup1" / "usr" / "local" / "sbin" / "matrix-backup-files").read_text()
    assert "ionice -c3 nice -n 19 rsync -a --delete --partial --append-verify --bwlimit=1234" in script
    assert "'--include=/local_content/***' '--include=/local_thumbnails/***' '--exclude=*'" in script
    assert "remote_content" not in script.split("set -eu", 1)[1]  # only named in the comment
    assert "StrictHostKeyChecking=yes" in script
    authorized = (plan / "synapse1" / "var" / "lib" / "matrix-backup" / ".ssh" / "authorized_keys").read_text()
    backup_ip = "10.0.6.71"  # backup1's address in the example inventory
    assert authorized.startswith(
        f'from="{backup_ip}",restrict,command="/usr/local/sbin/matrix-backup-serve" ssh-ed25519 '
    )
    key = (plan / "backup1" / "etc" / "matrix-backup" / "id_ed25519").read_text()
    assert key == "<secret:backup_ssh_key>"  # the private key never reaches the plan
    policy = (plan / "backup1" / "var" / "lib" / "prometheus" / "node-exporter" / "backup-policy.prom").read_text()
    assert "matrix_platform_backup_max_age_seconds 93600" in policy  # 26 h


def serve(tmp_path: Path, command: str | None) -> subprocess.CompletedProcess[bytes]:
    """The forced command as the Synapse host runs it, with `tmp_path/etc/synapse` as the config tree."""
    (tmp_path / "etc" / "synapse").mkdir(parents=True)
    (tmp_path / "etc" / "synapse" / "signing.key").write_text("ed25519 a_test seed\n")
    script = tmp_path / "serve"
    script.write_text(
        jinja()
        .get_template("backup/backup-serve.sh.j2")
        .render(
            media=str(tmp_path / "media"),
            config=str(tmp_path / "etc" / "synapse").lstrip("/"),
            kinds=("local_content", "local_thumbnails"),
        )
    )
    env = {"PATH": "/usr/bin:/bin"} | ({"SSH_ORIGINAL_COMMAND": command} if command is not None else {})
    return subprocess.run(["sh", str(script)], capture_output=True, env=env, timeout=30)


@pytest.mark.parametrize("command", [None, "sh", "rsync --server . /", "keys; id", "cat /etc/shadow"])
def test_the_forced_command_refuses_anything_else(tmp_path: Path, command: str | None) -> None:
    done = serve(tmp_path, command)
    assert done.returncode == 1 and b"refused" in done.stderr and done.stdout == b""


def test_the_forced_command_streams_the_key_tree(tmp_path: Path) -> None:
    done = serve(tmp_path, "keys")
    assert done.returncode == 0, done.stderr
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        names = archive.getnames()
    assert any(name.endswith("etc/synapse/signing.key") for name in names)


@pytest.mark.parametrize("value", ["yesterday", "2026-11-28 03:00", "2026-13-01T00:00:00+00:00"])
def test_a_restore_time_needs_iso_form_with_offset(value: str) -> None:
    assert [p.file for p in target_time_problems(value)] == ["--time"]


def test_a_restore_time_is_given_to_pgbackrest_in_utc() -> None:
    assert target_time_problems("2026-11-28T04:30:00+01:00") == []
    assert pgbackrest_time("2026-11-28T04:30:00+01:00") == "2026-11-28 03:30:00+00"


def test_recovery_restores_before_patroni_and_empties_one_time_keys_before_synapse() -> None:
    recovery = load_runbook("disaster_recovery")
    names = [s.name for s in recovery.steps(wipe=False, time=None)]
    assert "set-aside" not in names and "forget-cluster" not in names  # an existing cluster is refused instead
    names = [s.name for s in recovery.steps(wipe=True, time=None)]
    order = ["stop-synapse", "set-aside", "forget-cluster", "etcd", "pgbackrest", "patroni"]
    assert [n for n in names if n in order] == order
    assert names.index("synapse-database") + 1 == names.index("forget-one-time-keys") < names.index("synapse")
    assert len(names) == len(set(names))


def test_plan_of_a_recovery_bootstraps_patroni_from_the_backup(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    chosen, rest = load_runbook("disaster_recovery").runbook(
        ["--time", "2026-11-28T03:00:00+00:00", *site.args("--plan", "--step", "patroni")]
    )
    assert chosen.main(rest) == 0, capsys.readouterr().out
    host = site.root / "plan" / "production" / "patroni1"
    config = (host / "etc" / "patroni" / "patroni.yml").read_text()
    assert "  method: pgbackrest\n" in config and 'recovery_target_time: "2026-11-28 03:00:00+00"' in config
    script = (host / "usr" / "local" / "sbin" / "matrix-bootstrap-from-backup").read_text()
    assert '--type=time --target="2026-11-28 03:00:00+00" restore' in script


FAKE_RUNUSER = """#!/bin/sh
# runuser -u postgres -- pgbackrest ARGS: answers `info` with the status code in $CODE, logs the rest
shift 3
case "$*" in *" info") [ "$CODE" = fail ] && exit 1; echo "[{\\"status\\": {\\"code\\": $CODE}}]" ;;
  *) echo "$*" >> "$LOG" ;; esac
"""


@pytest.mark.parametrize(("code", "created", "exit_code"), [("1", True, 0), ("0", False, 0), ("fail", False, 1)])
def test_the_stanza_is_created_on_the_host_only_when_pgbackrest_finds_it_missing(
    tmp_path: Path, lab_settings: Settings, code: str, created: bool, exit_code: int
) -> None:
    """The command the repository runs when its config changed first: it asks pgBackRest itself, and says so."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "runuser").write_text(FAKE_RUNUSER)
    (bin_dir / "runuser").chmod(0o755)
    log = tmp_path / "calls"
    component = BACKUP_REPOSITORY
    facts = HostFacts(commands={"info": ""})  # unreadable: decided on the host
    context = component.context(lab_settings, "backup1", facts)
    (command,) = stanza(context, facts, frozenset())
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log), "CODE": code}
    done = subprocess.run(["bash", "-c", command.script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == exit_code, done.stderr
    assert (command.marker in done.stdout) is created
    calls = log.read_text() if log.exists() else ""
    assert calls == ("pgbackrest --stanza=matrix stanza-create\n" if created else "")


def test_the_newest_archived_wal_is_read_as_an_age_or_none() -> None:
    assert newest_wal_age("1700000100\n1700000040.5\n") == 59.5
    assert newest_wal_age("1700000100\n") is None  # no segment within STEADY_WAL_HOURS: the full check runs
    assert newest_wal_age("") is None and newest_wal_age("garbled\nlines\n") is None


def test_backup_ages_are_read_with_or_without_pgbackrest_on_the_host() -> None:
    """A backup host with a full backup and a media pull; then a new one (a check run before the first
    deploy: no pgBackRest, no metrics file), where every kind counts as never backed up."""
    info = '[{"backup": [{"timestamp": {"start": 1700000000, "stop": 1700003600}}], "name": "matrix"}]'
    metric = 'matrix_platform_backup_last_success_timestamp_seconds{kind="media"} 1700007200\n'
    ages = {a.kind: (a.newest, a.age_hours) for a in parse_ages(f"1700010800\n{info}\n{metric}")}
    assert ages == {"database": (1700003600, 2.0), "media": (1700007200.0, 1.0), "keys": (None, None)}
    assert {a.kind: a.newest for a in parse_ages("1700010800\n")} == dict.fromkeys(("database", "media", "keys"))
