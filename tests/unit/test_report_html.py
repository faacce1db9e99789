"""The HTML report: every step and command of the run, nothing unescaped, and a page a browser shows cleanly."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path

from core import timeline
from runbooks.report_html import render, verdict
from tests.browser import needs_chromium, screenshot
from tests.conftest import Site

Deploy = Callable[..., tuple[int, str]]


def report(**changes: object) -> dict[str, object]:
    command = {
        "user": "deploy", "sudo": True, "cwd": "/", "command": "echo '<script>alert(1)</script>'",
        "expect": "exit status 0", "on_failure": "read the error output above", "exit_code": 0,
        "seconds": 0.05, "step": "etcd", "at": 0.0,
    }  # fmt: skip
    host = {"status": "changed", "seconds": 0.2, "message": "", "diff": "/etc/default/etcd: content", "warning": False}
    base = {
        "runbook": "deploy", "command": "python runbooks/deploy.py --lab", "started_at": "2026-12-04T12:00:00+00:00",
        "commit": "0" * 40, "settings_sha256": "f" * 64, "site": "lab", "mode": "apply", "exit_code": 0,
        "seconds": 12.5, "dropped": [], "finish": "", "connecting_at": {},
        "steps": [{"name": "etcd", "status": "changed", "seconds": 1.5, "hosts": {"patroni1": host}, "note": "",
                   "problems": [], "report": "", "at": 0.0}],
        "commands": {"patroni1": [command]},
    }  # fmt: skip
    return base | changes


def test_the_page_names_the_run_its_steps_and_commands_and_escapes_them() -> None:
    page = render(report())
    assert "<title>deploy on lab: changes made</title>" in page
    assert "python runbooks/deploy.py --lab" in page and "0" * 40 in page and "f" * 64 in page
    assert "/etc/default/etcd: content" in page and "read the error output above" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert verdict(report(exit_code=2)) == ("refused, nothing was changed", "failed")
    assert verdict(report(mode="check"))[0] == "changes pending"


@needs_chromium
def test_a_plan_report_opens_in_a_browser_without_a_console_message(deploy: Deploy, site: Site, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    code, out = deploy(*site.args("--plan", "--report", str(page)))
    assert code == 0, out
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<h3 id=") == text.count('<td><a href="#step-')
    assert screenshot(page, (1280, 1600)) > 50  # text, tables and the status colours drawn, not a blank page


def test_a_drill_timeline_is_embedded_in_the_page(tmp_path: Path) -> None:
    """The timeline PNG a drill's report names is in the page itself (it must open without the drills folder);
    one removed since the run is left out."""
    png, gone = tmp_path / "patroni-1.png", tmp_path / "vip-1.png"
    timeline.render(png, "patroni kill", [(100.0, True, "db"), (101.0, False, "db"), (103.0, True, "db")], {}, 101.0)
    text = f"    record: {png.with_suffix('.json')}  timeline: {png}\n    record: x.json  timeline: {gone}"
    step = {"name": "drill", "status": "ok", "seconds": 30.0, "hosts": {}, "note": "", "problems": [],
            "report": text, "at": 0.0}  # fmt: skip
    page = render(report(steps=[step]))
    embedded = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(data) for data in embedded] == [png.read_bytes()]
