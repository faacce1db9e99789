"""Benchmark the deploy against a fresh lab: the graph and --serial side by side, then their no-op re-runs.

    python bench/deploy.py [--rounds 3]

Each round rebuilds the lab hosts from the cached base (down, up) before each first deploy,
and runs, as an operator would, `python runbooks/deploy.py --lab` (the graph) and
`--serial`, each followed by a no-op re-run. Per run it reports the wall time, each step's
start and duration, the critical path (the longest chain of steps through their `after`,
each taking as long as it took: the least a graph run of these steps can take), the
start-up (from starting the process to reaching for the first host, and to its first
remote command) and the remote commands per host per step. Then min / median / max over
the rounds of each figure, and the graph's share of the serial deploy. Writes
bench/results/deploy.json. Needs root and the artifact cache (python runbooks/artifacts.py fetch).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import cpu_seconds, publish, spread
from core.settings import load_settings
from core.step import Step
from lab import LAB_CONFIG, LAB_INVENTORY
from lab.lab import Lab, lab_hosts
from runbooks.offline import REPO
from tasks.registry import CATALOG, STEPS


def critical_path(steps: list[dict], declared: tuple[Step, ...]) -> float:
    """The longest chain through the steps' `after`, each step as long as it took in the run.

    Through a `per_host` step host by host: a host's run of it starts once the steps before it
    are done on that host, and takes as long as it took there. Hosts a step let start only some
    at a time (`at_once`: the package installs) end as far after the step's start as they did.
    """
    by_name = {step.name: step for step in declared}
    first = sum(step["seconds"] for step in steps if step["name"] not in by_name)  # the site identity, before all
    finish: dict[str, float] = {}
    on_host: dict[str, dict[str, float]] = {}  # a per-host step's end on each of its hosts

    def ready(step: Step, hosts: list[str]) -> float:
        ends = [first]
        for name in step.after:
            if name in on_host:
                ends += [on_host[name][host] for host in hosts if host in on_host[name]]
            elif name in finish:
                ends.append(finish[name])
        return max(ends)

    for step in steps:  # in the deploy's order: each step's `after` comes before it
        known = by_name.get(step["name"])
        if known is None:
            continue
        hosts = step.get("hosts") or {}
        if known.per_host and hosts:
            begun = ready(known, list(hosts))
            on_host[known.name] = {
                host: begun + ran["at"] - step["at"] if known.at_once else ready(known, [host]) + ran["seconds"]
                for host, ran in hosts.items()
            }
            finish[known.name] = max(on_host[known.name].values())
        else:
            finish[known.name] = ready(known, list(hosts)) + step["seconds"]
    return max(finish.values(), default=first)


def run_deploy(report: Path, *extra: str) -> dict:
    """One `python runbooks/deploy.py --lab` in a process of its own, and what its report says of it."""
    (controller, machine), started = cpu_seconds(resource.RUSAGE_CHILDREN), time.time()
    done = subprocess.run(
        [sys.executable, str(REPO / "runbooks" / "deploy.py"), "--lab", "--report", str(report), *extra],
        capture_output=True,
        text=True,
        env={key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"},
    )
    wall = time.time() - started
    controller_after, machine_after = cpu_seconds(resource.RUSAGE_CHILDREN)
    data = json.loads(report.read_text())
    records = [record for host in data["commands"].values() for record in host]
    per_step: dict[str, dict[str, int]] = {}
    for host, host_records in sorted(data["commands"].items()):
        for record in host_records:
            per_step.setdefault(record["step"], {}).setdefault(host, 0)
            per_step[record["step"]][host] += 1
    most = max(((n, step, host) for step, hosts in per_step.items() for host, n in hosts.items()), default=(0, "", ""))
    ran = [s for s in data["steps"] if s["at"]]
    begun = min(s["at"] for s in ran) if ran else started
    return {
        "exit_code": done.returncode,
        "said": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:],
        "wall_seconds": round(wall, 2),
        # What the run cost the machine, lab hosts included, and the least time that much work takes
        # on its cores: a run near that floor is CPU-bound, and no ordering of its steps beats it.
        "controller_cpu_seconds": round(controller_after - controller, 2),
        "machine_cpu_seconds": round(machine_after - machine, 2),
        "cpu_floor_seconds": round((machine_after - machine) / (os.cpu_count() or 1), 2),
        "startup_to_first_host_seconds": round(min(data["connecting_at"].values(), default=started) - started, 3),
        "startup_to_first_command_seconds": round(min((r["at"] for r in records), default=started) - started, 3),
        "critical_path_seconds": round(critical_path(data["steps"], STEPS), 2),
        "steps": {s["name"]: {"start": round(s["at"] - begun, 2), "seconds": round(s["seconds"], 2)} for s in ran},
        "remote_commands": len(records),
        "remote_commands_per_host_per_step": per_step,
        "most_commands_on_one_host_in_one_step": {"commands": most[0], "step": most[1], "host": most[2]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="fresh-lab deploys per way of running (default 3)")
    args = parser.parse_args()
    settings, _ = load_settings(LAB_CONFIG, LAB_INVENTORY, catalog=CATALOG, allow_placeholders=True)
    lab = Lab(lab_hosts(settings))
    rounds = []
    with tempfile.TemporaryDirectory() as folder:
        for number in range(args.rounds):
            runs = {}
            for way, extra in (("graph", ()), ("serial", ("--serial",))):
                lab.down()
                lab.up()
                first = run_deploy(Path(folder) / f"{way}-{number}.json", *extra)
                rerun = run_deploy(Path(folder) / f"{way}-{number}-rerun.json", *extra)
                runs[way] = {"first_deploy": first, "noop_rerun": rerun}
                print(f"round {number + 1} {way}: first {first['wall_seconds']} s, no-op {rerun['wall_seconds']} s")
            rounds.append(runs)
    lab.down()

    def figure(way: str, run: str, key: str) -> dict[str, float]:
        return spread([r[way][run][key] for r in rounds])

    summary = {
        "graph_first_deploy_seconds": figure("graph", "first_deploy", "wall_seconds"),
        "serial_first_deploy_seconds": figure("serial", "first_deploy", "wall_seconds"),
        "graph_share_of_serial": spread(
            [
                round(r["graph"]["first_deploy"]["wall_seconds"] / r["serial"]["first_deploy"]["wall_seconds"], 3)
                for r in rounds
            ]
        ),
        "graph_critical_path_seconds": figure("graph", "first_deploy", "critical_path_seconds"),
        "graph_share_of_its_critical_path": spread(
            [
                round(
                    r["graph"]["first_deploy"]["wall_seconds"] / r["graph"]["first_deploy"]["critical_path_seconds"], 3
                )
                for r in rounds
            ]
        ),
        "graph_cpu_floor_seconds": figure("graph", "first_deploy", "cpu_floor_seconds"),
        "serial_cpu_floor_seconds": figure("serial", "first_deploy", "cpu_floor_seconds"),
        "graph_noop_rerun_seconds": figure("graph", "noop_rerun", "wall_seconds"),
        "serial_noop_rerun_seconds": figure("serial", "noop_rerun", "wall_seconds"),
        "noop_most_commands_on_one_host_in_one_step": max(
            r[way]["noop_rerun"]["most_commands_on_one_host_in_one_step"]["commands"]
            for r in rounds
            for way in ("graph", "serial")
        ),
        "startup_to_first_host_seconds": spread(
            [r[way][run]["startup_to_first_host_seconds"] for r in rounds for way in r for run in r[way]]
        ),
        "startup_to_first_command_seconds": spread(
            [r[way][run]["startup_to_first_command_seconds"] for r in rounds for way in r for run in r[way]]
        ),
    }
    publish("deploy", {"summary": summary, "rounds": rounds})
    good = all(r[way][run]["exit_code"] == 0 for r in rounds for way in r for run in r[way])
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
