"""The lab's package source: a small caching HTTP proxy of our own on the bridge address.

Lab hosts fetch the controller's own apt sources through it (`Acquire::http::Proxy`,
lab/rootfs.py), as servers at an air-gapped site use a local mirror or proxy.
LAB-NOTES began with apt-cacher-ng. It fetched every index file from upstream again for
every request, and when several hosts asked for one in the same second it raced on the
file ("Failure to move file ... out of the way"), answered errors and left requests
hanging until apt's timeout: a CI deploy lost a host that way when all 16 servers
installed node-exporter at once. Here:

- one download per URL at a time: the other requests for it wait and get the same file;
- packages and by-hash indexes never change under their URL and are kept for good; the
  other index files (InRelease) are fetched again once older than FRESH_SECONDS;
- only URLs under the machine's own plain-http apt sources are fetched (anything else
  is refused), so the proxy is no way out of the lab for anything but packages.

It runs as a detached process (`python -m lab.proxy STATE`) so that it outlives `lab up`.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from lab.network import BRIDGE_ADDRESS
from lab.rootfs import PROXY_PORT, machine_apt_files
from lab.shell import LabError

FRESH_SECONDS = 1800
UPSTREAM_TIMEOUT = 60
CHUNK = 1 << 20
IMMUTABLE = ("/pool/", "/by-hash/")
REPO = Path(__file__).resolve().parent.parent


def source_prefixes(files: dict[str, str]) -> list[str]:
    """The plain-http URIs of apt source files (one-line .list, deb822 .sources), each ending in '/'."""
    uris: list[str] = []
    for name, text in files.items():
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if name.endswith(".sources") and line.lower().startswith("uris:"):
                uris += line.split(":", 1)[1].split()
            elif name.endswith(".list") and line.startswith(("deb ", "deb-src ")):
                uris += [word for word in line.split() if "://" in word][:1]
    return sorted({uri.rstrip("/") + "/" for uri in uris if uri.startswith("http://")})


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


def _folder(state: Path) -> Path:
    return state / "apt-proxy"


def _pid(state: Path) -> int | None:
    """The proxy's process id, if it runs (a pid reused by another program does not count)."""
    try:
        pid = int((_folder(state) / "proxy.pid").read_text().strip())
        return pid if b"lab.proxy" in Path(f"/proc/{pid}/cmdline").read_bytes() else None
    except (OSError, ValueError):
        return None


def answering() -> bool:
    try:
        with socket.create_connection((str(BRIDGE_ADDRESS), PROXY_PORT), timeout=1):
            return True
    except OSError:
        return False


def start(state: Path) -> None:
    if _pid(state) and answering():
        return
    stop(state)  # one that runs but does not answer
    folder = _folder(state)
    (folder / "cache").mkdir(parents=True, exist_ok=True)
    if not source_prefixes(machine_apt_files()):
        raise LabError(
            "this machine has no plain-http apt source for the lab to install from "
            "(/etc/apt/sources.list, /etc/apt/sources.list.d/): add one (HTTPS cannot pass the lab's proxy)"
        )
    log = folder / "proxy.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lab.proxy", str(state)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    (folder / "proxy.pid").write_text(f"{process.pid}\n")
    deadline = time.monotonic() + 10
    while not answering():
        if process.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"the lab's apt proxy did not answer on {BRIDGE_ADDRESS}:{PROXY_PORT}; see {log}")
        time.sleep(0.1)


def stop(state: Path) -> None:
    pid = _pid(state)
    if pid:
        with contextlib.suppress(ProcessLookupError):  # it may be exiting already
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _pid(state) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # started by this process: reap it
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)


def running(state: Path) -> bool:
    return _pid(state) is not None


def serve(state: Path) -> None:
    cache = Cache(_folder(state) / "cache")
    Server((str(BRIDGE_ADDRESS), PROXY_PORT), cache, source_prefixes(machine_apt_files())).serve_forever()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
