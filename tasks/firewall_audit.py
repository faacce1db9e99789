"""The firewall matrix, and an audit of it on the running platform.

The matrix says which host may open which port of which other host: SSH and the public
ports from anywhere, a private port only from the hosts of its `clients` groups (the
ports the components declare, `core/ports.py`). The audit reads every host's listening
TCP sockets, then from every host connects to every listening port of every other host
and compares what answered with the matrix: a port open that the matrix closes is a hole,
one closed that it opens breaks a service. UDP is not probed: a silent UDP port looks
the same open or dropped.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from nornir.core.task import AggregatedResult, Result, Task

from core.settings import HostInfo, Settings
from tasks.firewall import declared, reachers
from tasks.remote import Expectation, HostError, run

LISTENING = "ss -Hltn"
PROBE_SECONDS = 2.0
WILDCARDS = ("0.0.0.0", "::", "*")
# Connects to every (address, port) on stdin at once; prints, in order, "open", "refused" or
# "timeout" (no answer: dropped), or the errno's name.
PROBE = r"""
import errno, json, selectors, socket, sys, time
targets = json.load(sys.stdin)
found, waiting = {}, selectors.DefaultSelector()
def verdict(code):
    return "open" if code == 0 else "refused" if code == errno.ECONNREFUSED else errno.errorcode.get(code, str(code))
for index, (address, port) in enumerate(targets):
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    code = sock.connect_ex((address, port))
    if code == errno.EINPROGRESS:
        waiting.register(sock, selectors.EVENT_WRITE, index)
        continue
    found[index] = verdict(code)
    sock.close()
deadline = time.monotonic() + float(sys.argv[1])
while waiting.get_map() and (left := deadline - time.monotonic()) > 0:
    for key, _ in waiting.select(left):
        found[key.data] = verdict(key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
        waiting.unregister(key.fileobj)
        key.fileobj.close()
for key in list(waiting.get_map().values()):
    found[key.data] = "timeout"
    key.fileobj.close()
print(json.dumps([found[index] for index in range(len(targets))]))
"""


def expected(settings: Settings, source: HostInfo, dest: HostInfo, port: int) -> str | None:
    """The service through which the matrix lets `source` open TCP `port` on `dest` (None: closed to it)."""
    for use in declared(settings, dest):
        if use.proto == "tcp" and use.start <= port <= use.end:
            allowed = reachers(settings, dest, use)
            if allowed is None or source.name in {h.name for h in allowed}:
                return use.service
    return None


@dataclass(frozen=True)
class Row:
    """One line of the matrix: a port of the hosts of `hosts`, and who may open it."""

    hosts: str
    port: str
    service: str
    open_to: str


def matrix(settings: Settings) -> list[Row]:
    """The matrix, one row per port of each set of hosts with the same groups."""
    alike: dict[tuple[str, ...], list[HostInfo]] = {}
    for host in settings.hosts.values():
        alike.setdefault(host.groups, []).append(host)
    rows = []
    for hosts in alike.values():
        first = hosts[0]
        for use in declared(settings, first):
            allowed = reachers(settings, first, use)
            if allowed is None:
                who = "anyone"
            else:
                members = sorted({h.name for host in hosts for h in reachers(settings, host, use) or []})
                who = f"{', '.join(use.clients)}: {', '.join(members)}" if members else "this host only"
            where = f"{', '.join(h.name for h in hosts)} [{', '.join(first.groups)}]"
            rows.append(Row(where, f"{use.span}/{use.proto}", use.service, who))
    return rows


def reachable_ports(ss_output: str, host: HostInfo) -> set[int]:
    """The TCP ports another host could reach on `host`'s private address: those listening on it or on every
    address (not loopback-only, not the VIP)."""
    ports = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 4 or ":" not in fields[3]:
            continue
        address, port = fields[3].rsplit(":", 1)
        address = address.strip("[]").split("%")[0]
        if address in WILDCARDS or address == host.private_ip or address == f"::ffff:{host.private_ip}":
            ports.add(int(port))
    return ports


@dataclass(frozen=True)
class Mismatch:
    source: str
    dest: str
    port: int
    answered: str  # what the probe saw
    service: str | None  # the matrix's service opening it; None: the matrix closes it

    def __str__(self) -> str:
        if self.service is None:
            return f"{self.source} → {self.dest}:{self.port}: {self.answered}, but the matrix closes it (a hole)"
        return f"{self.source} → {self.dest}:{self.port} ({self.service}): {self.answered}, but the matrix opens it"


@dataclass(frozen=True)
class Audit:
    probed: int
    opened: int  # connections the firewall let through, as the matrix says
    mismatches: list[Mismatch]
    unreached: list[str]  # hosts that could not be read or could not probe, and why


def compare(
    settings: Settings, listening: dict[str, set[int]], answers: dict[str, list[str]]
) -> tuple[int, int, list[Mismatch]]:
    """From each source's answers (in `targets` order) to the verdicts: probed, opened, mismatches."""
    probed = opened = 0
    mismatches = []
    for source_name, seen in answers.items():
        source = settings.hosts[source_name]
        for (dest, port), answered in zip(targets(settings, source, listening), seen, strict=True):
            probed += 1
            service = expected(settings, source, dest, port)
            through = answered in ("open", "refused")  # a refusal came from the host: the firewall let it in
            if through and service is not None:
                opened += 1
            elif through or service is not None:
                mismatches.append(Mismatch(source.name, dest.name, port, answered, service))
    return probed, opened, mismatches


def targets(settings: Settings, source: HostInfo, listening: dict[str, set[int]]) -> list[tuple[HostInfo, int]]:
    """Every listening port of every other host that was read."""
    return [
        (settings.hosts[name], port)
        for name, ports in sorted(listening.items())
        if name != source.name
        for port in sorted(ports)
    ]


Done = TypeVar("Done")


def on_each(names: Iterable[str], work: Callable[[str], Done]) -> tuple[dict[str, Done], list[str]]:
    """`work` for every host at once (one SSH connection each); what it returned, and the hosts it failed on."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {name: pool.submit(work, name) for name in names}
    done, failed = {}, []
    for name, future in futures.items():
        try:
            done[name] = future.result()
        except (HostError, OSError, EOFError, ValueError) as exc:  # ValueError: an answer that is not JSON
            failed.append(f"{name}: {(str(exc).splitlines() or [type(exc).__name__])[0]}")
    return done, failed


def audit(task: Task, settings: Settings) -> Result:
    """Fact: every listening TCP port of every host, probed from every other host, against the matrix."""

    def listening_on(name: str) -> set[int]:
        out = run(task, LISTENING, host=name, what=Expectation("the listening TCP sockets"), reads_only=True)
        return reachable_ports(out.stdout, settings.hosts[name])

    listening, unread = on_each(settings.hosts, listening_on)

    def probe_from(name: str) -> list[str]:
        wanted = [[dest.private_ip, port] for dest, port in targets(settings, settings.hosts[name], listening)]
        script = f"python3 -c {shlex.quote(PROBE)} {PROBE_SECONDS}"
        out = run(task, script, host=name, stdin=json.dumps(wanted), what=Expectation("the probe's verdicts"))
        return list(json.loads(out.stdout))

    answers, unprobed = on_each(listening, probe_from)
    probed, opened, mismatches = compare(settings, listening, answers)
    return Result(host=task.host, result=Audit(probed, opened, mismatches, unread + unprobed))


def findings(result: AggregatedResult, _settings: Settings) -> list[str]:
    """Gate: a mismatch, or a host not audited, fails the audit."""
    problems = []
    for host in result.values():
        found: Audit = host[0].result
        problems += [str(m) for m in found.mismatches] + [f"not audited: {why}" for why in found.unreached]
    return problems


def audit_report(result: AggregatedResult, _settings: Settings) -> str:
    lines = []
    for host in result.values():
        found: Audit = host[0].result
        lines.append(
            f"{found.probed} connections probed to every listening TCP port: {found.opened} let through as the "
            f"matrix says, {found.probed - found.opened - len(found.mismatches)} dropped as it says, "
            f"{len(found.mismatches)} not as it says"
        )
        lines += [f"  {m}" for m in found.mismatches] + [f"  not audited: {why}" for why in found.unreached]
    return "\n".join(lines)
