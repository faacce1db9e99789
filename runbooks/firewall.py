"""Firewall: who may open which port of which server, and whether the servers agree.

    python runbooks/firewall.py matrix     # the matrix from the config and inventory: every port of every
                                           # server and who may open it; touches no host
    python runbooks/firewall.py audit      # from every server, connect to every listening TCP port of every
                                           # other server; exit 1 unless exactly the matrix's ports answered

The matrix comes from the ports the components declare: SSH and the public ports are open
to anyone, a private port only to the servers of the groups that use it (Synapse's
listeners to the HAProxy hosts, each exporter to the monitoring host, …). The deploy's
firewall step writes it into every server's nftables rules. Both commands take --lab,
--config and --inventory; audit takes the runbook options (--limit, --report, …) as well.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.markup import escape

from core.step import Step
from runbooks.commands import Command, Commands
from runbooks.offline import add_settings_options, read_settings
from runbooks.shell import Runbook
from runbooks.terminal import terminal
from tasks.firewall_audit import audit, audit_report, findings, matrix

AUDIT = Step(
    "audit",
    "from every server, every listening TCP port of every other server: open exactly where the matrix says",
    audit,
    groups=("monitoring",),  # run once; the probes run on every server
    gate=findings,
    report=audit_report,
    live=True,
)


def show_matrix(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python runbooks/firewall.py matrix", description=__doc__.splitlines()[0])
    add_settings_options(parser)
    args = parser.parse_args(argv)
    console = terminal()
    read = read_settings(args, console, "firewall")
    if read is None:
        return 2
    settings = read.settings
    rows = matrix(settings)
    port_width = max(len(row.port) for row in rows)
    service_width = max(len(row.service) for row in rows)
    console.print(f"firewall matrix of {read.config.name} and {read.inventory}: who may open which port")
    for index, row in enumerate(rows):
        if index == 0 or rows[index - 1].hosts != row.hosts:
            console.print(escape(row.hosts))
        console.print(escape(f"  {row.port:{port_width}}  {row.service:{service_width}}  {row.open_to}"))
    console.print("Anything else is dropped; a server reaches its own ports over loopback.")
    return 0


COMMANDS = Commands(
    "firewall.py",
    __doc__ or "",
    (
        Command(
            "matrix",
            "every port of every server and who may open it, from the config and inventory; touches no host",
            None,
            offline=show_matrix,
        ),
        Command(
            "audit",
            "from every server, every listening TCP port of every other server; exit 1 unless the matrix's answered",
            lambda _: Runbook("firewall", "Audit: the firewall matrix against the servers.", [AUDIT]),
        ),
    ),
)


if __name__ == "__main__":
    sys.exit(COMMANDS.main(sys.argv[1:]))
