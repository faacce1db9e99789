"""Hosts that drop out of a run, as data: a step's outcome in, the hosts taken out and the finish command out."""

from __future__ import annotations

from pathlib import Path

from core.settings import Settings
from core.step import Step
from runbooks.display import HostOutcome, StepOutcome
from runbooks.shell import Dropped, Options, Runbook, make_nornir
from tasks.remote import Mode

STEP = Step("backup-files", "the daily pull", lambda task, settings: None, groups=("backup",))
LOST = "deploy@198.18.1.42:22: no answer, the connection broke 12.6 s into a command"


def test_a_lost_host_and_a_host_whose_task_needed_a_lost_peer_both_drop_out(lab_settings: Settings) -> None:
    nr = make_nornir(lab_settings, Mode.APPLY)
    outcome = StepOutcome(
        "backup-files",
        "ok",
        hosts={
            "coturn2": HostOutcome("lost", 12.6, LOST, at=100.0, lost_address="198.18.1.42"),
            "backup1": HostOutcome(
                "lost", 3.0, "patroni2 (198.18.1.12) dropped out", at=90.0, lost_address="198.18.1.12"
            ),
            "coturn1": HostOutcome("changed", 0.2, at=80.0),
        },
    )
    dropped: dict[str, Dropped] = {}
    Runbook._drop(nr, STEP, outcome, lab_settings, dropped)
    assert dropped == {
        "coturn2": Dropped("coturn2", "198.18.1.42", "backup-files", LOST, 100.0),
        "patroni2": Dropped("patroni2", "198.18.1.12", "backup-files", "patroni2 (198.18.1.12) dropped out", 90.0),
        "backup1": Dropped(
            "backup1", "198.18.1.81", "backup-files", "its step needs patroni2, which stopped answering", 90.0
        ),
    }
    # Tasks reaching for them as peers from now on fail at once (tasks.remote.shell).
    assert set(nr.config.user_defined["lost"]) == {"coturn2", "patroni2", "backup1"}


def test_the_finish_command_is_the_run_limited_to_the_hosts_that_dropped_out(tmp_path: Path) -> None:
    runbook = Runbook("deploy", "", [STEP])
    argv = ("--lab", "--limit", "coturn1,coturn2", "--step", "coturn", "--report", "/tmp/a b.json")
    options = Options(tmp_path, tmp_path, Mode.APPLY, [STEP], [], False, None, tmp_path, True, argv=argv)
    assert runbook.finish_command(options, ["coturn2"]) == (
        "python runbooks/deploy.py --lab --step coturn --report '/tmp/a b.json' --limit coturn2"
    )
    options = Options(tmp_path, tmp_path, Mode.APPLY, [STEP], [], False, None, tmp_path, True, ("--limit=x",))
    assert runbook.finish_command(options, ["a", "b"]) == "python runbooks/deploy.py --limit a,b"
