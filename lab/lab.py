"""Bringing the whole lab up, down, and reporting on it.

`up` is idempotent: the base is cached, running hosts are left alone, and only what is
missing is created. `down` finds what to remove by the lab's naming conventions (not
by a record of what `up` did), so it also cleans up after a crash or an interrupted
`up`; the base, the apt cache and the controller's lab key are kept for the next `up`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address
from pathlib import Path

from core.settings import Settings
from lab import machines, network, proxy, rootfs
from lab.shell import LabError, sh

STATE = Path("/var/lib/matrix-lab")
BOOT_TIMEOUT = 120


@dataclass(frozen=True)
class LabHost:
    name: str
    address: IPv4Address


@dataclass
class UpReport:
    """What `up` did and how long it took (the lab benchmark reads these)."""

    base_built: bool = False
    base_seconds: float = 0.0
    booted: list[str] = field(default_factory=list)
    seconds: float = 0.0
    states: dict[str, str] = field(default_factory=dict)


def lab_hosts(settings: Settings) -> list[LabHost]:
    """The inventory's hosts, refused unless every address (and the VIP) is in the lab network."""
    outside = [f"{h.name} ({h.address})" for h in settings.hosts.values() if not _in_lab(h.address)]
    if not _in_lab(settings.vip):
        outside.append(f"the VIP ({settings.vip})")
    if outside:
        raise LabError(
            f"{settings.inventory_dir}: lab addresses must be in {network.LAB_NETWORK}, "
            f"these are not: {', '.join(outside)}"
        )
    return [LabHost(h.name, IPv4Address(h.address)) for h in settings.hosts.values()]


def _in_lab(address: str) -> bool:
    try:
        return ip_address(address) in network.LAB_NETWORK
    except ValueError:
        return False


class Lab:
    """The lab's hosts; `light` ones run sshd alone (fan-out benchmarks), the others systemd."""

    def __init__(self, hosts: list[LabHost], state: Path = STATE, light: bool = False) -> None:
        self.hosts = hosts
        self.state = state
        self.light = light
        self.key = state / "ssh" / "id_ed25519"
        self.known_hosts = state / "ssh" / "known_hosts"

    def _host_dir(self, host: str) -> Path:
        return self.state / "hosts" / host

    def up(self) -> UpReport:
        """Build what is missing and boot every host; returns once all are up and SSH answers."""
        _require_root()
        report = UpReport()
        started = time.monotonic()
        self.state.mkdir(parents=True, exist_ok=True)
        if not rootfs.base_current(self.state) and machines.nspawn_pids(self.state):
            self.down()  # hosts must not run on a base that is about to be replaced
        base, report.base_built = rootfs.ensure_base(self.state)
        report.base_seconds = time.monotonic() - started
        public_key = self._controller_key()
        network.ensure_bridge()
        proxy.start(self.state)
        running = {root: pid for pid, root in machines.nspawn_pids(self.state).items()}
        host_keys = {}
        for host in self.hosts:
            network.ensure_host(host.name, host.address)
            root = rootfs.mount_overlay(base, self._host_dir(host.name))
            if str(root) in running:  # what the deploy made there (its /etc/hosts block) stays as it is
                host_keys[host.name] = rootfs.host_key(root)
                continue
            host_keys[host.name] = rootfs.personalise(root, host.name, public_key)
            machines.boot(host.name, root, self._host_dir(host.name) / "console.log", light=self.light)
            report.booted.append(host.name)
        self.known_hosts.write_text("".join(f"{h.address} ssh-ed25519 {host_keys[h.name]}\n" for h in self.hosts))
        with ThreadPoolExecutor(max_workers=max(1, len(self.hosts))) as pool:
            states = pool.map(self._wait_ready, self.hosts)
            report.states = {host.name: state for host, state in zip(self.hosts, states, strict=True)}
        report.seconds = time.monotonic() - started
        return report

    def _controller_key(self) -> str:
        if not self.key.exists():
            self.key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "matrix-lab controller", "-f", str(self.key)])
        return self.key.with_suffix(".pub").read_text()

    def ssh_args(self, host: LabHost) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.key),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=3",
            f"{rootfs.LAB_USER}@{host.address}",
        ]

    def _wait_ready(self, host: LabHost) -> str:
        """Wait for SSH, then for systemd to finish booting; returns the system state ("running" for a light host)."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            done = subprocess.run(
                [*self.ssh_args(host), "echo running" if self.light else "systemctl is-system-running --wait"],
                capture_output=True,
                text=True,
                timeout=BOOT_TIMEOUT,
            )
            state = done.stdout.strip()
            if state in ("running", "degraded"):
                if state == "degraded":
                    failed = subprocess.run(
                        [*self.ssh_args(host), "systemctl --failed --plain --no-legend"],
                        capture_output=True,
                        text=True,
                        timeout=30,
                    ).stdout
                    state += f" ({' '.join(line.split()[0] for line in failed.splitlines() if line.strip())})"
                return state
            last = (done.stderr or state).strip()
            time.sleep(0.5)
        raise LabError(
            f"{host.name} ({host.address}) did not come up within {BOOT_TIMEOUT} s: {last}; "
            f"see {self._host_dir(host.name) / 'console.log'}"
        )

    def down(self) -> None:
        """Remove every namespace, mount, veth, process and overlay of the lab."""
        _require_root()
        machines.stop(list(machines.nspawn_pids(self.state)))
        machines.remove_cgroups()
        hosts_dir = self.state / "hosts"
        rootfs.unmount_all(hosts_dir)
        network.remove_all()
        proxy.stop(self.state)
        shutil.rmtree(hosts_dir, ignore_errors=True)
        if self.known_hosts.exists():
            self.known_hosts.unlink()

    def leftovers(self) -> list[str]:
        """Everything of the lab that still exists after `down` (expected: nothing)."""
        found = network.leftovers()
        found += [f"mount {m}" for m in rootfs.mounts_under(self.state / "hosts")]
        found += [f"process systemd-nspawn {pid} ({root})" for pid, root in machines.nspawn_pids(self.state).items()]
        found += [f"cgroup {path}" for path in machines.lab_cgroups()]
        if proxy.running(self.state):
            found.append("process lab.proxy (the apt proxy)")
        if (self.state / "hosts").exists():
            found.append(f"folder {self.state / 'hosts'}")
        return found

    def status(self) -> dict[str, str]:
        """Each host's state: not created, stopped, or what systemd says."""
        running = {root: pid for pid, root in machines.nspawn_pids(self.state).items()}
        namespaces = set(network.namespaces())
        out = {}
        for host in self.hosts:
            root = str(self._host_dir(host.name) / "root")
            if network.netns(host.name) not in namespaces:
                out[host.name] = "not created"
            elif root not in running:
                out[host.name] = "stopped"
            else:
                done = subprocess.run(
                    [*self.ssh_args(host), "systemctl is-system-running"], capture_output=True, text=True, timeout=30
                )
                out[host.name] = done.stdout.strip() or f"no SSH ({done.stderr.strip()[-80:]})"
        return out

    def all_running(self) -> bool:
        running = {root for root in machines.nspawn_pids(self.state).values()}
        return all(str(self._host_dir(h.name) / "root") in running for h in self.hosts) and proxy.answering()


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (namespaces, mounts, systemd-nspawn): run it as root")
