"""Restore drill: the newest backup restored into a scratch PostgreSQL on the backup host.

    python runbooks/restore_drill.py                 # restore to a replica's current position and
                                                     # compare row counts with it
    python runbooks/restore_drill.py --time 2026-11-28T03:00:00+00:00   # point-in-time restore
    python runbooks/restore_drill.py --keep          # leave the scratch instance running to inspect
                                                     # (socket in /var/lib/matrix-restore/run, port 5439)

The drill empties e2e_one_time_keys_json before anything could start Synapse on the copy,
finds every local media file of the restored database in the newest media snapshot, and
compares the archived signing key with the Synapse host's. It only reads the production
cluster. Exit 1 when a comparison fails. The runbook options (--lab, --check, …) go with them.
"""

import argparse
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.step import Step
from runbooks.commands import Command, Commands, flag
from runbooks.shell import Runbook
from tasks.restore_drill import (
    drill_problems,
    drill_report,
    pgbackrest_time,
    restore_drill,
    restore_time,
)

# The point in time to restore to (this drill and disaster recovery).
RESTORE_TIME = flag(
    "--time",
    type=restore_time,
    metavar="ISO-TIME",
    help="restore to this point in time, with its UTC offset, e.g. 2026-11-28T03:00:00+00:00",
)


def drill(flags: argparse.Namespace) -> Runbook:
    step = Step(
        "restore",
        "restore into the scratch instance on the backup host; counts, one-time keys, media, signing key",
        partial(restore_drill, time=pgbackrest_time(flags.time) if flags.time else None, keep=flags.keep),
        groups=("backup",),
        gate=drill_problems,
        report=drill_report,
    )
    return Runbook("restore_drill", __doc__ or "", [step])


COMMANDS = Commands(
    "restore_drill.py",
    __doc__ or "",
    (
        Command(
            "",
            "the restore drill",
            drill,
            flags=(
                RESTORE_TIME,
                flag("--keep", action="store_true", help="leave the scratch instance running to inspect"),
            ),
        ),
    ),
    default="",
)
runbook = COMMANDS.choose


if __name__ == "__main__":
    sys.exit(COMMANDS.main(sys.argv[1:]))
