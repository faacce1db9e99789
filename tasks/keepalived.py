"""Deployment step 7 (second half): Keepalived moves the VIP between the haproxy hosts.

VRRP runs unicast between the haproxy hosts (multicast is often filtered between
servers), authenticated, and tracks HAProxy: when HAProxy is not running the holder
enters FAULT and a peer takes the VIP within a few seconds.

Every instance starts as BACKUP with `nopreempt`: the highest priority wins the first
election, but a host that recovers never takes the VIP back from a healthy peer. A
returning host therefore causes no second interruption and no flapping; moving the VIP
back is a deliberate operator act (restart keepalived on the current holder).
"""

from __future__ import annotations

from ipaddress import ip_address, ip_interface

from nornir.core.task import Result, Task

from core.errors import HostError
from core.secrets import vrrp_password
from core.settings import Settings
from core.targets import Job, Target, labels
from tasks.component import Component
from tasks.declaration import Context, File, Service, template
from tasks.waits import wait_for_tls

CONFIG = "/etc/keepalived/keepalived.conf"
TOP_PRIORITY = 150
PRIORITY_STEP = 10


def priority(settings: Settings, host_name: str) -> int:
    """Priorities in inventory order: the first haproxy host is preferred at the first election."""
    names = [h.name for h in settings.members("haproxy")]
    return TOP_PRIORITY - PRIORITY_STEP * names.index(host_name)


def interface_of(ip_output: str, address: str) -> tuple[str, int]:
    """The interface and prefix length of `address` from `ip -o -4 addr show`."""
    for line in ip_output.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "inet" and fields[3].split("/")[0] == address:
            return fields[1], ip_interface(fields[3]).network.prefixlen
    raise HostError(f"no interface holds the private address {address}: check hostname/private_ip in the inventory")


def vrrp_instance(context: Context) -> dict[str, object]:
    """The variables of this host's VRRP instance; offline, the interface is a placeholder naming the address."""
    settings, host = context.settings, context.host
    if context.reads is None:  # not read: the prefix of the private network the address is in
        network = next(n for n in settings.defaults.data.private_networks if ip_address(host.private_ip) in n)
        interface, prefix = "<interface of " + host.private_ip + ">", network.prefixlen
    else:
        interface, prefix = interface_of(context.reads["addresses"], host.private_ip)
    return {
        "host_name": host.name,
        "router_id": settings.defaults.data.vrrp_router_id,
        "interface": interface,
        "priority": priority(settings, host.name),
        "source": host.private_ip,
        "peers": [h.private_ip for h in settings.members("haproxy") if h.name != host.name],
        "vip": f"{settings.vip}/{prefix}",
        "auth_pass": settings.secrets["keepalived_auth_pass"],
    }


def vip_answers(task: Task, settings: Settings) -> Result:
    """Health check: from each haproxy host, the VIP completes a trusted TLS handshake for the homeserver name."""
    return wait_for_tls(task, settings.vip, 443, settings.config.homeserver_fqdn, timeout=30)


def edge_probe(settings: Settings) -> list[Job]:
    """The homeserver's client API through the VIP, probed from the monitoring host as a client would."""
    url = f"https://{settings.config.homeserver_fqdn}/_matrix/client/versions"
    return [Job("edge", [Target(url, labels(settings.members("monitoring")[0]))], module="http_2xx")]


KEEPALIVED = Component(
    "keepalived",
    groups=("haproxy",),
    summary="Keepalived moves the VIP between the haproxy hosts; the VIP answers HTTPS",
    after=("haproxy", "hosts-file", "ca-trust"),
    packages=("keepalived",),
    files=(
        File(
            CONFIG,
            template("keepalived/keepalived.conf.j2", vrrp_instance),
            mode=0o600,
            check="keepalived --config-test -f {path}",
        ),
    ),
    services=(Service("keepalived.service", reload=True),),
    reads={"addresses": "ip -o -4 addr show"},
    check=vip_answers,
    scrape=edge_probe,
    secrets={"keepalived_auth_pass": vrrp_password},
)
