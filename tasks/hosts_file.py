"""Deployment step 10: `/etc/hosts` on every server, so nothing depends on DNS.

The homeserver name maps to the HAProxy VIP and every server's service name
(patroni1.internal, …) to its private address, inside a marked block; the gate then
resolves every name on every host.
"""

from __future__ import annotations

import shlex

from nornir.core.task import Result, Task

from core.errors import HostError
from core.settings import Settings
from tasks.blocks import ensure_block
from tasks.files import render
from tasks.remote import Expectation, Mode, mode, run

BLOCK = "hosts"


def expected_names(settings: Settings) -> dict[str, str]:
    """Every name the block defines, with the address it must resolve to."""
    names = {settings.config.homeserver_fqdn: settings.vip}
    for host in settings.hosts.values():
        names[settings.service_name(host)] = host.private_ip
    return names


def hosts_file(task: Task, settings: Settings) -> Result:
    """Ensure the platform's block in /etc/hosts, then check that every name resolves."""
    servers = [
        {"name": h.name, "ip": h.private_ip, "service_name": settings.service_name(h)} for h in settings.hosts.values()
    ]
    body = render(
        task, "hosts/block.j2", vip=settings.vip, homeserver_fqdn=settings.config.homeserver_fqdn, servers=servers
    )
    result = ensure_block(task, "/etc/hosts", BLOCK, body)
    task.run(task=verify_resolution, settings=settings, severity_level=10)
    return result


def wrong_resolutions(getent_output: str, expected: dict[str, str]) -> list[str]:
    """Names that `getent hosts` did not resolve to their expected address."""
    resolved = {}
    for line in getent_output.splitlines():
        address, *names = line.split()
        for name in names:
            resolved.setdefault(name, address)
    return [
        f"{name} → {resolved.get(name, 'not found')} (expected {address})"
        for name, address in expected.items()
        if resolved.get(name) != address
    ]


def verify_resolution(task: Task, settings: Settings, files_only: bool = False) -> Result:
    """Gate: every platform name resolves to its address on this host (`files_only`: from /etc/hosts
    alone, as after the intranet transition when no DNS server may answer)."""
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, result="resolution not checked in this mode")
    expected = expected_names(settings)
    out = run(
        task,
        f"getent {'-s files ' if files_only else ''}hosts " + " ".join(shlex.quote(n) for n in expected),
        ok_codes=(0, 2),
        what=Expectation("every name resolved" + (" from /etc/hosts" if files_only else "")),
    )
    wrong = wrong_resolutions(out.stdout, expected)
    if wrong:
        raise HostError(
            f"{task.host.name}: names resolve wrongly: {'; '.join(wrong)}. Check /etc/nsswitch.conf "
            "(hosts: files first) and entries outside the managed block in /etc/hosts"
        )
    source = " from /etc/hosts alone" if files_only else ""
    return Result(host=task.host, result=f"{len(expected)} names resolve as expected{source}")


def outbound_route(task: Task, settings: Settings) -> Result:
    """Fact for the intranet transition: the host's default route, if any (the platform uses none)."""
    if mode(task) is Mode.PLAN:
        return Result(host=task.host, result="not read in this mode")
    route = run(task, "ip -4 route show default", what=Expectation("the default route, if any")).stdout.strip()
    return Result(host=task.host, result=f"default route: {route.splitlines()[0] if route else 'none'}")
