"""What a run prints for each host: every change named, none hidden without saying so."""

from __future__ import annotations

import logging

from nornir.core.inventory import Host
from nornir.core.task import AggregatedResult, MultiResult, Result
from rich.console import Console

from core.secrets import Redactor
from runbooks.display import HostOutcome, Progress, host_outcome


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


def test_a_warning_is_shown_without_verbose() -> None:
    """A host's result at WARNING severity (an unsynchronised clock) keeps its message in the default output."""
    console = Console(record=True, width=200)
    progress = Progress(console, Redactor(None), verbose=False, show_diffs=False)
    for name, level in (("coturn1", logging.WARNING), ("coturn2", logging.INFO)):
        multi = MultiResult("preflight")
        multi.append(Result(host=Host(name), result=f"debian 12; said by {name}", severity_level=level))
        outcome = host_outcome(multi, 0.1, Redactor(None))
        assert outcome.warning is (level == logging.WARNING)
        progress._print(name, outcome)
    shown = console.export_text()
    assert "said by coturn1" in shown and "said by coturn2" not in shown


def test_hosts_with_nothing_to_do_share_one_line_unless_verbose() -> None:
    for verbose in (False, True):
        console = Console(record=True, width=200)
        progress = Progress(console, Redactor(None), verbose=verbose, show_diffs=False)
        result = AggregatedResult("etcd")
        for number in range(1, 11):
            name = f"host{number}"
            multi = MultiResult("etcd")
            multi.append(
                Result(
                    host=Host(name),
                    result="members healthy",
                    changed=number == 3,
                    diff="x: changed"[: 10 * (number == 3)],
                )
            )
            result[name] = multi
            progress.task_instance_completed(None, Host(name), multi)  # type: ignore[arg-type]
        progress.task_completed(None, result)  # type: ignore[arg-type]
        shown = console.export_text()
        if verbose:
            assert shown.count(" ok ") == 9 and "nothing to do" not in shown
        else:
            assert (
                "9 host(s) with nothing to do: host1, host2, host4, host5, host6, host7, host8, host9 … 1 more" in shown
            )
            assert "changed  host3" in shown and "host10" not in shown.split("nothing to do")[0]


def test_a_step_holding_its_ok_hosts_says_nothing_of_them_until_released() -> None:
    """The site identity is read on every host, then written on some: the hosts it writes are shown
    changed, the others then counted as having nothing to do; no host is said to be both."""
    console = Console(record=True, width=200)
    progress = Progress(console, Redactor(None), verbose=False, show_diffs=False, hold_ok=True)
    result = AggregatedResult("site-identity")
    for name, failed in (("host1", False), ("host2", False), ("host3", True)):
        multi = MultiResult("site-identity")
        multi.append(Result(host=Host(name), result="read", failed=failed))
        result[name] = multi
        progress.task_instance_completed(None, Host(name), multi)  # type: ignore[arg-type]
    progress.task_completed(None, result)  # type: ignore[arg-type]
    held = console.export_text(clear=False)
    assert "failed   host3" in held and "host1" not in held and "nothing to do" not in held
    written = HostOutcome("changed", 0.1, diff="/etc/matrix-platform/site.json: created")
    progress.release({"host1": written, "host2": progress.outcomes["host2"]})
    shown = console.export_text()
    assert "changed  host1" in shown and "1 host(s) with nothing to do: host2" in shown
