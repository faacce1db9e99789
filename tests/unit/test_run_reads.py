"""The run's one read per host (`RunReads`): which steps' read-aheads it holds, that each step gets exactly
the facts its own read would find, and that a command which may change a host ends it for every host."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from core.connection import RUN_READS, FabricConnection, RunReads
from core.settings import Settings
from runbooks.shell import step_readings
from tasks.facts import Reading
from tasks.registry import DEPLOYED, STEPS


def bash(script: str) -> str:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False).stdout


def test_each_reading_gets_from_the_run_read_what_its_own_read_finds(tmp_path: Path) -> None:
    present, absent, other = (str(tmp_path / name) for name in ("present", "absent", "other"))
    Path(present).write_text("text\n")
    Path(other).write_text("other\n")
    readings = [
        Reading(commands={"unended": "printf 'no newline at the end'"}),  # the next section's heading follows it
        Reading(packages=["bash", "no-such-package-here"], files=[present, absent], commands={"who": "echo one"}),
        Reading(packages=["bash"], files=[present, other], users=["root"], commands={"who": "echo two"}),
        Reading(users=["root", "no-such-user-here"], commands={"same": "echo one", "stops": "echo a; exit 3; echo b"}),
        Reading(commands={"marker": "echo '@@matrix-facts command 0'"}),  # a line like the read's own sections
    ]
    whole = Reading.at_once(readings)
    found = whole.parse(bash(whole.script))
    for reading in readings:
        assert whole.covers(reading)
        assert whole.part(found, reading) == reading.parse(bash(reading.script))
    # Each package, file, user and distinct command is read once, whatever the number of steps reading it.
    assert (whole.packages, whole.files, whole.users) == (
        ["bash", "no-such-package-here"],
        [present, absent, other],
        ["root", "no-such-user-here"],
    )
    assert len(whole.commands) == 5  # "echo one" twice, under two names: once
    assert whole.part(found, readings[2]).commands == {"who": "two\n"}
    assert whole.part(found, readings[0]).commands == {"unended": "no newline at the end"}


def test_a_reading_the_run_read_does_not_cover_reads_for_itself(tmp_path: Path) -> None:
    whole = Reading.at_once([Reading(packages=["bash"], files=[str(tmp_path / "a")], commands={"x": "echo x"})])
    assert whole.covers(Reading(files=[str(tmp_path / "a")], commands={"y": "echo x"}))  # the command's name is its own
    assert not whole.covers(Reading(files=[str(tmp_path / "b")]))
    assert not whole.covers(Reading(packages=["bash"], units=["ssh.service"]))
    assert not whole.covers(Reading(commands={"x": "echo y"}))


def test_a_host_reads_the_steps_it_takes_part_in_in_their_order(lab_settings: Settings) -> None:
    by_name = {component.name: component for component in DEPLOYED}
    patroni1 = step_readings(STEPS, lab_settings, "patroni1")
    expected = [by_name[name].step_reading(lab_settings, "patroni1") for name in ("etcd", "patroni", "pgbackrest")]
    positions = [patroni1.index(reading) for reading in expected]
    assert positions == sorted(positions)  # the deploy's order
    assert by_name["haproxy"].step_reading(lab_settings, "haproxy1") not in patroni1  # not its group
    assert step_readings(STEPS, lab_settings, "haproxy1") != patroni1
    # MinIO's binary is not in the artifact cache here: its step is skipped, so nothing of it is read.
    minio = by_name["minio"].step_reading(lab_settings, "minio1")
    assert minio and not Reading.at_once(step_readings(STEPS, lab_settings, "minio1")).covers(minio)
    # The package step reads too, first of the component steps: every package the host's components need.
    assert set(patroni1[0].packages) >= {name for reading in patroni1[1:] for name in reading.packages}


def test_a_command_that_may_change_a_host_ends_the_run_read_on_every_host() -> None:
    reads = RunReads(readings=lambda host: [])
    one, other = FabricConnection(), FabricConnection()
    one.options = other.options = {RUN_READS: reads}
    with pytest.raises(AttributeError):  # not connected: the command itself cannot run here
        one.run("cat /etc/hostname", reads_only=True)
    assert not reads.changed
    with pytest.raises(AttributeError):
        other.run("touch /etc/x")
    assert reads.changed
