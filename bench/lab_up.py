"""Benchmark the lab: `up` cold (base built) and warm (base cached), re-`up`, `down`, memory per host.

    python bench/lab_up.py            # warm figures only (reuses the cached base)
    python bench/lab_up.py --cold     # also rebuild the base first (about a minute and a half)

Prints the figures and writes them to bench/results/lab_up.json. Needs root.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import publish
from core.settings import load_settings
from lab import LAB_CONFIG, LAB_INVENTORY, machines
from lab.lab import STATE, Lab, lab_hosts
from tasks.registry import CATALOG


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_per_host_mib(state: Path) -> dict[str, float]:
    """Proportional memory of every process inside each host (by PID namespace)."""
    namespaces: dict[str, str] = {}
    for nspawn, root in machines.nspawn_pids(state).items():
        children = Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split()
        if children:
            namespaces[Path(f"/proc/{children[0]}/ns/pid").resolve().name] = Path(root).parent.name
    totals = dict.fromkeys(namespaces.values(), 0)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ns = (proc / "ns" / "pid").resolve().name
            except OSError:
                continue
            if ns in namespaces:
                totals[namespaces[ns]] += pss_kib(int(proc.name))
    return {host: round(kib / 1024, 1) for host, kib in sorted(totals.items())}


def timed(action) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    value = action()
    return round(time.monotonic() - started, 2), value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="delete the cached base first")
    args = parser.parse_args()
    settings, _ = load_settings(LAB_CONFIG, LAB_INVENTORY, catalog=CATALOG, allow_placeholders=True)
    lab = Lab(lab_hosts(settings))
    figures: dict[str, object] = {"hosts": len(lab.hosts)}
    lab.down()
    if args.cold:
        shutil.rmtree(STATE / "base", ignore_errors=True)
        figures["up_cold_seconds"], report = timed(lab.up)
        figures["base_build_seconds"] = round(report.base_seconds, 1)  # type: ignore[attr-defined]
        figures["down_seconds"], _ = timed(lab.down)
    figures["up_warm_seconds"], _ = timed(lab.up)
    figures["up_again_seconds"], _ = timed(lab.up)
    time.sleep(5)  # let boot-time jobs settle before measuring memory
    memory = memory_per_host_mib(STATE)
    figures["memory_mib_per_host"] = memory
    figures["memory_mib_mean"] = round(sum(memory.values()) / max(1, len(memory)), 1)
    figures["down_seconds"], _ = timed(lab.down)
    figures["leftovers_after_down"] = lab.leftovers()
    publish("lab_up", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
