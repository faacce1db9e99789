"""Preflight: is every server fit to deploy onto? Read-only, one remote command per host.

Checks SSH, sudo and python3 (the command itself runs through them: the root shell that
runs every command is a python3 program started with sudo, and names the fix when either
is missing), the OS release, clock skew against the controller and NTP, free disk, and
that no foreign process holds a port the platform needs. Host names must be unique
across servers: duplicated names are the most common etcd bring-up failure, so the
step's gate compares them.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field

from nornir.core.task import AggregatedResult, Result, Task

from core.errors import HostError
from core.ports import PortUse
from core.settings import Settings
from core.step import Step
from tasks.remote import Expectation, run

SUPPORTED_OS = {("debian", "12"), ("ubuntu", "22.04"), ("ubuntu", "24.04")}

# Whether the kernel counts the clock synchronised, as `timedatectl show -p NTPSynchronized`
# decides it (systemd's ntp_synced: adjtimex answers and its maximum error is under 16 s),
# without it: timedatectl starts systemd-timedated over D-Bus on each host, 0.8 s of CPU
# across the lab's 16 hosts and a quarter second of waiting, on every run.
NTP_SYNCED = """
import ctypes
class Timex(ctypes.Structure):  # struct timex: its first fields, then room for the rest
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("rest", ctypes.c_char * 256)]
timex = Timex()
print("yes" if ctypes.CDLL(None).adjtimex(ctypes.byref(timex)) >= 0 and timex.maxerror < 16000000 else "no")
"""

FACTS_SCRIPT = r"""
echo "hostname=$(hostname)"
. /etc/os-release 2>/dev/null && echo "os=$ID $VERSION_ID"
echo "time=$(date +%s.%N)"
echo "ntp=$(python3 -I -S -c NTP_SYNCED 2>/dev/null || echo unknown)"
echo "disk_free_kb=$(df -Pk / | awk 'NR==2 {print $4}')"
ss -Hlntup 2>/dev/null | awk '{print "listen=" $1 " " $5 " " $7}'
true
""".replace("NTP_SYNCED", shlex.quote(NTP_SYNCED))


@dataclass
class HostFacts:
    hostname: str = ""
    os: tuple[str, str] = ("", "")
    time: float = 0.0
    ntp: str = "unknown"
    disk_free_gb: float = 0.0
    listening: list[tuple[str, int, tuple[str, ...]]] = field(default_factory=list)


def parse_facts(stdout: str) -> HostFacts:
    facts = HostFacts()
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        if key == "hostname":
            facts.hostname = value.strip()
        elif key == "os":
            os_id, _, version = value.partition(" ")
            facts.os = (os_id, version)
        elif key == "time" and value:
            facts.time = float(value)
        elif key == "ntp":
            facts.ntp = value.strip()
        elif key == "disk_free_kb" and value.strip().isdigit():
            facts.disk_free_gb = int(value) / 1024 / 1024
        elif key == "listen":
            proto, _, rest = value.partition(" ")
            local, _, users = rest.partition(" ")
            port = local.rsplit(":", 1)[-1]
            if port.isdigit():
                facts.listening.append((proto, int(port), tuple(re.findall(r'\("([^"]+)"', users))))
    return facts


def problems(facts: HostFacts, *, ports: list[PortUse], skew: float, min_free_gb: float, max_skew: float) -> list[str]:
    """What makes this host unfit, each with the fix."""
    found = []
    if facts.os not in SUPPORTED_OS:
        supported = ", ".join(f"{i} {v}" for i, v in sorted(SUPPORTED_OS))
        found.append(f"OS is '{' '.join(facts.os).strip() or 'unknown'}'; supported: {supported}")
    if abs(skew) > max_skew:
        found.append(
            f"clock differs from the controller's by {skew:+.1f} s (allowed {max_skew:g} s): "
            "enable time sync (systemd-timesyncd or chrony) against your NTP server"
        )
    if facts.disk_free_gb < min_free_gb:
        found.append(
            f"only {facts.disk_free_gb:.1f} GB free on / (need {min_free_gb:g} GB): free space or grow the disk"
        )
    for proto, port, processes in facts.listening:
        for use in ports:
            if use.proto == proto and use.start <= port <= use.end and not set(processes) & set(use.processes):
                owner = ", ".join(processes) or "an unknown process"
                found.append(
                    f"port {port}/{proto}, needed by {use.service}, is held by {owner}: "
                    f"stop that service or move {use.service} ({use.setting})"
                )
    return found


def preflight(task: Task, settings: Settings) -> Result:
    """Check that the host is fit to deploy onto; fail with every reason it is not."""
    before = time.time()
    out = run(
        task,
        FACTS_SCRIPT,
        what=Expectation(
            "host facts",
            "check that the SSH user has passwordless sudo (sudo -n true) and that the host runs "
            "a standard Debian/Ubuntu userland",
        ),
        reads_only=True,
    )
    after = time.time()
    facts = parse_facts(out.stdout)
    host = settings.hosts[task.host.name]
    found = problems(
        facts,
        ports=settings.catalog.host_ports(settings.config, host.groups, host.port),
        skew=facts.time - (before + after) / 2,
        min_free_gb=settings.config.preflight.min_free_disk_gb,
        max_skew=settings.config.preflight.max_clock_skew_seconds,
    )
    if found:
        raise HostError(f"{task.host.name}: not ready:\n" + "\n".join(f"  - {p}" for p in found))
    said = f"{' '.join(facts.os)}, host name {facts.hostname}"
    if facts.ntp == "yes":
        return Result(host=task.host, result=said, hostname=facts.hostname)
    # Shown whether or not the run is verbose (runbooks.display): the clock is within bounds now, but
    # nothing keeps it there; certificates, etcd leases and TOTP-like tokens depend on it.
    warning = f"warning: the clock is not NTP-synchronised (timedatectl: {facts.ntp}); enable a time service"
    return Result(host=task.host, result=f"{said}; {warning}", hostname=facts.hostname, severity_level=logging.WARNING)


def duplicate_hostnames(result: AggregatedResult) -> list[str]:
    """Gate over all hosts: servers reporting the same host name (etcd member names clash)."""
    names = {
        host: multi[0].hostname
        for host, multi in result.items()
        if not multi.failed and getattr(multi[0], "hostname", None)
    }
    counts = Counter(names.values())
    return [
        f"{host}: host name '{name}' is also used by another server; give each server a unique "
        "name (hostnamectl set-hostname)"
        for host, name in names.items()
        if counts[name] > 1
    ]


PREFLIGHT = Step(
    "preflight",
    "SSH, sudo, OS, clock, disk, python3, free ports, unique host names",
    preflight,
    gate=lambda result, _settings: duplicate_hostnames(result),
    live=True,
)
