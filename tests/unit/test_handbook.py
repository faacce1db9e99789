"""The handbook: rendered for the lab and the shipped example, its port table the firewall's own rules, every
command it gives one the runbooks take, no secret value anywhere, and a page a browser shows cleanly."""

from __future__ import annotations

import importlib
import itertools
import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from core.settings import Settings
from runbooks import handbook
from runbooks.deploy import RUNBOOK as DEPLOY
from runbooks.handbook_content import RUNBOOK_FILES
from runbooks.handbook_diagram import CLIENTS, arrows
from tasks.declaration import Context
from tasks.firewall import rules
from tests.browser import needs_chromium, screenshot
from tests.conftest import REPO
from tests.unit.test_firewall_matrix import rule_opens


@pytest.fixture(params=["lab", "shipped"])
def made(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Settings]:
    """The handbook of the lab or of the shipped example, written to a folder of the test's own, and the settings
    it was made from."""
    settings = request.getfixturevalue(f"{request.param}_settings")
    out = tmp_path / "handbook"
    flags = ["--lab"] if request.param == "lab" else ["--config", str(settings.config_path)]
    flags += [] if request.param == "lab" else ["--inventory", str(settings.inventory_dir)]
    assert handbook.main([*flags, "--out", str(out)]) == 0
    return out, settings


def table(markdown: str, heading: str) -> list[list[str]]:
    """The rows of the first table under `heading` (its header and rule left out, cells unescaped)."""
    lines = markdown.split(f"\n{heading}\n", 1)[1].splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))
    return [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows[2:]]


def test_the_handbook_renders_all_three_files_and_names_every_server(made: tuple[Path, Settings]) -> None:
    out, settings = made
    text = (out / "handbook.md").read_text()
    for heading in ("Servers and addresses", "DNS and /.well-known", "Perimeter: ports to open", "Ports and firewall"):
        assert f"## {heading}" in text
    for heading in ("Hardware and sizing", "Secrets", "Procedures"):
        assert f"## {heading}" in text
    servers = {row[0]: row for row in table(text, "## Servers and addresses")}
    assert set(servers) == set(settings.hosts)
    assert all(servers[h.name][2] == h.private_ip for h in settings.hosts.values())
    picture = ElementTree.fromstring((out / "architecture.svg").read_text())
    drawn = {t.text for t in picture.iter("{http://www.w3.org/2000/svg}title")}
    assert {g for h in settings.hosts.values() for g in h.groups} | {CLIENTS} <= drawn
    assert len([t for t in drawn if t and "→" in t]) == len(arrows(settings))
    assert f"https://{settings.config.homeserver_fqdn}" in text


def test_the_port_table_is_what_the_firewall_loads(made: tuple[Path, Settings]) -> None:
    """Every TCP row, from every other server: the rules the firewall writes open it exactly to those the
    handbook names; every public UDP port is in the rules' public set."""
    out, settings = made
    rows = table((out / "handbook.md").read_text(), "## Ports and firewall")
    assert rows
    by_name = {h.name: h for h in settings.hosts.values()}
    checked = 0
    for servers, port, _service, open_to in rows:
        first, _, last = port.split("/")[0].partition("-")
        proto = port.split("/")[1]
        for name in servers.split(" [")[0].split(", "):
            written = rules(Context(settings, by_name[name], None))[0]
            if proto == "udp":
                assert open_to == "anyone" and re.search(rf"udp dport [^\n]*\b{first}\b", written), (name, port)
                continue
            allowed = set(open_to.split(": ", 1)[1].split(", ")) if ": " in open_to else set()
            for source in settings.hosts.values():
                if source.name != name:
                    wanted = open_to == "anyone" or source.name in allowed
                    for number in {int(first), int(last or first)}:
                        assert rule_opens(written, source.private_ip, number) == wanted, (source.name, name, number)
                        checked += 1
    assert checked > 500


def test_every_command_in_the_handbook_is_one_the_runbooks_take(made: tuple[Path, Settings]) -> None:
    out, _ = made
    text = (out / "handbook.md").read_text()
    lines = set(re.findall(r"python (runbooks/[^`|\n]+)", text))
    every = [importlib.import_module(f"runbooks.{file}").COMMANDS for file in RUNBOOK_FILES]
    declared = {commands.usage(command) for commands in every for command in commands.commands}
    given = {"python " + re.sub(r" --lab| --config \S+| --inventory \S+", "", line).strip() for line in lines}
    assert declared <= given  # every procedure is in it
    for line in sorted(lines):
        file, *argv = shlex.split(line.strip())
        assert Path(file).exists(), line
        module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
        commands = getattr(module, "COMMANDS", None)
        if commands is None:  # deploy.py, sizing.py: a runbook or an offline command of their own
            parser = DEPLOY.parser() if file.endswith("deploy.py") else None
            if parser is None:
                assert module.main(argv) == 0, line
            else:
                parser.parse_args(argv)
            continue
        command, rest = commands.command_in(argv)
        if command.offline:
            assert command.offline(rest) == 0, line
        else:
            runbook, rest = commands.runbook_of(command, rest)
            runbook.parser().parse_args(rest)


def test_no_secret_value_is_in_the_handbook(made: tuple[Path, Settings]) -> None:
    out, settings = made
    written = "".join(path.read_text() for path in out.iterdir())
    for name in settings.catalog.secrets:
        assert settings.secrets[name] not in written, name
    assert "PRIVATE KEY" not in written


def test_a_handbook_made_again_is_the_same_byte_for_byte(tmp_path: Path) -> None:
    """Regenerated from the same sources (in processes of their own: string hashing differs), nothing changes."""
    for run, hash_seed in enumerate(("1", "2")):
        subprocess.run(
            [sys.executable, str(REPO / "runbooks" / "handbook.py"), "--lab", "--out", str(tmp_path / str(run))],
            env={**os.environ, "PYTHONHASHSEED": hash_seed}, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    for name in ("handbook.md", "handbook.html", "architecture.svg"):
        assert (tmp_path / "0" / name).read_bytes() == (tmp_path / "1" / name).read_bytes(), name


def test_an_unwritable_out_folder_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert handbook.main(["--lab", "--out", str(blocker)]) == 2


@needs_chromium
def test_the_html_handbook_opens_in_a_browser_without_a_console_message(tmp_path: Path) -> None:
    assert handbook.main(["--lab", "--out", str(tmp_path)]) == 0
    page = tmp_path / "handbook.html"
    assert page.read_text().count("<svg") == 1
    assert screenshot(page, (1300, 2400)) > 50  # the picture, tables and text drawn, not a blank page
