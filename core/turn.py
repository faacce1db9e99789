"""A TURN client that allocates relays, to measure what callers see during a fault.

Runs on the controller. `TurnClient.allocate` makes one Allocate (RFC 8656, over UDP, TCP
or TLS) with a TURN REST credential as Synapse issues it, gets a relayed address and releases
it at once (Refresh, lifetime 0) so a probe never fills Coturn's per-user quota; a refused
port, silence after the retransmissions or an error response raises. `TurnProbe` does so
every `interval` seconds on every server, one thread each, for the failover drills;
validate.py allocates once per URI. Standard library only: the controller needs no
turnutils, and the shared secret never leaves this process.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.probe import Sample

MAGIC = 0x2112A442
ALLOCATE, REFRESH = 0x0003, 0x0004
SUCCESS, ERROR = 0x0100, 0x0110  # class bits added to the method
USERNAME, INTEGRITY, ERROR_CODE, REALM, NONCE = 0x0006, 0x0008, 0x0009, 0x0014, 0x0015
LIFETIME, RELAYED_ADDRESS, REQUESTED_TRANSPORT = 0x000D, 0x0016, 0x0019
UDP = 17

Credential = Callable[[], tuple[str, str]]  # (username, password), fresh for each allocation


class TurnError(Exception):
    """The server refused, or did not answer."""


def attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def message(method: int, txid: bytes, attributes: bytes, key: bytes | None = None) -> bytes:
    """A STUN request; with `key`, signed by MESSAGE-INTEGRITY (long-term credentials)."""
    if key is None:
        return struct.pack("!HHI", method, len(attributes), MAGIC) + txid + attributes
    header = struct.pack("!HHI", method, len(attributes) + 24, MAGIC) + txid
    digest = hmac.new(key, header + attributes, hashlib.sha1).digest()
    return header + attributes + attribute(INTEGRITY, digest)


def parse(data: bytes, txid: bytes) -> tuple[int, dict[int, bytes]]:
    """The message type and attributes of the answer to `txid`."""
    if len(data) < 20:
        raise TurnError(f"short answer ({len(data)} bytes)")
    kind, length, cookie = struct.unpack("!HHI", data[:8])
    if cookie != MAGIC or data[8:20] != txid:
        raise TurnError("an answer that is not for this request")
    attributes, offset = {}, 20
    while offset + 4 <= min(len(data), 20 + length):
        name, size = struct.unpack("!HH", data[offset : offset + 4])
        attributes.setdefault(name, data[offset + 4 : offset + 4 + size])
        offset += 4 + size + (-size % 4)
    return kind, attributes


ALLOCATION_MISMATCH = 437  # RFC 8656: the 5-tuple already has an allocation
STALE_RETRIES = 3


def error_of(attributes: dict[int, bytes]) -> tuple[int, str]:
    value = attributes.get(ERROR_CODE, b"\0\0\0\0")
    return (value[2] & 0x7) * 100 + value[3], value[4:].decode(errors="replace")


def relayed(value: bytes) -> str:
    """XOR-RELAYED-ADDRESS as "address:port" (IPv4)."""
    port = struct.unpack("!H", value[2:4])[0] ^ (MAGIC >> 16)
    address = struct.unpack("!I", value[4:8])[0] ^ MAGIC
    return f"{socket.inet_ntoa(struct.pack('!I', address))}:{port}"


def receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise TurnError("the server closed the connection")
        data += chunk
    return data


@dataclass
class TurnClient:
    """One allocation's exchange with one server, over a connected UDP socket or a TCP connection."""

    server: str
    port: int = 3478
    transport: str = "udp"  # or "tcp": the same messages over one connection (the relay stays UDP)
    timeout: float = 1.0  # per answer, UDP retransmits twice (RFC 8489's RTO is 0.5 s; a lab answers in ms)
    tls: ssl.SSLContext | None = None  # TCP inside TLS (a turns: URI), the server verified with this context

    def ask(self, sock: socket.socket, method: int, attributes: bytes, key: bytes | None = None) -> tuple[int, dict]:
        txid = os.urandom(12)
        request = message(method, txid, attributes, key)
        if self.transport == "tcp":
            sock.settimeout(3 * self.timeout)
            sock.sendall(request)
            try:
                header = receive(sock, 20)
                return parse(header + receive(sock, struct.unpack("!H", header[2:4])[0]), txid)
            except TimeoutError:
                raise TurnError(f"no answer within {3 * self.timeout:.1f} s") from None
        for _ in range(3):
            sock.send(request)
            deadline = time.monotonic() + self.timeout
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(2048)
                except TimeoutError:
                    break
                if data[8:20] == txid:  # else a late answer to an earlier retransmission
                    return parse(data, txid)
        raise TurnError(f"no answer within {3 * self.timeout:.1f} s")

    def allocate(self, credential: Credential) -> str:
        """Allocate a UDP relay with long-term credentials and release it; the relayed address.

        A 437 to the first, unauthenticated request means the server still holds an
        allocation for this 5-tuple: an earlier attempt from the same (reused) source port
        that never got to release it. Its answer is sane, so the attempt is made again
        from a new socket, twice at most.
        """
        for _ in range(STALE_RETRIES):
            address = self._allocate(credential)
            if address is not None:
                return address
        raise TurnError(f"{STALE_RETRIES} source ports in a row still held an allocation (437 Allocation Mismatch)")

    def _allocate(self, credential: Credential) -> str | None:
        """One attempt of `allocate` from a new socket; None on 437 to the unauthenticated request."""
        username, password = credential()
        transport = attribute(REQUESTED_TRANSPORT, bytes([UDP, 0, 0, 0]))
        kind = socket.SOCK_STREAM if self.transport == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as raw:
            try:
                raw.settimeout(3 * self.timeout)
                raw.connect((self.server, self.port))
                sock = self.tls.wrap_socket(raw, server_hostname=self.server) if self.tls else raw
                kind, answer = self.ask(sock, ALLOCATE, transport)  # unauthenticated: the 401 names realm and nonce
                code, reason = error_of(answer) if kind == ALLOCATE | ERROR else (0, "")
                if code == ALLOCATION_MISMATCH:
                    return None
                if code != 401:
                    raise TurnError(f"expected 401 to an unauthenticated Allocate, got {kind:#06x} {code} {reason}")
                realm, nonce = answer.get(REALM, b""), answer.get(NONCE, b"")
                key = hashlib.md5(username.encode() + b":" + realm + b":" + password.encode()).digest()
                auth = attribute(USERNAME, username.encode()) + attribute(REALM, realm) + attribute(NONCE, nonce)
                kind, answer = self.ask(sock, ALLOCATE, transport + auth, key)
                if kind != ALLOCATE | SUCCESS:
                    code, reason = error_of(answer)
                    raise TurnError(f"Allocate refused: {code} {reason}")
                address = relayed(answer.get(RELAYED_ADDRESS, b"\0" * 8))
                self.ask(sock, REFRESH, attribute(LIFETIME, struct.pack("!I", 0)) + auth, key)  # release it
                sock.close()  # a TLS socket took over the connection from `raw`
            except OSError as exc:  # a stopped server: ICMP port unreachable → ConnectionRefusedError; TLS errors
                raise TurnError(str(exc) or type(exc).__name__) from exc
        return address


@dataclass
class TurnProbe:
    """Allocations on every server, each in its own thread, until the context ends."""

    servers: list[str]
    credential: Credential = field(repr=False)
    interval: float = 0.25
    samples: dict[str, list[Sample]] = field(default_factory=dict, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False, repr=False)

    def __enter__(self) -> TurnProbe:
        for server in self.servers:
            self.samples[server] = []
            thread = threading.Thread(target=self._loop, args=(server,), name=f"turn-probe-{server}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _loop(self, server: str) -> None:
        client = TurnClient(server)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                sample = Sample(started, True, client.allocate(self.credential), time.monotonic() - started)
            except TurnError as exc:
                sample = Sample(started, False, str(exc), time.monotonic() - started)
            self.samples[server].append(sample)
            self._stop.wait(max(0.0, self.interval - sample.seconds))

    def none_serving(self) -> float:
        """The longest time in which every server's latest allocation had failed: what a
        client trying each of Synapse's TURN URIs in turn would have been without a relay."""
        merged = sorted((s.at, server, s.ok) for server, samples in self.samples.items() for s in samples)
        latest: dict[str, bool] = {}
        longest, start = 0.0, None
        for at, server, ok in merged:
            latest[server] = ok
            down = len(latest) == len(self.servers) and not any(latest.values())
            if down and start is None:
                start = at
            elif not down and start is not None:
                longest, start = max(longest, at - start), None
        if start is not None and merged:
            longest = max(longest, merged[-1][0] - start)
        return longest
