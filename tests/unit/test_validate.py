"""validate.py offline: which checks it runs, who may see the admin UI, what the checklist says."""

from __future__ import annotations

import pytest

from core.settings import Settings
from runbooks.display import HostOutcome, StepOutcome, evidence
from tasks.validate import allowed
from tests.conftest import load_runbook


def test_the_checklist_and_its_opt_in_drills() -> None:
    validate = load_runbook("validate")
    plain, rest = validate.runbook(["--lab"])
    assert rest == ["--lab"] and plain.checklist and not plain.confirm
    names = [s.name for s in plain.steps]
    assert names[:4] == ["matrix-client", "group-call", "admin-allowlist", "federation"]
    assert "certificates" in names and "hosts-file" in names
    with_drills, _ = validate.runbook(["--drills", "--restore"])
    names = [s.name for s in with_drills.steps]
    assert with_drills.confirm  # a drill faults the cluster: asked first
    assert names[-6:] == ["healthy", "patroni-stop-1", "healthy-after-1", "vip-haproxy-2", "healthy-after-2", "restore"]
    assert next(s for s in with_drills.steps if s.name == "healthy").blocks  # an unhealthy cluster stops the drills


def test_in_plan_mode_no_check_runs_and_none_passes(capsys: pytest.CaptureFixture[str]) -> None:
    validate = load_runbook("validate")
    chosen, rest = validate.runbook(["--lab", "--plan"])
    assert chosen.main(rest) == 0
    out = capsys.readouterr().out
    assert f"validate: 0 PASS, 0 FAIL, {len(chosen.steps)} SKIP in " in out  # a checklist ends on its verdicts
    assert out.count("PASS") == 1  # that line's
    assert out.count("not run in plan mode") >= len(chosen.steps)  # each step's line and its table row


def test_the_admin_allowlist_sorts_the_inventory(lab_settings: Settings) -> None:
    inside = [h.name for h in lab_settings.hosts.values() if allowed(lab_settings, h)]
    assert inside == ["monitoring1"]  # config.lab.yaml: 198.18.1.71/32


def test_evidence_is_the_gate_or_the_hosts_answers() -> None:
    failed = StepOutcome("hosts-file", "failed", problems=["turn udp: turn:198.18.1.41:3478: refused"])
    assert evidence(failed) == "turn udp: turn:198.18.1.41:3478: refused"
    broken = StepOutcome("clocks", "failed", hosts={"a": HostOutcome("failed", 0.1, "a: clock +9 s\nmore")})
    assert evidence(broken) == "a: clock +9 s"
    hosts = {f"h{i}": HostOutcome("ok", 0.1, "12 names resolve") for i in range(5)} | {
        "x": HostOutcome("ok", 0.1, "3 names resolve")
    }
    assert evidence(StepOutcome("hosts-file", "ok", hosts=hosts)) == "5 hosts: 12 names resolve\nx: 3 names resolve"
    assert evidence(StepOutcome("matrix-client", "ok", report="  PASS  login: ok\n")) == "PASS  login: ok"
