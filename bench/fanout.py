"""Benchmark fan-out: one representative step on 10, 50 and 100 lightweight lab hosts.

    python bench/fanout.py [--sizes 10 50 100]

Lightweight hosts are lab hosts that run sshd alone (no systemd), in 198.18.4.0/24. The
step is shaped like a deploy component, through the framework's own connection plugin and
tasks: render a config from a template, read the host's state ahead in one command (the
file's owner, mode and checksum, and whether the service, sshd, runs), converge the file
(a second command only when it differs) and fail if the service is not running. At each
size the step runs three times on one set of connections, as a runbook's steps do, with a
thread per host: the first opens the connections (SSH and the host's root shell) and
writes the file, the second changes it, the third changes nothing. Each run reports its
wall time and the CPU seconds of the controller and of the whole machine — the lab hosts
share this machine's cores with the controller, so their work grows with the host count
here, where on real servers each host brings its own.

Takes the lab down first (its hosts share the lab's network and state) and leaves it
down. Prints the figures, writes bench/results/fanout.json. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nornir.core import Nornir
from nornir.core.task import Result, Task

from core.connection import CONNECTION
from core.errors import HostError
from core.runbook import REPO, inventory_nornir
from core.settings import load_settings
from lab import LAB_CONFIG, LAB_INVENTORY, rootfs
from lab.lab import STATE, Lab, LabHost, lab_hosts
from tasks.facts import read_ahead
from tasks.files import FileSpec, put_files, render

FIRST = IPv4Address("198.18.4.1")
CONFIG = "/etc/matrix-bench/fanout.conf"


def light_hosts(count: int) -> list[LabHost]:
    return [LabHost(f"fan{n:03}", FIRST + n) for n in range(count)]


def inventory(folder: Path, hosts: list[LabHost]) -> Path:
    """A Nornir inventory of `hosts`, with the lab's login user, key and known_hosts."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = {h.name: {"hostname": str(h.address), "groups": ["fanout"]} for h in hosts}
    (folder / "hosts.yaml").write_text(yaml.safe_dump(entries))
    (folder / "groups.yaml").write_text(yaml.safe_dump({"fanout": {}}))
    extras = {"key_filename": str(STATE / "ssh" / "id_ed25519"), "known_hosts": str(STATE / "ssh" / "known_hosts")}
    defaults = {"username": rootfs.LAB_USER, "port": 22, "connection_options": {CONNECTION: {"extras": extras}}}
    (folder / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    return folder


def nornir(folder: Path, count: int) -> Nornir:
    return inventory_nornir(folder, count, {"mode": "apply", "connect_timeout": 10})


def representative_step(task: Task, revision: int) -> Result:
    """Render and converge one config file and check a service, as a deploy component does."""
    text = render(task, "bench/fanout.conf.j2", server=task.host.name, address=task.host.hostname, revision=revision)
    state = read_ahead(task, files=[CONFIG], commands={"sshd": "pgrep -x sshd"})
    written = task.run(task=put_files, specs=[FileSpec(CONFIG, text)], severity_level=10)[0]
    if not state["sshd"].strip():
        raise HostError(f"{task.host.name}: sshd is not running (pgrep -x sshd found no process)")
    return Result(host=task.host, changed=written.changed)


def cpu_seconds() -> tuple[float, float]:
    """(this controller process, the whole machine) CPU seconds so far: the lab hosts run on this machine."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/stat") as stat:
        ticks = sum(int(field) for field in stat.readline().split()[1:4])
    return own.ru_utime + own.ru_stime, ticks / os.sysconf("SC_CLK_TCK")


def timed_step(nr: Nornir, revision: int) -> dict:
    before = [len(h.connections[CONNECTION].log) for h in nr.inventory.hosts.values() if CONNECTION in h.connections]
    (own, machine), started = cpu_seconds(), time.monotonic()
    result = nr.run(task=representative_step, revision=revision)
    wall = time.monotonic() - started
    own_after, machine_after = cpu_seconds()
    if result.failed:
        failed = {name: str(r.exception) for name, r in result.failed_hosts.items()}
        raise SystemExit(f"fan-out run on {len(nr.inventory.hosts)} hosts failed: {failed}")
    after = [len(h.connections[CONNECTION].log) for h in nr.inventory.hosts.values()]
    return {
        "wall_seconds": round(wall, 2),
        "controller_cpu_seconds": round(own_after - own, 2),
        "machine_cpu_seconds": round(machine_after - machine, 2),
        "changed_hosts": sum(1 for r in result.values() if r.changed),
        "remote_commands_per_host": max(a - b for a, b in zip(after, before or [0] * len(after), strict=True)),
    }


def timed_runs(folder: Path, count: int, revision: int) -> dict:
    """The step three times on one Nornir, as a runbook runs its steps: the first connects."""
    nr = nornir(folder, count)
    try:
        return {
            "first_step_connecting": timed_step(nr, revision),
            "step_changing": timed_step(nr, revision + 1),
            "step_noop": timed_step(nr, revision + 1),
        }
    finally:
        nr.close_connections()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    args = parser.parse_args()
    settings, _ = load_settings(LAB_CONFIG, LAB_INVENTORY, allow_placeholders=True)
    Lab(lab_hosts(settings)).down()
    figures: dict[str, object] = {}
    revision = int(time.time())  # a new file content on each benchmark run
    with tempfile.TemporaryDirectory() as scratch:
        for count in args.sizes:
            hosts = light_hosts(count)
            lab = Lab(hosts, light=True)
            try:
                up = lab.up()
                folder = inventory(Path(scratch) / str(count), hosts)
                figures[str(count)] = {"lab_up_seconds": round(up.seconds, 2)} | timed_runs(folder, count, revision)
            finally:
                lab.down()
            print(f"{count} hosts: {json.dumps(figures[str(count)])}", flush=True)
    sizes = [str(n) for n in args.sizes]
    for run_name in ("first_step_connecting", "step_changing", "step_noop"):
        times = [figures[n][run_name]["wall_seconds"] for n in sizes]  # type: ignore[index]
        figures[f"{run_name}_largest_over_smallest"] = round(times[-1] / times[0], 2)
    print(json.dumps(figures, indent=2))
    out = REPO / "bench" / "results" / "fanout.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
