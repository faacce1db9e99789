"""The lab: the inventory's hosts as real systemd servers on this machine.

    python runbooks/lab.py up          # build what is missing, boot every host (idempotent)
    python runbooks/lab.py status      # each host's state
    python runbooks/lab.py ssh HOST    # a shell on a host, as the deploy user
    python runbooks/lab.py down        # remove every namespace, mount, veth and process of the lab

Needs root. The first `up` builds a Debian 12 base with debootstrap (about a minute);
later ones reuse it.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.table import Table

from core.errors import InputError
from core.settings import load_settings
from lab import LAB_CONFIG, LAB_INVENTORY
from lab.lab import Lab, lab_hosts
from lab.shell import LabError
from runbooks.terminal import terminal
from tasks.registry import CATALOG


def load_lab(config: Path, inventory: Path) -> Lab:
    settings, _ = load_settings(config, inventory, catalog=CATALOG, allow_placeholders=True)
    return Lab(lab_hosts(settings))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python runbooks/lab.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["up", "down", "status", "ssh"])
    parser.add_argument("host", nargs="?", help="with ssh: the host to log in to")
    parser.add_argument("--config", type=Path, default=LAB_CONFIG)
    parser.add_argument("--inventory", type=Path, default=LAB_INVENTORY)
    args = parser.parse_args(argv)
    console = terminal()
    try:
        lab = load_lab(args.config, args.inventory)
        if args.action == "up":
            report = lab.up()
            base = f"built in {report.base_seconds:.0f}s" if report.base_built else "cached"
            console.print(f"lab up in {report.seconds:.1f}s (base {base}; booted {len(report.booted)} hosts)")
            for host, state in report.states.items():
                console.print(f"  {host:12} {state}")
        elif args.action == "down":
            lab.down()
            left = lab.leftovers()
            console.print("lab down: nothing left" if not left else f"lab down, but left: {', '.join(left)}")
            return 1 if left else 0
        elif args.action == "status":
            table = Table("host", "address", "state")
            for host, state in lab.status().items():
                table.add_row(host, next(str(h.address) for h in lab.hosts if h.name == host), state)
            console.print(table)
        else:
            host = next((h for h in lab.hosts if h.name == args.host), None)
            if host is None:
                console.print(f"no lab host '{args.host}'; hosts: {', '.join(h.name for h in lab.hosts)}")
                return 2
            os.execvp("ssh", [*lab.ssh_args(host), "-t"])
    except InputError as exc:
        console.print("\n".join(str(p) for p in exc.problems))
        return 2
    except LabError as exc:
        console.print(f"[red]lab: {exc}[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
