"""Benchmark fan-out: one representative step on 10, 50 and 100 lightweight lab hosts.

    python bench/fanout.py [--sizes 10 50 100]
    python bench/fanout.py --inventory inventory/ [--config config.yaml] [--sizes 10 50 100]

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

This machine cannot show how the step scales on servers with CPUs of their own: here 100
hosts and the controller share two cores and the step is CPU-bound at every size. With
`--inventory`, the same step runs on the first 10, 50, 100 servers of an inventory (the
validated settings, as a runbook loads them); it writes and then removes
/etc/matrix-bench/ on them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nornir.core import Nornir
from nornir.core.task import Result, Task

from bench.figures import cpu_seconds, publish
from core.connection import CONNECTION
from core.errors import HostError, InputError
from core.settings import Settings, load_settings
from lab import LAB_CONFIG, LAB_INVENTORY, rootfs
from lab.lab import STATE, Lab, LabHost, lab_hosts
from runbooks.offline import REPO
from runbooks.shell import inventory_nornir, make_nornir
from tasks.facts import read_ahead
from tasks.files import FileSpec, put_files, render
from tasks.registry import CATALOG
from tasks.remote import Mode, run

FIRST = IPv4Address("198.18.4.1")
FOLDER = "/etc/matrix-bench"  # the benchmark's own, removed after each size
CONFIG = f"{FOLDER}/fanout.conf"


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


def timed_runs(nr: Nornir, revision: int) -> dict:
    """The step three times on one Nornir, as a runbook runs its steps: the first connects.

    The benchmark's file is removed at the end: on an operator's servers it is a stranger.
    """
    try:
        return {
            "first_step_connecting": timed_step(nr, revision),
            "step_changing": timed_step(nr, revision + 1),
            "step_noop": timed_step(nr, revision + 1),
        }
    finally:
        removed = nr.run(task=lambda task: run(task, f"rm -rf {FOLDER}"))
        if removed.failed:
            print(f"could not remove {FOLDER} from {', '.join(removed.failed_hosts)}", file=sys.stderr)
        nr.close_connections()


def on_lab_hosts(sizes: list[int], revision: int) -> dict[str, object]:
    """Each size on its own set of fresh lightweight lab hosts (the main lab is taken down first)."""
    settings, _ = load_settings(LAB_CONFIG, LAB_INVENTORY, catalog=CATALOG, allow_placeholders=True)
    Lab(lab_hosts(settings)).down()
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for count in sizes:
            hosts = light_hosts(count)
            lab = Lab(hosts, light=True)
            try:
                up = lab.up()
                nr = nornir(inventory(Path(scratch) / str(count), hosts), count)
                figures[str(count)] = {"lab_up_seconds": round(up.seconds, 2)} | timed_runs(nr, revision)
            finally:
                lab.down()
            print(f"{count} hosts: {json.dumps(figures[str(count)])}", flush=True)
    return figures


def on_servers(settings: Settings, sizes: list[int], revision: int) -> dict[str, object]:
    """Each size on the first servers of the operator's inventory, which brings its own CPUs."""
    names = list(settings.hosts)
    figures: dict[str, object] = {}
    for count in sizes:
        chosen = set(names[:count])
        nr = make_nornir(settings, Mode.APPLY).filter(filter_func=lambda host, chosen=chosen: host.name in chosen)
        figures[str(count)] = timed_runs(nr, revision)
        print(f"{count} servers: {json.dumps(figures[str(count)])}", flush=True)
    return figures


def servers(config: Path, inventory_dir: Path, sizes: list[int]) -> Settings:
    """The operator's validated settings, with at least as many servers as the largest size; else exit 2."""
    try:
        settings, _ = load_settings(config, inventory_dir, catalog=CATALOG, allow_placeholders=False)
    except InputError as exc:
        problem = str(exc)
    else:
        if len(settings.hosts) >= max(sizes):
            return settings
        problem = (
            f"{inventory_dir / 'hosts.yaml'}: {len(settings.hosts)} servers, but --sizes asks for {max(sizes)}\n"
            f"    fix: sizes up to {len(settings.hosts)} (--sizes 10 {len(settings.hosts)}), or a larger inventory"
        )
    print(f"{problem}\nnothing was run", file=sys.stderr)
    raise SystemExit(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument(
        "--inventory",
        type=Path,
        help="run on the first N servers of this inventory instead of lab hosts (writes and then removes "
        f"{FOLDER} on them)",
    )
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml", help="with --inventory: the site's config")
    args = parser.parse_args()
    if min(args.sizes) < 1:
        parser.error("--sizes: every size must be at least 1")
    revision = int(time.time())  # a new file content on each benchmark run
    if args.inventory:
        figures = on_servers(servers(args.config, args.inventory, args.sizes), args.sizes, revision)
    else:
        figures = on_lab_hosts(args.sizes, revision)
    sizes = [str(n) for n in args.sizes]
    for run_name in ("first_step_connecting", "step_changing", "step_noop"):
        times = [figures[n][run_name]["wall_seconds"] for n in sizes]  # type: ignore[index]
        figures[f"{run_name}_largest_over_smallest"] = round(times[-1] / times[0], 2)
        for share in ("machine", "controller"):  # flat per host: the growth is the shared cores, not the hosts
            figures[f"{run_name}_{share}_cpu_ms_per_host"] = {
                n: round(1000 * figures[n][run_name][f"{share}_cpu_seconds"] / int(n), 1)  # type: ignore[index]
                for n in sizes
            }
    publish("fanout", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
