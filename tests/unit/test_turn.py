"""The TURN client against a scripted server on loopback: real UDP, the server's answers chosen per request."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from core.turn import (
    ALLOCATE,
    ERROR,
    ERROR_CODE,
    MAGIC,
    NONCE,
    REALM,
    RELAYED_ADDRESS,
    SUCCESS,
    TurnClient,
    TurnError,
    attribute,
)


def error(code: int, reason: bytes) -> bytes:
    return attribute(ERROR_CODE, b"\0\0" + bytes([code // 100, code % 100]) + reason)


def answer(kind: int, txid: bytes, attributes: bytes) -> bytes:
    return struct.pack("!HHI", kind, len(attributes), MAGIC) + txid + attributes


RELAY = attribute(RELAYED_ADDRESS, b"\0\x01" + struct.pack("!H", 50000 ^ (MAGIC >> 16)) + struct.pack("!I", MAGIC ^ 1))


def serve(stale_source_ports: int) -> Iterator[tuple[int, list[int]]]:
    """A server that answers 437 to the unauthenticated Allocate of the first `stale_source_ports` sources,
    then 401, then success; yields its port and the source ports it saw."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.2)
    sources: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                data, peer = server.recvfrom(2048)
            except TimeoutError:
                continue
            kind, txid, signed = struct.unpack("!H", data[:2])[0], data[8:20], len(data) > 40
            if peer[1] not in sources:
                sources.append(peer[1])
            if kind != ALLOCATE:  # the release
                server.sendto(answer(kind | SUCCESS, txid, b""), peer)
            elif not signed and len(sources) <= stale_source_ports:
                server.sendto(answer(ALLOCATE | ERROR, txid, error(437, b"Allocation Mismatch")), peer)
            elif not signed:
                realm = attribute(REALM, b"lab") + attribute(NONCE, b"n0nce")
                server.sendto(answer(ALLOCATE | ERROR, txid, error(401, b"Unauthorized") + realm), peer)
            else:
                server.sendto(answer(ALLOCATE | SUCCESS, txid, RELAY), peer)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], sources
    finally:
        stop.set()
        thread.join()
        server.close()


@pytest.fixture
def one_stale() -> Iterator[tuple[int, list[int]]]:
    yield from serve(1)


@pytest.fixture
def always_stale() -> Iterator[tuple[int, list[int]]]:
    yield from serve(99)


def test_a_source_port_that_still_holds_an_allocation_is_left_for_a_new_one(one_stale: tuple[int, list[int]]) -> None:
    port, sources = one_stale
    relay = TurnClient("127.0.0.1", port, timeout=0.5).allocate(lambda: ("user", "secret"))
    assert relay.endswith(":50000")
    assert len(sources) == 2  # the 437 came to the first socket; the second one allocated


def test_a_server_that_always_answers_437_fails_the_allocation(always_stale: tuple[int, list[int]]) -> None:
    port, sources = always_stale
    with pytest.raises(TurnError, match="3 source ports in a row still held an allocation"):
        TurnClient("127.0.0.1", port, timeout=0.5).allocate(lambda: ("user", "secret"))
    assert len(sources) == 3
