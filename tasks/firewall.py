"""Each server's firewall: nftables rules generated from the ports the components declare (`Component.ports`).

Public ports (HTTPS, federation, TURN, LiveKit media) are open to everyone; every other
port of the host's groups only to the addresses of the hosts whose groups use it (the
port's `clients`: Synapse's listeners to the HAProxy hosts, the exporters to the
monitoring host, …); the rest is dropped. SSH is
accepted before anything else is decided, and new rules are applied with a timed
rollback that only a fresh SSH login from the controller cancels, so a wrong rule set
undoes itself instead of locking the operator out.

The rules live in their own table (`inet matrix_platform`), replaced atomically, so
tables of other software (Docker on the Synapse host) are left alone. A unit loads the
table at boot; `systemctl stop matrix-firewall` removes it.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from ipaddress import ip_address

from core.ports import PortUse
from core.settings import HostInfo, Settings
from tasks.component import Component
from tasks.declaration import Command, Context, File, Service, Stage, template
from tasks.facts import HostFacts
from tasks.files import jinja
from tasks.systemd import UNIT_DIR

TABLE = "inet matrix_platform"
RULES = "/etc/matrix-platform/firewall.nft"
UNIT = "matrix-firewall.service"
ROLLBACK_UNIT = "matrix-firewall-rollback"
ROLLBACK_SECONDS = 60
PREVIOUS = "/run/matrix-platform/firewall.previous"


def port_set(uses: list[PortUse], proto: str) -> str:
    """`{ 80, 443, 49152-49172 }` for nft, or '' when there is none."""
    spans = sorted({(u.start, u.end) for u in uses if u.proto == proto})
    if not spans:
        return ""
    return "{ " + ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) + " }"


@dataclass(frozen=True)
class Allow:
    """One accept rule: the ports of `services` on `proto`, from the addresses of the hosts of `clients`."""

    services: str
    clients: str
    family: str  # "ip" or "ip6"
    sources: str
    proto: str
    ports: str


def reachers(settings: Settings, host: HostInfo, use: PortUse) -> list[HostInfo] | None:
    """The other hosts that may reach `use` on `host`, those of its client groups; None: anyone (a public port).
    The host itself reaches its own ports over the loopback interface."""
    if use.public:
        return None
    return [h for h in settings.hosts.values() if h.name != host.name and set(h.groups) & set(use.clients)]


def allows(settings: Settings, host: HostInfo, private: list[PortUse]) -> list[Allow]:
    """The host's private ports as accept rules, one per set of client groups, family and protocol."""
    by_clients: dict[tuple[str, ...], list[PortUse]] = {}
    for use in private:
        by_clients.setdefault(tuple(sorted(set(use.clients))), []).append(use)
    rules = []
    for clients, uses in sorted(by_clients.items()):
        addresses = {ip_address(h.private_ip) for h in reachers(settings, host, uses[0]) or []}
        for family, version in (("ip", 4), ("ip6", 6)):
            sources = ", ".join(str(a) for a in sorted(a for a in addresses if a.version == version))
            for proto in ("tcp", "udp"):
                ports = port_set(uses, proto)
                if sources and ports:
                    services = ", ".join(sorted({u.service for u in uses if u.proto == proto}))
                    rules.append(Allow(services, ", ".join(clients), family, sources, proto, ports))
    return rules


def declared(settings: Settings, host: HostInfo) -> list[PortUse]:
    """What `host` listens on, by the declarations of its groups' components (SSH first)."""
    return settings.catalog.host_ports(settings.config, host.groups, host.port)


def ruleset(settings: Settings, host_name: str) -> dict[str, object]:
    """Template data of one host's rules."""
    host = settings.hosts[host_name]
    uses = [u for u in declared(settings, host) if u.service != "ssh"]
    public = [u for u in uses if u.public]
    vrrp_peers = [h.private_ip for h in settings.members("haproxy") if h.name != host_name]
    return {
        "ssh_port": host.port,
        "public_tcp": port_set(public, "tcp"),
        "public_udp": port_set(public, "udp"),
        "private": allows(settings, host, [u for u in uses if not u.public]),
        "vrrp_peers": ", ".join(vrrp_peers) if "haproxy" in host.groups else "",
    }


def live_digest_script() -> str:
    return f"nft list table {TABLE} 2>/dev/null | sed -n 's/^[[:space:]]*comment \"\\([0-9a-f]*\\)\".*/\\1/p'; true"


def apply_script(rules: str, rollback_seconds: int) -> str:
    """Save the live table, arm a rollback to it, then load `rules`.

    The saved table is listed numerically (`ICMPv6` as 58): a host without
    /etc/protocols cannot read protocol names back. Should the old table not load, the
    rollback removes the table rather than leave the host unreachable.
    """
    rollback = shlex.quote(ROLLBACK_UNIT)
    return (
        "set -e; mkdir -p /run/matrix-platform; "
        f"{{ echo 'table {TABLE}'; echo 'delete table {TABLE}'; "
        f"nft --numeric list table {TABLE} 2>/dev/null || true; }} > {PREVIOUS}; "
        f"systemctl stop {rollback}.timer 2>/dev/null || true; systemctl reset-failed {rollback}.service "
        "2>/dev/null || true; "
        # AccuracySec: a timer may otherwise fire up to a minute late.
        f"systemd-run --quiet --unit={rollback} --on-active={rollback_seconds} --timer-property=AccuracySec=1s "
        "/bin/sh -c "
        f"'nft -f {PREVIOUS} || nft delete table {TABLE}'; "
        f"nft -f {shlex.quote(rules)}"
    )


def rules(context: Context) -> tuple[str, str]:
    """The host's rules file and its digest: the digest is in the table's comment, so the live table names its rules."""
    body = (
        jinja()
        .get_template("firewall/rules.nft.j2")
        .render(host_name=context.host.name, **ruleset(context.settings, context.host.name))
    )
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return body.replace("@DIGEST@", digest), digest


def load(context: Context, facts: HostFacts | None, _written: frozenset[str]) -> list[Command]:
    """Load the rules when the live table is not them: with a timed rollback, kept only after a fresh SSH login."""
    if facts is None:
        return []
    live = facts.commands["live"].strip()  # loading the table is the only thing that changes it
    digest = rules(context)[1]
    if live == digest:
        return []
    return [
        Command(
            apply_script(RULES, ROLLBACK_SECONDS),
            f"table {TABLE}: {'rules ' + live if live else 'not loaded'} → rules {digest}",
            "the new rules loaded with a rollback armed",
            f"run `nft -c -f {RULES}` on the host",
            stage=Stage.BEFORE_UNITS,  # the unit's start loads the rules too, without the rollback
            name=f"nft -f {RULES} with a rollback to the live table in {ROLLBACK_SECONDS} s",
            confirm=f"systemctl stop {ROLLBACK_UNIT}.timer",
            unconfirmed=(
                "no new SSH login after loading the firewall rules ({error}); the previous rules come back "
                f"within {ROLLBACK_SECONDS}s — check the SSH port in the inventory"
            ),
        )
    ]


FIREWALL = Component(
    "firewall",
    groups=None,
    per_host=True,  # its rules on a host are all that host's later steps need of it
    summary="nftables on every server: public ports open, each internal port to the groups that use it, rest dropped",
    packages=("nftables",),
    autostart=True,
    files=(
        File(
            f"{UNIT_DIR}/{UNIT}",
            template("firewall/matrix-firewall.service.j2", lambda _: {"rules": RULES, "table": TABLE}),
        ),
        File(RULES, lambda c: rules(c)[0], mode=0o600, check="nft -c -f {path}"),
    ),
    services=(Service(UNIT, restart_on=()),),  # loading new rules is the behaviour's, with its rollback
    reads={"live": live_digest_script()},
    behaviour=load,
)
