"""Deployment step 8: Coturn (TURN/STUN) on every coturn host.

TURN REST authentication with the shared secret Synapse also gets, so no user list is
kept here; the relay range from config (the firewall opens exactly that); TLS on 5349
with a certificate from the site CA. TCP relay stays enabled: clients on networks that
block UDP have no other way through. Relaying to private ranges is denied except to the
platform's own media servers (LiveKit), so TURN cannot be used to reach the LAN.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from core.catalog import GroupRule
from core.config import Config
from core.pki import ServerCertificate
from core.ports import PortUse, public_tcp_udp
from core.secrets import token
from core.settings import HostInfo, Settings
from core.targets import Job, per_host
from tasks.component import Component
from tasks.declaration import Context, File, Port, Service, template

CONFIG = "/etc/turnserver.conf"
CERT = "/etc/coturn/tls.crt"
KEY = "/etc/coturn/tls.key"
PORT = 3478
TLS_PORT = 5349
PROCESSES = ("turnserver",)
# Peers no relay may reach: private, loopback, link-local, CGNAT, benchmark and
# multicast ranges (IPv4 and IPv6). The platform's media servers are allowed back in.
DENIED_PEERS = (
    "0.0.0.0-0.255.255.255",
    "10.0.0.0-10.255.255.255",
    "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255",
    "169.254.0.0-169.254.255.255",
    "172.16.0.0-172.31.255.255",
    "192.0.0.0-192.0.0.255",
    "192.168.0.0-192.168.255.255",
    "198.18.0.0-198.19.255.255",
    "224.0.0.0-255.255.255.255",
    "::1",
    "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
)
# A config containing this line must never be installed (design requirement).
NO_TCP_RELAY_CHECK = "! grep -Eq '^[[:space:]]*no-tcp-relay' {path}"


def turn_certificate(settings: Settings, host: HostInfo) -> ServerCertificate:
    """The certificate of one TURN server: its service name and its address."""
    return settings.certificate(f"turn-{host.name}", [settings.service_name(host), host.private_ip])


def rest_credential(secret: str, user: str, lifetime: int = 600) -> tuple[str, str]:
    """A TURN REST credential as Synapse issues it: "<expiry>:<user>" and its HMAC-SHA1."""
    username = f"{int(time.time()) + lifetime}:{user}"
    password = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    return username, password


def turn_uris(settings: Settings) -> list[str]:
    """What Synapse hands to clients: every coturn host over UDP, TCP and TLS."""
    uris = []
    for host in settings.members("coturn"):
        uris += [
            f"turn:{host.private_ip}:{PORT}?transport=udp",
            f"turn:{host.private_ip}:{PORT}?transport=tcp",
            f"turns:{host.private_ip}:{TLS_PORT}?transport=tcp",
        ]
    return uris


def turnserver(context: Context) -> dict[str, object]:
    """The variables of turnserver.conf: the shared secret, the relay range, the peers denied and allowed."""
    settings, host = context.settings, context.host
    turn = settings.config.turn
    return {
        "host_name": host.name,
        "ip": host.private_ip,
        "realm": settings.config.domain,
        "secret": settings.secrets["turn_shared_secret"],
        "min_port": turn.relay_min_port,
        "max_port": turn.relay_max_port,
        "cert": CERT,
        "key": KEY,
        "denied": DENIED_PEERS,
        "allowed": [h.private_ip for h in settings.members("livekit")] if settings.config.livekit.enabled else [],
    }


def turn_ports(config: Config) -> list[PortUse]:
    """TURN and TURN over TLS, and the relay range from config: all public, TCP and UDP."""
    relays = "config.yaml turn.relay_min_port/relay_max_port"
    return [
        *public_tcp_udp("turn", PORT, PORT, PROCESSES),
        *public_tcp_udp("turns", TLS_PORT, TLS_PORT, PROCESSES),
        *public_tcp_udp("turn-relay", config.turn.relay_min_port, config.turn.relay_max_port, PROCESSES, relays),
    ]


COTURN = Component(
    "coturn",
    groups=("coturn",),
    summary="Coturn: TURN REST auth, UDP/TCP/TLS, relay range from config, private peers denied",
    packages=("coturn",),
    files=(
        File(CERT, lambda c: turn_certificate(c.settings, c.host).cert_pem, group="turnserver", mode=0o644),
        File(KEY, lambda c: turn_certificate(c.settings, c.host).key_pem, group="turnserver", mode=0o640, secret=True),
        File(
            CONFIG,
            template("coturn/turnserver.conf.j2", turnserver),
            group="turnserver",
            mode=0o640,
            check=NO_TCP_RELAY_CHECK,
        ),
    ),
    services=(Service("coturn.service"),),
    ready=(Port(TLS_PORT, private=True),),
    inventory=(GroupRule("coturn", fewest=2, reboot_rank=2),),
    secrets={"turn_shared_secret": token},
    ports=turn_ports,
    # Coturn has no metrics of its own in Debian's build: probed from the monitoring host.
    scrape=lambda settings: [
        Job("coturn", per_host(settings, "coturn", PORT), module="tcp_connect"),
        Job("coturn-tls", per_host(settings, "coturn", TLS_PORT), module="tls_connect"),
    ],
)
