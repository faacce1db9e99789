"""Benchmark a whole process running one no-op step on the 16 lab hosts: this project against pyinfra.

    python bench/one_step.py [--runs 5]

The step is the site CA in every server's trust store, converged by both sides the same
way: the ca-certificates package present, the CA's certificate file in place (owner,
mode, content), `update-ca-certificates` only when the file changed. This project runs
it as `python runbooks/deploy.py --lab --step ca-trust` (with the site-identity read
every run does first); pyinfra (a pinned version in a venv of its own under .tools/,
made on first use from the package index) runs `apt.packages`, `files.put` and a
conditional `server.shell` over the same SSH user, key and known_hosts, 16 hosts in
parallel, with sudo. Both are run once to converge, then alternately `--runs` times,
each a fresh process: the figure is its wall time, from starting the process to its
exit, and its CPU. Prints min / median / max, writes bench/results/one_step.json.
Needs the lab up (python runbooks/lab.py up); leaves it as it found it, the step converged.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import cpu_seconds, publish, spread
from core.connection import CONNECTION
from core.pki import trusted_ca
from core.settings import Settings, load_settings
from lab import LAB_CONFIG, LAB_INVENTORY
from runbooks.offline import REPO
from runbooks.shell import simple_inventory
from tasks.registry import CATALOG

PYINFRA = "pyinfra==3.10.0"
VENV = REPO / ".tools" / "pyinfra-venv"

DEPLOY = """
from pyinfra.operations import apt, files, server

apt.packages(name="ca-certificates present", packages=["ca-certificates"])
placed = files.put(
    name="the site CA in the trust store", src={ca!r}, dest={dest!r}, user="root", group="root", mode="644"
)
server.shell(name="trust store rebuilt", commands=["update-ca-certificates --fresh"], _if=placed.did_change)
"""


def pyinfra() -> Path:
    """The pyinfra command, installed into its own venv when missing."""
    command = VENV / "bin" / "pyinfra"
    if not command.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", PYINFRA], check=True)
    return command


def pyinfra_files(settings: Settings, folder: Path) -> tuple[Path, Path]:
    """pyinfra's inventory (the lab's hosts, its SSH user, key and known_hosts) and the step's deploy file."""
    hosts = simple_inventory(LAB_INVENTORY).hosts
    entries = []
    for name, host in hosts.items():
        params = host.get_connection_parameters(CONNECTION)
        extras = params.extras or {}
        data = {
            "ssh_user": params.username,
            "ssh_port": params.port or 22,
            "ssh_key": str(LAB_INVENTORY / extras["key_filename"]),
            "ssh_known_hosts_file": str(LAB_INVENTORY / extras["known_hosts"]),
            "ssh_strict_host_key_checking": "yes",
        }
        entries.append((params.hostname, data))
        assert name in settings.hosts
    inventory = folder / "inventory.py"
    inventory.write_text(f"lab = {entries!r}\n")
    ca = folder / "ca.crt"
    ca.write_text(settings.ca.ca_pem())
    deploy = folder / "deploy.py"
    deploy.write_text(DEPLOY.format(ca=str(ca), dest=trusted_ca(settings.site)))
    return inventory, deploy


def timed(command: list[str]) -> dict:
    """One whole process: wall time, its CPU, and its last line of output."""
    (cpu, _), started = cpu_seconds(resource.RUSAGE_CHILDREN), time.monotonic()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    wall = time.monotonic() - started
    cpu_after, _ = cpu_seconds(resource.RUSAGE_CHILDREN)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {
        "exit_code": done.returncode,
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(cpu_after - cpu, 3),
        "said": lines[-1] if lines else done.stderr[-300:],
        "output": done.stdout,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each (default 5)")
    args = parser.parse_args()
    settings, _ = load_settings(LAB_CONFIG, LAB_INVENTORY, catalog=CATALOG, allow_placeholders=True)
    ours = [sys.executable, str(REPO / "runbooks" / "deploy.py"), "--lab", "--step", "ca-trust"]
    with tempfile.TemporaryDirectory() as folder:
        inventory, deploy = pyinfra_files(settings, Path(folder))
        theirs = [str(pyinfra()), "-y", "--sudo", "--parallel", str(len(settings.hosts)), str(inventory), str(deploy)]
        for command in (ours, theirs):  # converge, and warm both (bytecode, the hosts' caches)
            first = timed(command)
            if first["exit_code"] != 0:
                print(first["output"][-3000:])
                return 1
        runs: dict[str, list[dict]] = {"this project": [], "pyinfra": []}
        for _ in range(args.runs):
            runs["this project"].append(timed(ours))
            runs["pyinfra"].append(timed(theirs))
    for name, done in runs.items():
        failed = [run for run in done if run["exit_code"] != 0]
        if failed:
            print(f"{name} failed: {failed[0]['output'][-3000:]}")
            return 1
    figures = {
        name: {
            "wall_seconds": spread([run["wall_seconds"] for run in done]),
            "cpu_seconds": spread([run["cpu_seconds"] for run in done]),
            "said": done[-1]["said"],
        }
        for name, done in runs.items()
    }
    figures["hosts"] = len(settings.hosts)
    publish("one_step", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
