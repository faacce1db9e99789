"""Booting and stopping hosts with `systemd-nspawn -b`: systemd is PID 1 on every host.

Flags measured on this machine kind (LAB-NOTES): `--keep-unit --register=no` because
the controller's PID 1 is not systemd; `--network-namespace-path` together with
`--private-network` so the host gets CAP_NET_ADMIN (Keepalived must add VIPs).

Each nspawn starts in a cgroup of its own (`/matrix-lab/<host>` in every hierarchy
systemd uses). Started from the root cgroup, all hosts shared one `/payload` subtree:
their systemd instances created and removed each other's unit cgroups (seen as
`status=219/CGROUP` failures at boot), and stopping a unit on one host could kill the
same unit's processes on every other host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from lab.network import netns

STOP_SECONDS = 20


CGROUP_FOLDER = "matrix-lab"


def cgroup_roots() -> list[Path]:
    """Mount points of the cgroup hierarchies systemd tracks units in (v2, and v1 name=systemd)."""
    roots = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        fstype, options = fields[separator + 1], fields[separator + 3]
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
            roots.append(Path(fields[4]))
    return roots


def _join_cgroups(folders: list[Path]) -> None:
    """Runs in the child before exec: move it into the host's own cgroups."""
    for folder in folders:
        (folder / "cgroup.procs").write_text("0")


def lab_cgroups() -> list[Path]:
    """The lab's cgroup folders that exist, one per hierarchy."""
    return [root / CGROUP_FOLDER for root in cgroup_roots() if (root / CGROUP_FOLDER).exists()]


def remove_cgroups(timeout: float = 15) -> None:
    """Remove the lab's cgroups, deepest first, killing what is left in them.

    A host's services can still be exiting when its nspawn is gone (seen: patroni and
    postgres of one host): their cgroup is busy for a moment, so removal is retried
    until every folder is gone or `timeout` passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        for top in lab_cgroups():
            for procs in top.rglob("cgroup.procs"):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            folders = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for folder in [*folders, top]:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        if not lab_cgroups() or time.monotonic() > deadline:
            return
        time.sleep(0.2)


# A lightweight host (fan-out benchmarks): sshd alone under nspawn's stub init, no systemd.
SSHD_ONLY = ["/bin/sh", "-c", "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e"]


def boot(host: str, root: Path, log: Path, light: bool = False) -> None:
    """Start the host's systemd (or, `light`, sshd alone) in the background.

    A host that reboots (`systemctl reboot`) makes nspawn exit with status 133; the
    supervisor starts it again, as systemd-nspawn@.service does (RestartForceExitStatus=133),
    so rolling reboots run in the lab as on real servers. A poweroff or a signal ends it.
    """
    folders = [cgroup_root / CGROUP_FOLDER / host for cgroup_root in cgroup_roots()]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    args = [
        "systemd-nspawn",
        "--quiet",
        "--as-pid2" if light else "--boot",
        "--keep-unit",
        "--register=no",
        f"--directory={root}",
        f"--machine={host}",
        f"--hostname={host}",
        f"--network-namespace-path=/run/netns/{netns(host)}",
        "--private-network",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",
        *(SSHD_ONLY if light else []),
    ]
    supervisor = ["sh", "-c", 'while "$@"; [ $? -eq 133 ]; do :; done', "nspawn-supervisor", *args]
    with log.open("ab") as out:
        subprocess.Popen(
            supervisor,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: _join_cgroups(folders),
        )


def nspawn_pids(state: Path) -> dict[int, str]:
    """Every running systemd-nspawn whose root is under `state`: {pid: root}."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"systemd-nspawn"):
            for arg in argv:
                if arg.startswith(b"--directory=") and arg[12:].decode().startswith(f"{state}/"):
                    found[int(proc.name)] = arg[12:].decode()
    return found


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().split(") ")[1].startswith("Z"))


def stop(pids: list[int]) -> None:
    """Halt the hosts: SIGTERM to nspawn (a clean poweroff), then SIGKILL after a deadline."""
    inits = {pid: _children(pid) for pid in pids}
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            for child in inits[pid]:
                _signal(child, signal.SIGKILL)
            _signal(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
