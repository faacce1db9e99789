"""maintenance.py offline: each command is the deploy's steps it concerns, plus its checks."""

from __future__ import annotations

import pytest

from tests.conftest import load_runbook


@pytest.mark.parametrize(
    ("command", "steps"),
    [
        ("workers", ["firewall", "synapse", "synapse-playbook", "haproxy", "monitoring"]),
        ("federation", ["firewall", "synapse", "synapse-playbook", "haproxy", "federation-check"]),
        ("intranet", ["hosts-file", "offline-names", "default-routes"]),
    ],
)
def test_each_command_runs_only_the_steps_it_concerns(command: str, steps: list[str]) -> None:
    chosen, rest = load_runbook("maintenance").runbook([command, "--lab", "--check"])
    assert [s.name for s in chosen.steps] == steps and rest == ["--lab", "--check"]
    deploy = {s.name: s for s in load_runbook("deploy").RUNBOOK.steps}
    assert all(s == deploy[s.name] for s in chosen.steps if s.name in deploy)  # the deploy's own, gates included


@pytest.mark.parametrize("argv", [[], ["upgrade"], ["--lab"]])
def test_an_unknown_command_is_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        load_runbook("maintenance").runbook(argv)
    assert refused.value.code == 2
