"""A client that keeps asking the VIP for a page, to measure what users see during a fault.

Runs on the controller in a thread: every `interval` seconds a new TLS connection to the
VIP (verified against the site CA for the homeserver name) and one HTTP request. Any
HTTP status counts as an answer, since the edge answered; a refused connection, a
timeout or a TLS error is a failure. Failover drills and tests read the samples.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic() when the request started
    ok: bool
    detail: str  # "HTTP 503" or the error
    seconds: float  # how long the answer (or the failure) took


@dataclass
class HttpsProbe:
    address: str
    server_name: str
    ca_file: Path
    path: str = "/_matrix/client/versions"
    interval: float = 0.05
    timeout: float = 3.0  # slower is a failure; a loaded 2-core lab answers well within it
    samples: list[Sample] = field(default_factory=list, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def __enter__(self) -> HttpsProbe:
        self._thread = threading.Thread(target=self._loop, name="https-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def request(self) -> Sample:
        started = time.monotonic()
        context = ssl.create_default_context(cafile=str(self.ca_file))
        request = f"GET {self.path} HTTP/1.1\r\nHost: {self.server_name}\r\nConnection: close\r\n\r\n"
        try:
            with (
                socket.create_connection((self.address, 443), timeout=self.timeout) as raw,
                context.wrap_socket(raw, server_hostname=self.server_name) as tls,
            ):
                tls.sendall(request.encode())
                status = tls.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
        except OSError as exc:
            return Sample(started, False, str(exc) or type(exc).__name__, time.monotonic() - started)
        ok = status.startswith("HTTP/1.1 ")
        detail = status[len("HTTP/1.1 ") :] if ok else f"bad status line {status!r}"
        return Sample(started, ok, detail, time.monotonic() - started)

    def _loop(self) -> None:
        while not self._stop.is_set():
            sample = self.request()
            self.samples.append(sample)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - sample.at)))

    def failures(self, after: float = 0.0) -> list[Sample]:
        return [s for s in self.samples if not s.ok and s.at >= after]

    def slowest(self) -> float:
        return max((s.seconds for s in self.samples if s.ok), default=0.0)

    def longest_gap(self) -> float:
        """Seconds from the first failed request of the longest failure run to the next answer."""
        longest, start = 0.0, None
        for sample in self.samples:
            if not sample.ok and start is None:
                start = sample.at
            elif sample.ok and start is not None:
                longest, start = max(longest, sample.at - start), None
        if start is not None:
            longest = max(longest, self.samples[-1].at - start)
        return longest
