"""A run's report as one HTML page: `--report FILE.html`.

Made from the same (already redacted) data as the JSON report, so it shows nothing the JSON
would not. The page is self-contained, with no script and no file beside it, so it opens
on an air-gapped machine and can be mailed: the run, every step's outcome host by host with
its changes, the hosts that dropped out, and every command with where it ran, as whom, what
was expected and what to do if it fails.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "report" / "run.html.j2"
# How a drill's or the soak's report names the timeline PNG it wrote (tasks/drills.py, tasks/soak.py).
TIMELINE = re.compile(r"timeline: (\S+\.png)")


def verdict(report: dict[str, Any]) -> tuple[str, str]:
    """What the run came to, and the style class it is shown in."""
    statuses = {step["status"] for step in report["steps"]}
    if report["exit_code"] == 2:
        return "refused, nothing was changed", "failed"
    if "failed" in statuses or report["exit_code"] != 0:
        return "FAILED", "failed"
    if "changed" in statuses:
        return ("changes made", "changed") if report["mode"] == "apply" else ("changes pending", "changed")
    return "no changes", "ok"


def render(report: dict[str, Any]) -> str:
    import jinja2  # only for a run that writes an HTML report: it costs every other run's start 20 ms

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    said, style = verdict(report)
    page = environment.from_string(TEMPLATE.read_text())
    return page.render(r=report, verdict=said, verdict_class=style, timelines=timelines)


def timelines(step_report: str) -> list[tuple[str, str]]:
    """The timelines a step's report names, as (file, data: URI) to embed: the page stays one file that opens
    anywhere. A file gone since the run is left out (its path is still in the report's text)."""
    found = []
    for name in TIMELINE.findall(step_report):
        path = Path(name)
        if path.is_file():
            found.append((name, "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()))
    return found
