"""Deployment step 8: Coturn (TURN/STUN) on every coturn host.

TURN REST authentication with the shared secret Synapse also gets, so no user list is
kept here; the relay range from config (the firewall opens exactly that); TLS and DTLS on
5349 with a certificate from the site CA. TLS ends in a local HAProxy, which offers TLS 1.2
and 1.3 and answers an older hello with an alert: Debian's Coturn 4.6.1 offers TLS 1.2 only
and leaves an older hello unanswered (the client hangs). Coturn then sees the TURN stream
come from its own address; HAProxy's log has the client's. TCP relay stays enabled:
clients on networks that block UDP have no other way through. Relaying to private ranges is
denied except to the platform's own media servers (LiveKit), so TURN cannot be used to
reach the LAN.
"""

from __future__ import annotations

from core.catalog import GroupRule
from core.config import Config
from core.ports import PortUse, public_tcp, public_tcp_udp, public_udp
from core.secrets import token
from core.targets import Job, per_host
from core.turn_service import PORT, TLS_PORT, turn_certificate
from tasks.component import Component
from tasks.declaration import Context, File, Port, Service, template
from tasks.haproxy import HAPROXY

CONFIG = "/etc/turnserver.conf"
CERT = "/etc/coturn/tls.crt"
KEY = "/etc/coturn/tls.key"
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
    """TURN, TURN over DTLS and the relay range from config: all public, TCP and UDP."""
    relays = "config.yaml turn.relay_min_port/relay_max_port"
    return [
        *public_tcp_udp("turn", PORT, PORT, PROCESSES),
        public_udp("turns-dtls", TLS_PORT, PROCESSES),  # TLS on this port: TURN_TLS
        *public_tcp_udp("turn-relay", config.turn.relay_min_port, config.turn.relay_max_port, PROCESSES, relays),
    ]


COTURN = Component(
    "coturn",
    groups=("coturn",),
    summary="Coturn: TURN REST auth, UDP/TCP/DTLS (TLS through HAProxy), relay range from config, private peers denied",
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
    # One TURN server at a time: a restart ends the relays it holds, and new calls need the other.
    services=(Service("coturn.service", rolling=True),),
    ready=(Port(PORT, private=True),),
    inventory=(GroupRule("coturn", fewest=2, reboot_rank=2),),
    secrets={"turn_shared_secret": token},
    ports=turn_ports,
    # Coturn has no metrics of its own in Debian's build: probed from the monitoring host.
    scrape=lambda settings: [Job("coturn", per_host(settings, "coturn", PORT), module="tcp_connect")],
)


# TURN over TLS ends in HAProxy on the Coturn hosts (see the module's docstring). A step of its
# own, after Coturn's: a Coturn of an earlier deploy holds 5349/tcp until it restarts without it.
TURN_TLS = Component(
    "turn-tls",
    groups=("coturn",),
    summary="HAProxy on every Coturn host: TURN over TLS 1.2/1.3 on 5349/tcp, handed on to Coturn",
    after=("coturn",),
    parts=(HAPROXY,),
    ready=(Port(TLS_PORT, private=True),),
    ports=(public_tcp("turns", TLS_PORT, ("haproxy", *PROCESSES)),),  # Coturn's until the upgrade moves it
    scrape=lambda settings: [Job("coturn-tls", per_host(settings, "coturn", TLS_PORT), module="tls_connect")],
)
