"""What a run prints for each host: every change named, none hidden without saying so."""

from __future__ import annotations

from rich.console import Console

from core.secrets import Redactor
from runbooks.display import HostOutcome, Progress


def test_a_host_line_names_each_change_and_says_how_many_it_leaves_out() -> None:
    console = Console(record=True, width=200)
    progress = Progress(console, Redactor(None), verbose=False, show_diffs=False)
    changes = [f"/etc/x/{n}: created" for n in range(10)]
    diff = "\n".join(["@admin:lab.example created", "@@ -1 +1 @@", "-old", "+new", *changes])
    progress._print("synapse1", HostOutcome("changed", 1.0, diff=diff))
    shown = console.export_text()
    assert "@admin:lab.example created" in shown and "@@" not in shown and "+new" not in shown
    assert "/etc/x/6: created" in shown and "/etc/x/7: created" not in shown
    assert "… 3 more (--verbose shows them)" in shown
