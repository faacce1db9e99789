"""The run's one read per host (`RunReads`): which steps' read-aheads it holds, that each step gets exactly
what its own command would print, and that a command which may change a host ends it for every host."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from core.connection import RUN_READS, FabricConnection, RunReads
from core.settings import Settings
from runbooks.shell import step_readings
from tasks.facts import Reading, apart, together
from tasks.registry import DEPLOYED, STEPS


def bash(script: str) -> str:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False).stdout


def test_each_script_gets_what_it_prints_alone(tmp_path: Path) -> None:
    (tmp_path / "present").write_text("text\n")
    scripts = [
        Reading(files=[str(tmp_path / "present"), str(tmp_path / "absent")], commands={"who": "echo one"}).script,
        "echo before; exit 3; echo never",  # a script that stops stops only itself
        "printf 'no newline at the end'",
        "echo '@@matrix-step-read x'  # a marker-like line of its own, and a comment on the last line",
        Reading(users=["root", "no-such-user-here"]).script,
    ]
    outputs = apart(bash(together(scripts)), scripts)
    assert outputs == {script: bash(script) for script in scripts}
    assert outputs[scripts[1]] == "before\n"


def test_an_output_cut_short_gives_only_the_scripts_it_holds_whole() -> None:
    scripts = ["echo a", "echo b", "echo c"]
    out = bash(together(scripts))
    cut = out[: out.index("c\n") + 2]  # the last script's output, without its marker
    assert apart(cut, scripts) == {"echo a": "a\n", "echo b": "b\n"}  # "echo c" reads for itself


def test_a_host_reads_the_steps_it_takes_part_in_in_their_order(lab_settings: Settings) -> None:
    by_name = {component.name: component for component in DEPLOYED}
    patroni1 = step_readings(STEPS, lab_settings, "patroni1")
    expected = [by_name[name].read_script(lab_settings, "patroni1") for name in ("etcd", "patroni", "pgbackrest")]
    positions = [patroni1.index(script) for script in expected]
    assert positions == sorted(positions)  # the deploy's order
    assert by_name["haproxy"].read_script(lab_settings, "haproxy1") not in patroni1  # not its group
    assert step_readings(STEPS, lab_settings, "haproxy1") != patroni1
    # MinIO's binary is not in the artifact cache here: its step is skipped, so nothing of it is read.
    assert by_name["minio"].read_script(lab_settings, "minio1") not in step_readings(STEPS, lab_settings, "minio1")
    # The package step reads too, first of the component steps.
    assert "dpkg-query" in patroni1[0]


def test_a_command_that_may_change_a_host_ends_the_run_read_on_every_host() -> None:
    reads = RunReads(scripts=lambda host: [])
    one, other = FabricConnection(), FabricConnection()
    one.options = other.options = {RUN_READS: reads}
    with pytest.raises(AttributeError):  # not connected: the command itself cannot run here
        one.run("cat /etc/hostname", reads_only=True)
    assert not reads.changed
    with pytest.raises(AttributeError):
        other.run("touch /etc/x")
    assert reads.changed
