"""The lab network: a bridge on the controller and one namespace per host, all in 198.18.0.0/16.

The bridge holds 198.18.0.1 (the controller's side: SSH from the runbooks, the apt
proxy). Hosts get a fixed address and a MAC derived from it (a re-created host with a
new MAC stayed unreachable for ~20 s on stale ARP entries), and no default route: they
reach nothing outside the lab. An nftables table drops anything the controller might
otherwise route between the bridge and its other interfaces; traffic between hosts on
the bridge stays allowed (with br_netfilter loaded it passes the forward hook too, with
the bridge as both input and output interface).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from lab.shell import sh

LAB_NETWORK = IPv4Network("198.18.0.0/16")
BRIDGE = "mha-br0"
BRIDGE_ADDRESS = IPv4Address("198.18.0.1")
NS_PREFIX = "mha-"
VETH_PREFIX = "mhv"
NFT_TABLE = "matrix_lab"


def netns(host: str) -> str:
    return f"{NS_PREFIX}{host}"


def veth(address: IPv4Address) -> str:
    """Host-side interface name (15 characters at most), unique per address."""
    third, fourth = str(address).split(".")[2:]
    return f"{VETH_PREFIX}{third}x{fourth}"


def mac(address: IPv4Address) -> str:
    """A locally administered MAC that encodes the address, stable across re-creations."""
    return "02:00:" + ":".join(f"{octet:02x}" for octet in address.packed)


def _links() -> set[str]:
    return {line.split(":")[1].strip().split("@")[0] for line in sh(["ip", "-o", "link", "show"]).splitlines()}


def namespaces() -> list[str]:
    return [line.split()[0] for line in sh(["ip", "netns", "list"]).splitlines() if line.startswith(NS_PREFIX)]


def ensure_bridge() -> None:
    if BRIDGE not in _links():
        sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
        sh(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/{LAB_NETWORK.prefixlen}", "dev", BRIDGE])
    sh(["ip", "link", "set", BRIDGE, "up"])
    ruleset = (
        f"table inet {NFT_TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority -10; policy accept;\n"
        f'    iifname "{BRIDGE}" oifname != "{BRIDGE}" drop\n'
        f'    oifname "{BRIDGE}" iifname != "{BRIDGE}" drop\n'
        "  }\n}\n"
    )
    sh(["nft", "delete", "table", "inet", NFT_TABLE], check=False)
    sh(["nft", "-f", "-"], input=ruleset)


def ensure_host(host: str, address: IPv4Address) -> None:
    """Create the host's namespace with eth0 on the bridge, if it is not there already."""
    ns = netns(host)
    if ns not in namespaces():
        sh(["ip", "netns", "add", ns])
    if "eth0" in sh(["ip", "-n", ns, "-o", "link", "show"]):
        return
    link = veth(address)
    if link in _links():  # a stale half of an earlier pair: veth teardown is asynchronous
        sh(["ip", "link", "del", link])
    sh(["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns])
    sh(["ip", "link", "set", link, "master", BRIDGE, "up"])
    sh(["ip", "-n", ns, "link", "set", "eth0", "address", mac(address)])
    sh(["ip", "-n", ns, "addr", "add", f"{address}/{LAB_NETWORK.prefixlen}", "dev", "eth0"])
    sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
    sh(["ip", "-n", ns, "link", "set", "lo", "up"])
    sh(["ip", "neigh", "flush", "dev", BRIDGE], check=False)


def leftovers() -> list[str]:
    """Every network object of the lab that still exists."""
    found = [f"namespace {ns}" for ns in namespaces()]
    found += [f"link {link}" for link in sorted(_links()) if link == BRIDGE or link.startswith(VETH_PREFIX)]
    if NFT_TABLE in sh(["nft", "list", "tables"], check=False):
        found.append(f"nftables table {NFT_TABLE}")
    return found


def remove_all() -> None:
    for ns in namespaces():
        sh(["ip", "netns", "del", ns], check=False)
    for link in _links():
        if link.startswith(VETH_PREFIX):
            sh(["ip", "link", "del", link], check=False)
    if BRIDGE in _links():
        sh(["ip", "link", "del", BRIDGE])
    sh(["nft", "delete", "table", "inet", NFT_TABLE], check=False)
