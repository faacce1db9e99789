"""Checks that span several keys or files: group sizes, addresses, ports, ranges.

Each check returns problems instead of raising, so the operator sees all of them at once.
"""

from __future__ import annotations

from collections import defaultdict
from ipaddress import ip_address
from typing import TYPE_CHECKING

from core.catalog import Catalog
from core.errors import InputProblem
from core.ports import clashes
from core.sizing import SCALE_CCU, for_config

if TYPE_CHECKING:
    from core.settings import Parsed
    from core.yamlsource import YamlDoc


def check(parsed: Parsed, catalog: Catalog) -> list[InputProblem]:
    """Every problem the checks find; `catalog` holds the groups and ports the components declare."""
    return [
        *_group_names(parsed, catalog),
        *_group_sizes(parsed, catalog),
        *_addresses(parsed),
        *_ports(parsed, catalog),
        *_admin_path(parsed),
        *_port_ranges(parsed),
        *_connections(parsed),
    ]


def _group_names(parsed: Parsed, catalog: Catalog) -> list[InputProblem]:
    known = ", ".join(catalog.groups)
    problems = [
        parsed.docs["groups.yaml"].problem((name,), f"unknown group '{name}'", f"use the platform's groups: {known}")
        for name in parsed.groups
        if name not in catalog.groups
    ]
    for name, host in parsed.hosts.items():
        for index, group in enumerate(host.groups):
            if group not in catalog.groups:
                problems.append(
                    parsed.host_problem(name, ("groups", index), f"unknown group '{group}'", f"use one of: {known}")
                )
            elif group not in parsed.groups:
                problems.append(
                    parsed.host_problem(
                        name,
                        ("groups", index),
                        f"group '{group}' is not in groups.yaml",
                        f"add '{group}: {{}}' to {parsed.docs['groups.yaml'].label}",
                    )
                )
    return problems


def _group_sizes(parsed: Parsed, catalog: Catalog) -> list[InputProblem]:
    members: dict[str, list[str]] = defaultdict(list)
    for name, host in parsed.hosts.items():
        for group in host.groups:
            members[group].append(name)
    hosts_doc = parsed.docs["hosts.yaml"]
    problems = []
    for group, rule in catalog.groups.items():
        count = len(members[group])
        if not rule.enabled(parsed.config):
            continue
        where = f"({', '.join(members[group]) or 'none'})"
        if count < rule.fewest:
            off = f", or set {rule.switch}: false in config.yaml" if rule.switch else ""
            problems.append(
                InputProblem(
                    hosts_doc.label,
                    f"group {group}",
                    f"has {count} host(s) {where}; at least {rule.fewest} are needed for high availability",
                    f"add hosts with '{group}' in their groups{off}",
                )
            )
        elif rule.most is not None and count > rule.most:
            problems.append(
                InputProblem(
                    hosts_doc.label,
                    f"group {group}",
                    f"has {count} hosts {where}; the platform supports {rule.most}",
                    f"keep '{group}' on {rule.most} host(s)",
                )
            )
        elif rule.odd and count % 2 == 0:
            problems.append(
                InputProblem(
                    hosts_doc.label,
                    f"group {group}",
                    f"has {count} hosts, and {rule.odd}: an even count adds no fault tolerance",
                    f"use an odd number of {group} hosts (3 or 5)",
                )
            )
    return problems


def _addresses(parsed: Parsed) -> list[InputProblem]:
    problems = []
    owners: dict[str, list[str]] = defaultdict(list)
    networks = parsed.defaults.data.private_networks
    for name, host in parsed.hosts.items():
        private = host.data.private_ip
        if private is None:
            try:
                private = ip_address(host.hostname)
            except ValueError:
                problems.append(
                    parsed.host_problem(
                        name,
                        ("data", "private_ip"),
                        f"hostname '{host.hostname}' is a DNS name and no private_ip is set",
                        "add data: {private_ip: <the host's private address>}",
                    )
                )
                continue
        owners[str(private)].append(name)
        if host.hostname != str(private):
            owners[host.hostname].append(name)
        if not any(private in net for net in networks if net.version == private.version):
            nets = ", ".join(map(str, networks))
            problems.append(
                parsed.host_problem(
                    name,
                    ("data", "private_ip") if host.data.private_ip else ("hostname",),
                    f"{private} is outside the private networks ({nets})",
                    "correct the address, or add its network to private_networks in defaults.yaml",
                )
            )
    for address, names in owners.items():
        if len(set(names)) > 1:
            problems.append(
                parsed.host_problem(
                    names[1],
                    ("hostname",),
                    f"address {address} is also used by {names[0]}",
                    "give every host its own address",
                )
            )
    vip = str(parsed.defaults.data.vip)
    if vip in owners:
        problems.append(
            parsed.docs["defaults.yaml"].problem(
                ("data", "vip"),
                f"the VIP {vip} is the address of {owners[vip][0]}",
                "choose a free address for the VIP",
            )
        )
    address = parsed.defaults.data.vip
    if not any(address in net for net in networks if net.version == address.version):
        problems.append(
            parsed.docs["defaults.yaml"].problem(
                ("data", "vip"),
                f"the VIP {vip} is outside the private networks ({', '.join(map(str, networks))}): "
                "Keepalived moves it between the haproxy hosts on their shared network",
                "choose a free address on the haproxy hosts' network, or add its network to private_networks",
            )
        )
    return problems


def _ports(parsed: Parsed, catalog: Catalog) -> list[InputProblem]:
    problems = []
    defaults_port = parsed.defaults.port
    for name, host in parsed.hosts.items():
        uses = catalog.host_ports(parsed.config, host.groups, host.port or defaults_port)
        for first, second in clashes(uses):
            problems.append(
                parsed.host_problem(
                    name,
                    ("groups",),
                    f"{first.label()} and {second.label()} would listen on the same port",
                    f"move one of them ({first.setting}; {second.setting}) or put the services on different hosts",
                )
            )
    return problems


def _admin_path(parsed: Parsed) -> list[InputProblem]:
    path = parsed.config.synapse.admin_path
    if path == "/" or (path.startswith("/") and not path.endswith("/") and " " not in path):
        return []
    doc = parsed.docs["config.yaml"]
    return [
        doc.problem(
            ("synapse", "admin_path"),
            f"'{path}' is not '/' and does not have the form /name",
            f"use '/' or a path without a trailing slash, e.g. '{'/' + path.strip('/ ')}'",
        )
    ]


def _reversed_range(doc: YamlDoc, section: str, low_key: str, high_key: str, low: int, high: int) -> list[InputProblem]:
    if low <= high:
        return []
    return [
        doc.problem(
            (section, low_key), f"{low} is above {high_key} {high}", f"make {low_key} the lower end of the range"
        )
    ]


def _port_ranges(parsed: Parsed) -> list[InputProblem]:
    config, doc = parsed.config, parsed.docs["config.yaml"]
    turn, lk = config.turn, config.livekit
    problems = _reversed_range(
        doc, "turn", "relay_min_port", "relay_max_port", turn.relay_min_port, turn.relay_max_port
    )
    problems += _reversed_range(doc, "livekit", "rtc_min_port", "rtc_max_port", lk.rtc_min_port, lk.rtc_max_port)
    low, high = (int(part) for part in config.firewall.turn_relay_ports.split("-"))
    if not (low <= turn.relay_min_port and turn.relay_max_port <= high):
        problems.append(
            doc.problem(
                ("firewall", "turn_relay_ports"),
                f"the firewall opens {low}-{high} but coturn relays on "
                f"{turn.relay_min_port}-{turn.relay_max_port}: calls through TURN would fail",
                f"open {turn.relay_min_port}-{turn.relay_max_port} on the firewall and set "
                f"turn_relay_ports to it, or narrow turn.relay_min_port/relay_max_port",
            )
        )
    return problems


def _connections(parsed: Parsed) -> list[InputProblem]:
    """Synapse's connection budget must fit through one PgBouncer (the other may be down)."""
    config, doc = parsed.config, parsed.docs["config.yaml"]
    problems = []
    if config.synapse.database_cp_min > config.synapse.database_cp_max:
        problems.append(
            doc.problem(
                ("synapse", "database_cp_min"),
                "is larger than database_cp_max",
                "set database_cp_min <= database_cp_max, e.g. 5 and 10",
            )
        )
    pgbouncers = sum(1 for host in parsed.hosts.values() if "pgbouncer" in host.groups)
    sizing = for_config(config, pgbouncers)
    if sizing.connection_budget > config.pgbouncer.max_client_conn:
        ccu = config.ccu or SCALE_CCU[config.scale]
        problems.append(
            doc.problem(
                ("pgbouncer", "max_client_conn"),
                f"{config.pgbouncer.max_client_conn} is below Synapse's connection budget of "
                f"{sizing.connection_budget} at {ccu} concurrent users",
                f"raise it to at least {sizing.connection_budget}",
            )
        )
    return problems
