"""The lab's package source: apt-cacher-ng on the bridge address, caching on the controller.

It runs with a configuration of our own and no remapping: a host asks for a URL of the
controller's own apt sources and the proxy fetches exactly that (the stock remapping of
Debian mirrors to an empty backend list answered 503 here, LAB-NOTES).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

from lab.network import BRIDGE_ADDRESS
from lab.rootfs import PROXY_PORT
from lab.shell import LabError, sh


def _pid(state: Path) -> int | None:
    pid_file = state / "apt-proxy" / "apt-cacher-ng.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        return pid
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
    folder = state / "apt-proxy"
    for sub in ("conf", "cache", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "conf" / "acng.conf").write_text("# matrix-lab: plain caching proxy, no remapping\n")
    sh(
        [
            "apt-cacher-ng",
            "-c",
            str(folder / "conf"),
            f"CacheDir={folder / 'cache'}",
            f"LogDir={folder / 'log'}",
            f"PidFile={folder / 'apt-cacher-ng.pid'}",
            f"BindAddress={BRIDGE_ADDRESS}",
            f"Port={PROXY_PORT}",
            "ForeGround=0",
            "ReportPage=acng-report.html",
            "ExThreshold=30",
        ]
    )
    deadline = time.monotonic() + 10
    while not answering():
        if time.monotonic() > deadline:
            raise LabError(f"apt-cacher-ng did not answer on {BRIDGE_ADDRESS}:{PROXY_PORT}; see {folder / 'log'}")
        time.sleep(0.2)


def stop(state: Path) -> None:
    pid = _pid(state)
    if pid:
        with contextlib.suppress(ProcessLookupError):  # it may be exiting already
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _pid(state) and time.monotonic() < deadline:
            time.sleep(0.1)


def running(state: Path) -> bool:
    return _pid(state) is not None
