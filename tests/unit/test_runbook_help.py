"""Every runbook's --help answers, and sub-commands are found wherever the operator puts them."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import REPO, load_runbook

RUNBOOKS = sorted(
    path.stem for path in (REPO / "runbooks").glob("*.py") if '__name__ == "__main__"' in path.read_text()
)
WITH_COMMANDS = [name for name in RUNBOOKS if hasattr(load_runbook(name), "COMMANDS")]


def test_every_runbook_answers_help_with_exit_0() -> None:
    def help_of(name: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, f"runbooks/{name}.py", "--help"]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)

    assert len(RUNBOOKS) == 14, RUNBOOKS  # every runbook a user types, none of the shell's own modules
    with ThreadPoolExecutor(4) as pool:
        for name, done in zip(RUNBOOKS, pool.map(help_of, RUNBOOKS), strict=True):
            assert done.returncode == 0, f"{name}: {done.stderr}"
            assert done.stdout.startswith("usage: ") and "Traceback" not in done.stderr, name


@pytest.mark.parametrize("name", WITH_COMMANDS)
def test_each_command_shows_its_own_flags_beside_the_runbook_options(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = load_runbook(name).COMMANDS
    for command in commands.commands:
        with pytest.raises(SystemExit) as exit_info:
            commands.main([command.name, "--help"] if command.name else ["--help"])
        shown = capsys.readouterr().out
        assert exit_info.value.code == 0, command.name
        assert shown.startswith(f"usage: python runbooks/{name}.py {command.name}".rstrip()), shown[:100]
        assert "--lab" in shown
        if not command.offline:  # a runbook: its options and steps
            assert "--plan" in shown and "steps" in shown
        for item in command.flags:
            assert item.names[0] in shown, (command.name, item.names)


def test_the_list_of_commands_and_a_missing_one(capsys: pytest.CaptureFixture[str]) -> None:
    maintenance = load_runbook("maintenance").COMMANDS
    with pytest.raises(SystemExit) as exit_info:
        maintenance.choose(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert all(f"  {name}" in shown for name in ("update", "workers", "federation", "rolling-restart", "intranet"))
    with pytest.raises(SystemExit) as exit_info:
        maintenance.choose(["--lab"])
    assert exit_info.value.code == 2
    assert "name a command: update, workers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "runs", "left"),
    [
        (["--lab", "check"], "backup-age", ["--lab"]),  # options before the command
        (["check", "--lab"], "backup-age", ["--lab"]),
        (["--limit", "check", "--plan"], "pgbackrest", ["--limit", "check", "--plan"]),  # a value, not a command
        (["--plan"], "pgbackrest", ["--plan"]),  # the default command
    ],
)
def test_the_command_is_found_wherever_it_is_written(argv: list[str], runs: str, left: list[str]) -> None:
    chosen, rest = load_runbook("backup_setup").runbook(argv)
    assert chosen.steps[0].name == runs and rest == left


def test_a_command_flag_goes_before_or_after_the_command() -> None:
    drills = load_runbook("failover_drill")
    for argv in (["--runs", "2", "patroni", "--variant", "kill"], ["patroni", "--variant", "kill", "--runs", "2"]):
        chosen, rest = drills.runbook([*argv, "--lab"])
        assert [s.name for s in chosen.steps][1::2] == ["patroni-kill-1", "patroni-kill-2"] and rest == ["--lab"]
