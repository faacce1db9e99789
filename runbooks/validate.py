"""Validate: the post-deployment checklist, each check PASS, FAIL or SKIP with its evidence.

    python runbooks/validate.py                  # every check below; changes nothing on the servers
    python runbooks/validate.py --drills         # also a Patroni and a VIP failover drill (under load)
    python runbooks/validate.py --restore        # also the restore drill of the newest backup

Checks: login, send/receive, media upload/download and TURN allocations over UDP and
TCP with the credentials Synapse hands out (as the admin user, through the VIP, from
this machine); LiveKit (when deployed); the admin UI from an allowed address and a
refused one; federation (8448 answers when on, is closed when off); every Prometheus
target UP; clocks; /etc/hosts on every server; the served certificates. The client checks
leave one uploaded file and a left, forgotten room behind. Exit 0 when nothing FAILed,
else 1. The runbook options (--lab, --limit, --report, …) go with them.
"""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nornir.core.task import Result

from core.step import Step
from runbooks import failover_drill, restore_drill
from runbooks.commands import Command, Commands, flag
from runbooks.shell import Runbook
from tasks.certificates import expiring, expiry_table, served_certificates
from tasks.hosts_file import verify_resolution
from tasks.monitoring import targets_up
from tasks.validate import (
    admin_allowlist,
    checks_report,
    client_checks,
    clock,
    clocks_report,
    failed_checks,
    federation,
    group_call,
)


def check_step(name: str, summary: str, task: Callable[..., Result], **extra: Any) -> Step:
    """A step whose task returns Check results (tasks/validate.py), run once from the first Synapse host."""
    return Step(name, summary, task, groups=("synapse",), gate=failed_checks, report=checks_report, live=True, **extra)


FEDERATION = check_step("federation", "federation on: 8448 answers the federation API; off: 8448 is closed", federation)
STEPS = [
    check_step(
        "matrix-client",
        "login, a message, a file, TURN relays over UDP and TCP: as the admin user through the VIP",
        client_checks,
    ),
    check_step(
        "group-call", "LiveKit answers on every SFU host", group_call, needs=("livekit-server", "lk-jwt-service")
    ),
    check_step(
        "admin-allowlist",
        "the admin UI through the VIP: served to an allowed address, 403 to another",
        admin_allowlist,
    ),
    FEDERATION,
    Step("prometheus-targets", "every expected Prometheus target is UP", targets_up, groups=("monitoring",), live=True),
    Step("clocks", "every server's clock agrees with this machine's", clock, report=clocks_report, live=True),
    Step("hosts-file", "every platform name resolves to its address on every server", verify_resolution, live=True),
    Step(
        "certificates",
        "from the monitoring host: every served certificate verifies, with its days left",
        served_certificates,
        groups=("monitoring",),
        gate=expiring,
        report=expiry_table,
        live=True,
    ),
]


def checklist(flags: argparse.Namespace) -> Runbook:
    steps = list(STEPS)
    if flags.drills:
        steps += failover_drill.steps([("patroni", "stop"), ("vip", "haproxy")])
    if flags.restore:
        steps += restore_drill.runbook([])[0].steps
    return Runbook("validate", __doc__ or "", steps, confirm=flags.drills, checklist=True)


COMMANDS = Commands(
    "validate.py",
    __doc__ or "",
    (
        Command(
            "",
            "the post-deployment checklist",
            checklist,
            flags=(
                flag("--drills", action="store_true", help="also a Patroni and a VIP failover drill, under load"),
                flag("--restore", action="store_true", help="also the restore drill of the newest backup"),
            ),
        ),
    ),
    default="",
)
runbook = COMMANDS.choose


if __name__ == "__main__":
    sys.exit(COMMANDS.main(sys.argv[1:]))
