"""A host that stops answering, or is down from the start: it drops out, the others finish.

The deploy runs as an operator runs it (`python runbooks/deploy.py --lab` in a process of
its own, its output read line by line as it comes); the host's link is cut at the
controller's end of its cable, so nothing answers, not even a TCP reset.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path

from lab.faults import Line, Link, cut_when_step_starts, run_runbook
from lab.lab import Lab
from tests.lab.conftest import ssh

DETECTION_LIMIT = 20  # seconds from the cut to the run naming the host (issue: ≤ 20 s)


def deploy(*args: str, on_line: Callable[[str], None] | None = None) -> tuple[int, list[Line]]:
    return run_runbook("deploy", "--lab", *args, on_line=on_line)


def text(lines: list[Line]) -> str:
    return "\n".join(line for _, line in lines)


def finish_args(report: dict) -> list[str]:
    """The arguments of the finish command the run printed (after `python runbooks/deploy.py`)."""
    words = shlex.split(report["finish"])
    assert words[:2] == ["python", "runbooks/deploy.py"], report["finish"]
    return [w for w in words[2:] if w != "--lab"]


def test_a_host_cut_mid_deploy_is_named_within_20_s_and_the_others_finish(
    deployed: None, lab: Lab, tmp_path: Path
) -> None:
    for host in lab.hosts:  # a step that changes every host
        ssh(lab, host.name, "sudo systemctl stop prometheus-node-exporter")
    report_file = tmp_path / "report.json"

    with Link(lab, "coturn2") as link:
        code, lines = deploy("--report", str(report_file), on_line=cut_when_step_starts(link, "node-exporter"))
    cut_at = link.cut_at
    output = text(lines)
    together = {"node-exporter", "coturn"}
    assert cut_at, f"the node-exporter step never started:\n{output}"
    assert code == 1, output
    report = json.loads(report_file.read_text())
    [gone] = report["dropped"]
    # The graph starts coturn's step with node-exporter's (both wait for the foundation alone): either meets the cut.
    assert (gone["host"], gone["address"]) == ("coturn2", "198.18.1.42") and gone["step"] in together, gone
    named = next(t for t, line in lines if "lost" in line and "coturn2" in line)
    assert named - cut_at[0] <= DETECTION_LIMIT, f"named {named - cut_at[0]:.1f} s after the cut"
    assert gone["at"] - cut_at[0] <= DETECTION_LIMIT
    # The other 15 finished that step and every later one (nothing "not run", no failure).
    steps = {s["name"]: s for s in report["steps"]}
    node = steps["node-exporter"]["hosts"]
    assert {n for n, h in node.items() if h["status"] == "changed"} == {h.name for h in lab.hosts} - {"coturn2"}
    assert node["coturn2"]["status"] == "lost"
    assert all(s["status"] in ("ok", "changed", "skipped") for s in report["steps"]), output
    lost_in = [s for s in report["steps"] if s["hosts"].get("coturn2", {}).get("status") == "lost"]
    dropped_at = min(s["at"] + s["seconds"] for s in lost_in)  # when the first step that lost it ended
    for step in report["steps"]:
        others = {name: host["status"] for name, host in step["hosts"].items() if name != "coturn2"}
        assert set(others.values()) <= {"ok", "changed"}, (step["name"], others)
        if step["at"] > dropped_at:  # a step started once coturn2 had dropped out leaves it out
            assert "coturn2" not in step["hosts"], step["name"]
    assert steps[gone["step"]]["hosts"]["coturn2"]["status"] == "lost"
    assert steps["monitoring"]["status"] == "ok"  # every target UP but coturn2's, which are not asked for
    assert "Hosts that dropped out of this run" in output and "--limit coturn2" in report["finish"]
    # Back on the network: the printed command finishes it, and then nothing is left to do.
    code, lines = deploy(*finish_args(report))
    assert code == 0, text(lines)
    assert ssh(lab, "coturn2", "systemctl is-active prometheus-node-exporter").stdout.strip() == "active"
    code, lines = deploy()
    assert code == 0 and "deploy: no changes" in text(lines), text(lines)


def test_a_host_down_at_the_start_drops_out_and_the_others_are_deployed(
    deployed: None, lab: Lab, tmp_path: Path
) -> None:
    report_file = tmp_path / "report.json"
    with Link(lab, "haproxy2") as link:
        link.cut()
        code, lines = deploy("--report", str(report_file))
    output = text(lines)
    assert code == 1, output
    report = json.loads(report_file.read_text())
    assert [(d["host"], d["step"]) for d in report["dropped"]] == [("haproxy2", "site-identity")]  # its first contact
    assert "cannot connect" in report["dropped"][0]["reason"]
    steps = {s["name"]: s for s in report["steps"]}
    assert all(s["status"] in ("ok", "changed", "skipped") for s in report["steps"]), output
    assert list(steps["keepalived"]["hosts"]) == ["haproxy1"]  # the VIP answered from haproxy1
    assert all(len(s["hosts"]) == 15 for s in report["steps"] if s["name"] in ("firewall", "hosts-file"))
    assert f"python runbooks/deploy.py --lab --report {report_file} --limit haproxy2" == report["finish"]
    code, lines = deploy(*finish_args(report))
    assert code == 0, text(lines)
