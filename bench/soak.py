"""The long fault soak on the lab: random faults of every kind, one at a time, under every probe.

    python bench/soak.py [--minutes 30] [--seed 20261204]

Brings the lab up and deploys it if needed, then runs `python runbooks/failover_drill.py
soak --lab --yes --minutes M --seed S` (CI runs a 3-minute one). Prints and keeps in
bench/results/soak.json what the soak's own record holds: the faults run per kind, each
kind's unavailability per probe (p50/p95/max seconds, from acknowledgements), lost writes
and messages, the Matrix client's errors and stalls; the record and its timeline stay in
drills/lab/. Needs root.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import publish
from core.settings import load_settings
from lab import LAB_CONFIG, LAB_INVENTORY
from lab.faults import run_runbook
from lab.lab import Lab, lab_hosts
from tasks.registry import CATALOG
from tasks.soak import TOTALS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long faults keep coming (default 30)")
    parser.add_argument("--seed", type=int, default=20261204, help="the schedule's seed (default 20261204)")
    args = parser.parse_args()
    if not 0 < args.minutes <= 24 * 60:
        parser.error(f"--minutes {args.minutes:g}: more than 0 and at most 1440")
    settings, _ = load_settings(LAB_CONFIG, LAB_INVENTORY, catalog=CATALOG, allow_placeholders=True)
    Lab(lab_hosts(settings)).up()
    if run_runbook("deploy", "--lab")[0] != 0:
        print("the lab does not deploy cleanly: fix that first (python runbooks/deploy.py --lab)")
        return 1
    started = time.time()
    soak = ("soak", "--lab", "--yes", f"--minutes={args.minutes:g}", f"--seed={args.seed}")
    code, _ = run_runbook("failover_drill", *soak, on_line=lambda line: print(line, flush=True))
    wall = time.time() - started
    records = sorted((LAB_CONFIG.parent / "drills" / "lab").glob("*-soak.json"))
    if not records or records[-1].stat().st_mtime < started:
        print(f"the soak wrote no record (exit code {code}): read its output above")
        return 1
    record = json.loads(records[-1].read_text())
    figures = {
        "exit_code": code,
        "wall_seconds": round(wall, 1),
        "record": str(records[-1]),
        "timeline": str(records[-1].with_suffix(".png")),
        **{key: record[key] for key in ("seed", "minutes", "faults_run", "by_kind", "verdict", "problems")},
        **{key: record[key] for key in TOTALS},
    }
    publish("soak", figures)
    return code


if __name__ == "__main__":
    sys.exit(main())
