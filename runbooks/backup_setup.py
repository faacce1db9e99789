"""Set up backups: pgBackRest on the database hosts and its repository on the backup host.

    python runbooks/backup_setup.py          # converge; `--check` shows what would change

The same steps run inside `python runbooks/deploy.py` (deployment step 13); this runbook
runs only them, e.g. after changing config.yaml's `backup` section.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runbook import Runbook
from runbooks.deploy import RUNBOOK as DEPLOY

BACKUP_STEPS = ("pgbackrest", "backup-repository")

RUNBOOK = Runbook("backup_setup", __doc__ or "", [s for s in DEPLOY.steps if s.name in BACKUP_STEPS])

if __name__ == "__main__":
    sys.exit(RUNBOOK.main())
