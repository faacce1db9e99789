"""Faults the lab can inflict from outside its hosts, and runbooks run as an operator runs them.

A cut is made at the controller's end of a host's cable (its veth on the bridge goes
down): nothing of the host answers any more, not even with a TCP reset, which is what a
switched-off server or a pulled cable looks like to the controller.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

from lab import REPO, network
from lab.lab import Lab


class Link:
    """A lab host's cable at the controller's end: cut on demand, always put back on leaving."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.lab = lab
        self.host = next(h for h in lab.hosts if h.name == host)
        self.name = network.veth(self.host.address)
        self.cut_at: list[float] = []  # when it was cut (seconds since the epoch)

    def cut(self) -> None:
        subprocess.run(["ip", "link", "set", self.name, "down"], check=True)
        self.cut_at.append(time.time())

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        """Back up, and wait (30 s at most) until the host answers SSH again."""
        subprocess.run(["ip", "link", "set", self.name, "up"], check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            probe = [*self.lab.ssh_args(self.host), "true"]
            if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
                return
            time.sleep(0.5)


Line = tuple[float, str]  # when a line of output arrived (seconds since the epoch), and the line


def run_runbook(name: str, *args: str, on_line: Callable[[str], None] | None = None) -> tuple[int, list[Line]]:
    """`python runbooks/<name>.py ARGS` in a process of its own; its exit code and its lines as they came."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    process = subprocess.Popen(
        [sys.executable, f"runbooks/{name}.py", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout
    lines = []
    for line in process.stdout:
        lines.append((time.time(), line.rstrip("\n")))
        if on_line:
            on_line(lines[-1][1])
    return process.wait(timeout=600), lines


def when_step_starts(step: str, act: Callable[[], None]) -> Callable[[str], None]:
    """An `on_line` that calls `act` once, as soon as the runbook announces `step`: the deploy's graph
    says when a step starts ("… 6/32 node-exporter started"), a runbook of steps in order heads it ("▶ …")."""
    done: list[bool] = []

    def watch(line: str) -> None:
        starts = line.startswith("…") and line.endswith(f" {step} started")
        if (starts or (line.startswith("▶") and f" {step} — " in line)) and not done:
            done.append(True)
            act()

    return watch


def cut_when_step_starts(link: Link, step: str) -> Callable[[str], None]:
    """An `on_line` that cuts `link` as soon as the runbook announces `step`."""
    return when_step_starts(step, link.cut)
