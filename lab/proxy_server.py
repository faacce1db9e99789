"""The lab's package proxy itself (lab/proxy.py says what it does and starts it): a caching HTTP
server on the bridge address, run as `python -m lab.proxy_server STATE`."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.server
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from lab.network import BRIDGE_ADDRESS
from lab.proxy import source_prefixes, state_folder
from lab.rootfs import PROXY_PORT, machine_apt_files

FRESH_SECONDS = 1800
UPSTREAM_TIMEOUT = 60
CHUNK = 1 << 20
IMMUTABLE = ("/pool/", "/by-hash/")


class Cache:
    """Files by URL in `folder`, one download per URL at a time."""

    def __init__(self, folder: Path, fresh_seconds: float = FRESH_SECONDS) -> None:
        self.folder = folder
        self.fresh_seconds = fresh_seconds
        self._fetched: dict[str, float] = {}  # URL -> when this process downloaded it (monotonic)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _current(self, url: str, path: Path) -> bool:
        if not path.exists():
            return False
        if any(part in url for part in IMMUTABLE):
            return True
        fetched = self._fetched.get(url)
        return fetched is not None and time.monotonic() - fetched < self.fresh_seconds

    def get(self, url: str) -> Path:
        """The file of `url`, downloaded first when missing or stale.

        Raises urllib's HTTPError (upstream's answer) or OSError (upstream unreachable).
        """
        with self._guard:
            lock = self._locks.setdefault(url, threading.Lock())
        with lock:
            path = self.folder / hashlib.sha256(url.encode()).hexdigest()
            if self._current(url, path):
                return path
            partial = path.with_suffix(".part")
            try:
                with urllib.request.urlopen(url, timeout=UPSTREAM_TIMEOUT) as response, partial.open("wb") as out:
                    shutil.copyfileobj(response, out, CHUNK)
                    modified = response.headers.get("Last-Modified")
                with contextlib.suppress(TypeError, ValueError):  # kept as upstream dated it, if it did
                    stamp = email.utils.parsedate_to_datetime(modified).timestamp()
                    os.utime(partial, (stamp, stamp))
                partial.replace(path)  # a request still sending the old file keeps its open copy
            finally:
                partial.unlink(missing_ok=True)
            self._fetched[url] = time.monotonic()
            return path


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], cache: Cache, prefixes: list[str]) -> None:
        super().__init__(address, Handler)
        self.cache = cache
        self.prefixes = tuple(prefixes)


class Handler(http.server.BaseHTTPRequestHandler):
    """GET of an absolute URL, as apt asks a proxy; answered from the cache."""

    protocol_version = "HTTP/1.1"  # keep-alive: apt sends one request after another on a connection
    server: Server

    def do_GET(self) -> None:
        url = self.path
        if not url.startswith(self.server.prefixes) or "/../" in url:
            self._empty(403, "not under this machine's apt sources")
            return
        try:
            path = self.server.cache.get(url)
        except urllib.error.HTTPError as exc:
            self._empty(exc.code, str(exc.reason))
            return
        except OSError as exc:
            self._empty(502, f"upstream: {exc}")
            return
        with path.open("rb") as file:
            stat = os.fstat(file.fileno())
            self.send_response(200)
            self.send_header("Content-Length", str(stat.st_size))
            self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.connection.sendfile(file)

    def _empty(self, code: int, reason: str) -> None:
        self.send_response(code, reason)
        self.send_header("Content-Length", "0")
        self.end_headers()


# The detached process


def serve(state: Path) -> None:
    cache = Cache(state_folder(state) / "cache")
    Server((str(BRIDGE_ADDRESS), PROXY_PORT), cache, source_prefixes(machine_apt_files())).serve_forever()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
