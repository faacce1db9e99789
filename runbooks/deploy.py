"""Deploy the whole platform in dependency order, each step gated by a health check.

    python runbooks/deploy.py --plan     # render everything into plan/<site>/, touch no host
    python runbooks/deploy.py --check    # read every host, show what would change
    python runbooks/deploy.py            # converge; a re-run that changes nothing says so
    python runbooks/deploy.py --serial   # the steps one after another, in the listed order

The steps are tasks/registry.py's STEPS: preflight, the package transaction, then its
components in DEPLOY's order. Each runs as soon as the steps it is `after` are done.
"""

import gc
import sys
from pathlib import Path

gc.disable()  # until the modules and settings are loaded: Runbook.main resumes it (and says why)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runbooks.shell import Runbook  # noqa: E402 (after the pause above)
from tasks.registry import STEPS  # noqa: E402

RUNBOOK = Runbook(
    "deploy",
    "Deploy the Matrix homeserver platform onto the servers of the inventory.",
    list(STEPS),
    graph=True,
)


if __name__ == "__main__":
    sys.exit(RUNBOOK.main())
