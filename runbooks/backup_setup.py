"""Backups: pgBackRest, the media pull and the key archive; and how old the newest of each is.

    python runbooks/backup_setup.py          # converge; `--check` shows what would change
    python runbooks/backup_setup.py check    # newest database backup, media snapshot and key
                                             # archive; exit 1 when one is older than
                                             # backup.max_age_hours (or missing)

The setup steps also run inside `python runbooks/deploy.py` (deployment step 13); this
runbook runs only them, e.g. after changing config.yaml's `backup` section. The runbook
options (--lab, --check, --limit, …) follow the subcommand.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.step import Step
from runbooks.deploy import RUNBOOK as DEPLOY
from runbooks.shell import Runbook
from tasks.backup import backup_ages, freshness_table, too_old

BACKUP_STEPS = ("pgbackrest", "backup-repository", "backup-source", "backup-files", "first-backup")

CHECK = Step(
    "backup-age",
    "on the backup host: when the newest database backup, media snapshot and key archive were made",
    backup_ages,
    groups=("backup",),
    gate=too_old,
    report=freshness_table,
    live=True,
)


def runbook(argv: list[str]) -> tuple[Runbook, list[str]]:
    """The runbook for the subcommand in `argv`, and the options left for it."""
    if argv and argv[0] == "check":
        return Runbook("backup_setup", f"check: the age of every kind of backup.\n{__doc__}", [CHECK]), argv[1:]
    rest = argv[1:] if argv and argv[0] == "setup" else argv
    steps = [s for s in DEPLOY.steps if s.name in BACKUP_STEPS]
    return Runbook("backup_setup", __doc__ or "", steps), rest


if __name__ == "__main__":
    chosen, options = runbook(sys.argv[1:])
    sys.exit(chosen.main(options))
