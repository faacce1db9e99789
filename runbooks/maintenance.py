"""Maintenance: apply one kind of change and touch only what it concerns, each step gated.

    python runbooks/maintenance.py workers      # after changing synapse.workers, scale or ccu in config.yaml:
                                                # worker processes added/removed, HAProxy routing, firewall,
                                                # Prometheus targets; other processes keep running
    python runbooks/maintenance.py federation   # after changing synapse.federation: Synapse, the 8448
                                                # frontend and the firewall together, then 8448 checked
    python runbooks/maintenance.py intranet     # the network transition: /etc/hosts everywhere, every name
                                                # resolved from /etc/hosts alone, default routes reported

Each is a subset of the deploy's steps with their health gates, so a re-run that changes
nothing says so. Adding a sync or generic worker starts only that worker; a change of
event persisters or federation senders restarts every Synapse process (they share the
stream writer map). The runbook options (--lab, --check, --plan, …) follow.
"""

import argparse
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.display import answers
from core.runbook import Runbook, Step
from runbooks.deploy import RUNBOOK as DEPLOY
from runbooks.validate import FEDERATION
from tasks.hosts_file import outbound_route, verify_resolution

DEPLOY_STEPS = {step.name: step for step in DEPLOY.steps}
COMMANDS = {
    "workers": ["firewall", "synapse", "synapse-playbook", "haproxy", "monitoring"],
    "federation": ["firewall", "synapse", "synapse-playbook", "haproxy"],
    "intranet": ["hosts-file"],
}
CHECKS = {
    "federation": [replace(FEDERATION, name="federation-check")],
    "intranet": [
        Step(
            "offline-names",
            "every platform name resolves from /etc/hosts alone (no DNS server needed)",
            partial(verify_resolution, files_only=True),
            report=answers,
        ),
        Step(
            "default-routes",
            "each server's default route, if any (the platform uses none)",
            outbound_route,
            report=answers,
        ),
    ],
}


def runbook(argv: list[str]) -> tuple[Runbook, list[str]]:
    """The maintenance runbook for the command in `argv`, and the options left for the runbook shell."""
    own = argparse.ArgumentParser(prog="python runbooks/maintenance.py", add_help=False)
    own.add_argument("command", choices=COMMANDS)
    known, rest = own.parse_known_args(argv)
    command = known.command
    steps = [DEPLOY_STEPS[name] for name in COMMANDS[command]] + CHECKS.get(command, [])
    return Runbook("maintenance", f"{command}: {__doc__}", steps), rest


if __name__ == "__main__":
    chosen, options = runbook(sys.argv[1:])
    sys.exit(chosen.main(options))
