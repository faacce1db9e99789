"""A port a service listens on, as the components declare it (`Component.ports`).

The ports of a host's components serve three purposes: clashes between two services
placed on one host (validation), ports already taken by a foreign process (preflight),
and each host's firewall: public ports open to everyone, a private port only to the hosts
of the inventory groups that use it (its `clients`), the rest dropped. Process names are
what `ss -p` shows (the kernel's 15-character comm).
"""

from __future__ import annotations

from dataclasses import dataclass

FIXED = "fixed by the platform"  # the `setting` of a port no setting moves


def comm(program: str) -> str:
    """The name `ss -p` shows for a program: the kernel keeps 15 characters."""
    return program[:15]


@dataclass(frozen=True)
class PortUse:
    """A port or range a service listens on; `processes` are the names allowed to hold it.

    A private port is reached only from the hosts of the groups in `clients` (none: from the
    host itself, e.g. over an SSH tunnel); a public one from anywhere.
    """

    service: str
    start: int
    end: int
    proto: str
    processes: tuple[str, ...]
    setting: str  # where the operator changes it
    public: bool = False  # reached by clients from anywhere
    clients: tuple[str, ...] = ()  # the inventory groups whose hosts may connect to a private port

    def overlaps(self, other: PortUse) -> bool:
        return self.proto == other.proto and self.start <= other.end and other.start <= self.end

    @property
    def span(self) -> str:
        """`8008`, or `49152-49172` for a range."""
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"

    def label(self) -> str:
        return f"{self.service} {self.span}/{self.proto}"


def tcp(service: str, port: int, processes: tuple[str, ...], clients: tuple[str, ...], setting: str = FIXED) -> PortUse:
    """A private TCP port, reached only from the hosts of the groups `clients`."""
    return PortUse(service, port, port, "tcp", processes, setting, clients=clients)


def public_tcp(service: str, port: int, processes: tuple[str, ...], setting: str = FIXED) -> PortUse:
    """A TCP port clients reach from anywhere."""
    return PortUse(service, port, port, "tcp", processes, setting, public=True)


def public_udp(service: str, port: int, processes: tuple[str, ...], setting: str = FIXED) -> PortUse:
    """A UDP port clients reach from anywhere."""
    return PortUse(service, port, port, "udp", processes, setting, public=True)


def public_tcp_udp(
    service: str, start: int, end: int, processes: tuple[str, ...], setting: str = FIXED
) -> list[PortUse]:
    """A public TCP and UDP port or range (TURN)."""
    return [PortUse(service, start, end, proto, processes, setting, public=True) for proto in ("tcp", "udp")]


def clashes(uses: list[PortUse]) -> list[tuple[PortUse, PortUse]]:
    """Pairs of different services that would listen on the same port and protocol."""
    found = []
    for index, first in enumerate(uses):
        for second in uses[index + 1 :]:
            if first.service != second.service and first.overlaps(second):
                found.append((first, second))
    return found
