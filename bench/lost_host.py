"""Benchmark a deploy that loses a host mid-run against the same deploy that does not.

    python bench/lost_host.py [--host coturn2] [--step node-exporter] [--rounds 2]

Brings the lab up and deploys it if needed; then, each round, stops node-exporter on every
host (so the step changes all of them) and runs `python runbooks/deploy.py --lab`: once
untouched, once with HOST's cable cut as the run announces STEP. Prints, per round, the two
wall times, the seconds from the cut to the line naming the host lost, and the exit codes;
then finishes the host with the command the run printed. Writes bench/results/lost_host.json.
Needs root.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import publish
from core.settings import load_settings
from lab import LAB_CONFIG, LAB_INVENTORY
from lab.faults import Link, cut_when_step_starts, run_runbook
from lab.lab import Lab, lab_hosts
from tasks.registry import CATALOG


def stop_everywhere(lab: Lab, unit: str) -> None:
    """`systemctl stop UNIT` on every host at once: the step that follows then changes all of them."""
    stops = [subprocess.Popen([*lab.ssh_args(h), f"sudo systemctl stop {unit}"]) for h in lab.hosts]
    for process in stops:
        process.wait(timeout=60)


def timed_deploy(*args: str, link: Link | None = None, step: str = "") -> dict:
    started = time.time()
    on_line = cut_when_step_starts(link, step) if link else None
    code, lines = run_runbook("deploy", "--lab", *args, on_line=on_line)
    figures: dict = {"exit_code": code, "wall_seconds": round(time.time() - started, 2)}
    if link and link.cut_at:
        named = next((t for t, line in lines if " lost " in line and link.host.name in line), None)
        figures["cut_to_named_seconds"] = None if named is None else round(named - link.cut_at[0], 2)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="coturn2", help="the host whose cable is cut (default coturn2)")
    parser.add_argument("--step", default="node-exporter", help="the step it is cut in (default node-exporter)")
    parser.add_argument("--rounds", type=int, default=2, choices=range(1, 11), metavar="1-10")
    args = parser.parse_args()
    settings, _ = load_settings(LAB_CONFIG, LAB_INVENTORY, catalog=CATALOG, allow_placeholders=True)
    lab = Lab(lab_hosts(settings))
    if args.host not in settings.hosts:
        parser.error(f"--host {args.host}: not in {LAB_INVENTORY / 'hosts.yaml'}")
    lab.up()
    if run_runbook("deploy", "--lab")[0] != 0:
        print("the lab does not deploy cleanly: fix that first (python runbooks/deploy.py --lab)")
        return 1
    rounds = []
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        for _ in range(args.rounds):
            stop_everywhere(lab, "prometheus-node-exporter")
            whole = timed_deploy()
            stop_everywhere(lab, "prometheus-node-exporter")
            with Link(lab, args.host) as link:
                losing = timed_deploy("--report", str(report), link=link, step=args.step)
            finish = shlex.split(json.loads(report.read_text())["finish"])[2:]
            losing["finish_exit_code"] = run_runbook("deploy", *finish)[0]
            rounds.append({"all_hosts": whole, "host_cut": losing})
    figures = {"host": args.host, "step": args.step, "rounds": rounds}
    publish("lost_host", figures)
    good = all(r["all_hosts"]["exit_code"] == 0 and r["host_cut"]["exit_code"] == 1 for r in rounds)
    return 0 if good and all(r["host_cut"]["finish_exit_code"] == 0 for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
