"""Shared fixtures: a copy of the shipped site to break, and a guard on outgoing traffic.

The guard makes any unit test that tries to reach an address outside loopback and the
lab range (198.18.0.0/16) fail loudly: validation tests feed addresses such as 10.0.2.11
that must never be contacted, whatever a bug in the code under test might do.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
ALLOWED = (ip_network("127.0.0.0/8"), ip_network("::1/128"), ip_network("198.18.0.0/16"))

_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: object) -> None:
    if isinstance(address, tuple):
        try:
            target = ip_address(address[0])
        except ValueError:
            target = None
        if target is not None and not any(target in net for net in ALLOWED):
            raise AssertionError(f"test tried to connect to {address[0]}: only loopback and 198.18.0.0/16 are allowed")
    _connect(self, address)


@pytest.fixture(autouse=True)
def network_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)


def load_runbook(name: str) -> ModuleType:
    """Import runbooks/<name>.py as a module, the way `python runbooks/<name>.py` runs it."""
    spec = importlib.util.spec_from_file_location(f"runbook_{name}", REPO / "runbooks" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Site:
    """A private copy of config.yaml + inventory/ that a test may edit."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory"

    def edit(self, relative: str, old: str, new: str) -> None:
        """Replace `old` (which must occur) by `new` in a file of the site."""
        path = self.root / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {relative}: the test is out of date"
        path.write_text(text.replace(old, new, 1))

    def accept_examples(self) -> None:
        """Delete every CHANGE_TO_… marker: the example values then count as the operator's own."""
        for path in [self.config, *self.inventory.glob("*.yaml")]:
            path.write_text(re.sub(r"\s*# CHANGE_TO_[A-Z0-9_]+:.*$", "", path.read_text(), flags=re.MULTILINE))

    def args(self, *extra: str) -> list[str]:
        return ["--config", str(self.config), "--inventory", str(self.inventory), *extra]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    shutil.copytree(REPO / "inventory", tmp_path / "inventory", ignore=shutil.ignore_patterns("lab"))
    return Site(tmp_path)


@pytest.fixture
def deploy(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """Run the deploy runbook in-process; returns (exit code, everything it printed)."""
    module = load_runbook("deploy")

    def run(*argv: str) -> tuple[int, str]:
        code = module.RUNBOOK.main(list(argv))
        out, err = capsys.readouterr()
        return code, out + err

    return run
