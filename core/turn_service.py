"""Where the platform's TURN service is and how one gets in: its ports, the URIs Synapse hands
to clients, the REST credentials it signs, each server's certificate.

Apart from the Coturn component because Synapse, the edge (which ends TURN's TLS on the
Coturn hosts) and the drills need them too, without depending on one another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from core.pki import ServerCertificate
from core.settings import HostInfo, Settings

PORT = 3478  # TURN over UDP and TCP
TLS_PORT = 5349  # TURN over TLS (TCP) and DTLS (UDP)


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
