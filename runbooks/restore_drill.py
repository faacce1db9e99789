"""Restore drill: the newest backup restored into a scratch PostgreSQL on the backup host.

    python runbooks/restore_drill.py                 # restore to a replica's current position and
                                                     # compare row counts with it
    python runbooks/restore_drill.py --time 2026-11-28T03:00:00+00:00   # point-in-time restore
    python runbooks/restore_drill.py --keep          # leave the scratch instance running to inspect
                                                     # (socket in /var/lib/matrix-restore/run, port 5439)

The drill empties e2e_one_time_keys_json before anything could start Synapse on the copy,
finds every local media file of the restored database in the newest media snapshot, and
compares the archived signing key with the Synapse host's. It only reads the production
cluster. Exit 1 when a comparison fails. The runbook options (--lab, --check, …) follow.
"""

import argparse
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.step import Step
from runbooks.shell import Runbook
from tasks.restore_drill import (
    drill_problems,
    drill_report,
    pgbackrest_time,
    restore_drill,
    restore_time,
)


def runbook(argv: list[str]) -> tuple[Runbook, list[str]]:
    """The drill for the options in `argv`, and the options left for the runbook shell."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--time", default=None, type=restore_time)
    own.add_argument("--keep", action="store_true")
    known, rest = own.parse_known_args(argv)
    step = Step(
        "restore",
        "restore into the scratch instance on the backup host; counts, one-time keys, media, signing key",
        partial(restore_drill, time=pgbackrest_time(known.time) if known.time else None, keep=known.keep),
        groups=("backup",),
        gate=drill_problems,
        report=drill_report,
    )
    return Runbook("restore_drill", __doc__ or "", [step]), rest


if __name__ == "__main__":
    chosen, options = runbook(sys.argv[1:])
    sys.exit(chosen.main(options))
