"""Benchmark the deploy against a fresh lab: first deploy, then the no-op re-run.

    python bench/deploy.py

Rebuilds the lab hosts from the cached base (down, up), runs `deploy.py --lab` twice and
prints, per run: the wall time, each step's time, the critical path (the sum over steps
of the slowest host) and the remote commands per host, in all and per step (component).
Writes bench/results/deploy.json.
Needs root and the artifact cache (python runbooks/artifacts.py fetch).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import publish
from core.settings import load_settings
from lab import LAB_CONFIG, LAB_INVENTORY
from lab.lab import Lab, lab_hosts
from runbooks.shell import REPO
from tasks.registry import CATALOG


def run_deploy(report: Path) -> dict:
    spec = importlib.util.spec_from_file_location("deploy", REPO / "runbooks" / "deploy.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    started = time.monotonic()
    code = module.RUNBOOK.main(["--lab", "--report", str(report)])
    wall = time.monotonic() - started
    data = json.loads(report.read_text())
    steps = {s["name"]: round(s["seconds"], 2) for s in data["steps"]}
    critical = sum(max((h["seconds"] for h in s["hosts"].values()), default=0.0) for s in data["steps"])
    commands = {host: len(records) for host, records in sorted(data["commands"].items())}
    per_step: dict[str, dict[str, int]] = {}
    for host, records in sorted(data["commands"].items()):
        for record in records:
            per_step.setdefault(record["step"], {}).setdefault(host, 0)
            per_step[record["step"]][host] += 1
    most = max(((n, step, host) for step, hosts in per_step.items() for host, n in hosts.items()), default=(0, "", ""))
    return {
        "exit_code": code,
        "wall_seconds": round(wall, 2),
        "steps_seconds": steps,
        "critical_path_seconds": round(critical, 2),
        "remote_commands_per_host": commands,
        # A step is one component (etcd, patroni, haproxy, …): the "per host per component".
        "remote_commands_per_host_per_step": per_step,
        "most_commands_on_one_host_in_one_step": {"commands": most[0], "step": most[1], "host": most[2]},
    }


def main() -> int:
    # No options; parsed all the same, so that --help or a typo does not rebuild the lab.
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    settings, _ = load_settings(LAB_CONFIG, LAB_INVENTORY, catalog=CATALOG, allow_placeholders=True)
    lab = Lab(lab_hosts(settings))
    lab.down()
    lab.up()
    with tempfile.TemporaryDirectory() as folder:
        first = run_deploy(Path(folder) / "first.json")
        rerun = run_deploy(Path(folder) / "rerun.json")
    figures = {
        "first_deploy": first,
        "noop_rerun": rerun,
        "rerun_share_of_first": round(rerun["wall_seconds"] / first["wall_seconds"], 3),
    }
    publish("deploy", figures)
    return 0 if first["exit_code"] == rerun["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
