"""validate.py in the lab: every check passes on the deployed platform, and a stopped
component is named by the check that depends on it while the other checks still run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.lab import Lab
from tests.conftest import load_runbook
from tests.lab.conftest import ssh
from tests.lab.test_edge_tier import wait_for
from tests.lab.test_monitoring_tier import health

EXPORTER = ("node", "198.18.1.81:9101")  # backup1's node-exporter


def validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, dict[str, dict]]:
    """Run validate.py on the lab; exit code, output and the report's steps by name."""
    report = tmp_path / "validate.json"
    chosen, rest = load_runbook("validate").runbook(["--lab", "--report", str(report)])
    code = chosen.main(rest)
    out = capsys.readouterr().out
    print(out)
    steps = {s["name"]: s for s in json.loads(report.read_text())["steps"]}
    return code, out, steps


def test_validate_passes_on_the_deployed_lab(
    deployed: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, steps = validate(tmp_path, capsys)
    assert code == 0, out
    for line in (
        "PASS  login: @admin:lab.example logged in through the VIP",
        "PASS  send/receive: $",
        "PASS  media: mxc://",
    ):
        assert line in out, line
    assert "PASS  turn udp: 198.18.1.41 → relay 198.18.1.41:" in out and "PASS  turn tcp: 198.18.1.41 → relay" in out
    assert "PASS  turn tls: 198.18.1.41 → relay" in out  # through HAProxy's TLS, verified against the site CA
    assert "PASS  admin, allowed address: from monitoring1" in out and "server_version 200 (expected 200)" in out
    assert "PASS  admin, other address: from patroni1" in out and "server_version 403 (expected 403)" in out
    assert "PASS  federation: 8448 /_matrix/federation/v1/version: HTTP 200" in out
    assert steps["group-call"]["status"] == "skipped"  # no LiveKit binary in the lab
    assert {s["status"] for name, s in steps.items() if name != "group-call"} <= {"ok", "changed"}, steps


def test_a_stopped_component_fails_its_check_and_the_others_still_run(
    deployed: None, lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ssh(lab, "coturn1", "sudo systemctl stop coturn")
    ssh(lab, "backup1", "sudo systemctl stop prometheus-node-exporter")
    try:
        # validate reports what Prometheus saw: wait for the scrape that finds the exporter gone.
        wait_for(lambda: health(lab)[EXPORTER] == "down")
        code, out, steps = validate(tmp_path, capsys)
    finally:
        ssh(lab, "coturn1", "sudo systemctl start coturn")
        ssh(lab, "backup1", "sudo systemctl start prometheus-node-exporter")
        wait_for(lambda: health(lab)[EXPORTER] == "up")
    assert code == 1, out
    client = steps["matrix-client"]
    assert client["status"] == "failed"
    assert any(p.startswith("turn udp: turn:198.18.1.41:3478?transport=udp:") for p in client["problems"]), client
    assert any(p.startswith("turn tcp: turn:198.18.1.41:3478?transport=tcp:") for p in client["problems"]), client
    assert any(p.startswith("turn tls: turns:198.18.1.41:5349?transport=tcp:") for p in client["problems"]), client
    assert "PASS  login:" in out and "PASS  media:" in out  # the rest of the client checks still passed
    targets = steps["prometheus-targets"]
    assert targets["status"] == "failed" and EXPORTER[1] in json.dumps(targets["hosts"]), targets
    # monitoring1 failed the targets check and is still asked by the later checks
    assert steps["hosts-file"]["status"] == "ok" and len(steps["hosts-file"]["hosts"]) == 16
    # Asked of monitoring1 too; TURN's TLS ends in HAProxy, which serves its certificate with Coturn
    # stopped (the TLS allocation above is what fails).
    certificates = steps["certificates"]
    assert list(certificates["hosts"]) == ["monitoring1"] and certificates["status"] == "ok", certificates
    assert "FAIL" in out and "Checklist" in out
