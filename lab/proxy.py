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

It runs as a detached process (`python -m lab.proxy_server STATE`, lab/proxy_server.py) so
that it outlives `lab up`; this module starts, checks and stops it, without importing the
server's own modules into every `--lab` run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lab.network import BRIDGE_ADDRESS
from lab.rootfs import PROXY_PORT, machine_apt_files
from lab.shell import LabError

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


def state_folder(state: Path) -> Path:
    return state / "apt-proxy"


def _pid(state: Path) -> int | None:
    """The proxy's process id, if it runs (a pid reused by another program does not count)."""
    try:
        pid = int((state_folder(state) / "proxy.pid").read_text().strip())
        return pid if b"lab.proxy_server" in Path(f"/proc/{pid}/cmdline").read_bytes() else None
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
    folder = state_folder(state)
    (folder / "cache").mkdir(parents=True, exist_ok=True)
    if not source_prefixes(machine_apt_files()):
        raise LabError(
            "this machine has no plain-http apt source for the lab to install from "
            "(/etc/apt/sources.list, /etc/apt/sources.list.d/): add one (HTTPS cannot pass the lab's proxy)"
        )
    log = folder / "proxy.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lab.proxy_server", str(state)],
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
