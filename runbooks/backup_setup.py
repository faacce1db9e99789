"""Backups: pgBackRest, the media pull and the key archive; and how old the newest of each is.

    python runbooks/backup_setup.py          # converge; `--check` shows what would change
    python runbooks/backup_setup.py check    # newest database backup, media snapshot and key
                                             # archive; exit 1 when one is older than
                                             # backup.max_age_hours (or missing)

The setup steps also run inside `python runbooks/deploy.py` (deployment step 13); this
runbook runs only them, e.g. after changing config.yaml's `backup` section. The runbook
options (--lab, --check, --limit, …) go before or after the command.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.step import Step
from runbooks.commands import Command, Commands
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


COMMANDS = Commands(
    "backup_setup.py",
    __doc__ or "",
    (
        Command(
            "setup",
            "converge pgBackRest, the repository, the media and key pulls and their timers",
            lambda _: Runbook(
                "backup_setup", "Set the backups up.", [s for s in DEPLOY.steps if s.name in BACKUP_STEPS]
            ),
        ),
        Command(
            "check",
            "the age of the newest database backup, media snapshot and key archive; exit 1 past backup.max_age_hours",
            lambda _: Runbook("backup_setup", "Check the age of every kind of backup.", [CHECK]),
        ),
    ),
    default="setup",
)
runbook = COMMANDS.choose


if __name__ == "__main__":
    sys.exit(COMMANDS.main(sys.argv[1:]))
