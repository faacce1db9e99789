"""Deployment step 10: `/etc/hosts` on every server, so nothing depends on DNS.

The homeserver name maps to the HAProxy VIP and every server's service name
(patroni1.internal, …) to its private address, inside a marked block; the gate then
resolves every name on every host. The base domain (the Matrix server name) maps to the
VIP too: in the intranet phase nothing else serves its /.well-known/matrix/ files, which
is how a client or server that knows only the user IDs finds the homeserver.
"""

from __future__ import annotations

import shlex

from nornir.core.task import Result, Task

from core.errors import HostError
from core.settings import Settings
from tasks.component import Component
from tasks.declaration import Block, Context, Verify, template
from tasks.remote import Expectation, run

BLOCK = "hosts"


def expected_names(settings: Settings) -> dict[str, str]:
    """Every name the block defines, with the address it must resolve to."""
    names = {settings.config.homeserver_fqdn: settings.vip, settings.config.domain: settings.vip}
    for host in settings.hosts.values():
        names[settings.service_name(host)] = host.private_ip
    return names


def block(context: Context) -> dict[str, object]:
    """The block's lines: the homeserver name and base domain on the VIP, every server's service name."""
    settings, config = context.settings, context.settings.config
    servers = [
        {"name": h.name, "ip": h.private_ip, "service_name": settings.service_name(h)} for h in settings.hosts.values()
    ]
    return {
        "vip": settings.vip,
        "homeserver_fqdn": config.homeserver_fqdn,
        "base_domain": config.domain if config.domain != config.homeserver_fqdn else "",
        "servers": servers,
    }


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
    expected = expected_names(settings)
    out = run(
        task,
        f"getent {'-s files ' if files_only else ''}hosts " + " ".join(shlex.quote(n) for n in expected),
        ok_codes=(0, 2),
        what=Expectation("every name resolved" + (" from /etc/hosts" if files_only else "")),
        reads_only=True,
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
    route = run(
        task, "ip -4 route show default", what=Expectation("the default route, if any"), reads_only=True
    ).stdout.strip()
    return Result(host=task.host, result=f"default route: {route.splitlines()[0] if route else 'none'}")


# What on a host would reach beyond the intranet: the active time-sync daemon's servers
# that /etc/hosts cannot resolve (addresses pass), and Synapse settings that call out.
OUTSIDE = r"""
servers=""
if systemctl is-active -q systemd-timesyncd 2>/dev/null; then
  echo "ntp timesyncd"
  servers=$(timedatectl show-timesync -p SystemNTPServers --value 2>/dev/null)
  [ -n "$servers" ] || servers=$(timedatectl show-timesync -p FallbackNTPServers --value 2>/dev/null)
elif systemctl is-active -q chrony 2>/dev/null; then
  echo "ntp chrony"
  servers=$(cat /etc/chrony/chrony.conf /etc/chrony/sources.d/*.sources 2>/dev/null |
            awk '$1 == "server" || $1 == "pool" {print $2}')
fi
for server in $servers; do
  case $server in
    *[!0-9.:]*) getent -s files hosts "$server" >/dev/null && echo "server $server" || echo "unresolved $server" ;;
    *) echo "server $server" ;;
  esac
done
for f in /etc/synapse/homeserver.yaml /matrix/synapse/config/homeserver.yaml; do
  [ -r "$f" ] && grep -E '^(trusted_key_servers|report_stats|url_preview_enabled):' "$f" | sed 's/^/synapse /'
done
true
"""
SYNAPSE_OFFLINE = {"trusted_key_servers": "[]", "report_stats": "false", "url_preview_enabled": "false"}


def outside_problems(stdout: str) -> tuple[str, list[str]]:
    """The time source found and what needs the internet, from OUTSIDE's output."""
    daemon, servers, problems = "", [], []
    for line in stdout.splitlines():
        kind, _, value = line.partition(" ")
        if kind == "ntp":
            daemon = value
        elif kind == "server":
            servers.append(value)
        elif kind == "unresolved":
            problems.append(
                f"{daemon} asks {value} for the time, a name /etc/hosts does not resolve: point it at the "
                "intranet's time server (NTP= in /etc/systemd/timesyncd.conf, or chrony's server lines)"
            )
        elif kind == "synapse":
            key, _, setting = value.partition(":")
            if setting.strip() != SYNAPSE_OFFLINE[key]:
                problems.append(f"Synapse's {key} is {setting.strip()}: it calls out; set it to {SYNAPSE_OFFLINE[key]}")
    source = f"time from {', '.join(servers)} ({daemon})" if servers else f"time: {daemon or 'no time-sync daemon'}"
    return source, problems


def outside_dependencies(task: Task, settings: Settings) -> Result:
    """Fact and check for the intranet transition: nothing on the host needs the internet."""
    out = run(task, OUTSIDE, what=Expectation("the time source and Synapse's outbound settings"), reads_only=True)
    source, problems = outside_problems(out.stdout)
    if problems:
        raise HostError(f"{task.host.name}: needs the internet: {'; '.join(problems)}")
    return Result(host=task.host, result=f"nothing needs the internet; {source}")


HOSTS_FILE = Component(
    "hosts-file",
    groups=None,
    per_host=True,  # a host's /etc/hosts is all that host's later steps need of it
    summary="/etc/hosts maps the homeserver name to the VIP and every service name",
    blocks=(Block("/etc/hosts", BLOCK, template("hosts/block.j2", block)),),
    ready=(Verify(verify_resolution),),
)
