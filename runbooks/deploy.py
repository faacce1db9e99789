"""Deploy the whole platform in dependency order, each step gated by a health check.

    python runbooks/deploy.py --plan     # render everything into plan/<site>/, touch no host
    python runbooks/deploy.py --check    # read every host, show what would change
    python runbooks/deploy.py            # converge; a re-run that changes nothing says so

The steps after preflight are tasks/registry.py's STEPS: its components in DEPLOY's order.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.step import Step
from runbooks.shell import Runbook
from tasks.preflight import duplicate_hostnames, preflight
from tasks.registry import STEPS

PREFLIGHT = Step(
    "preflight",
    "SSH, sudo, OS, clock, disk, python3, free ports, unique host names",
    preflight,
    gate=lambda result, _settings: duplicate_hostnames(result),
    live=True,
)
RUNBOOK = Runbook(
    "deploy",
    "Deploy the Matrix homeserver platform onto the servers of the inventory.",
    [PREFLIGHT, *STEPS],
)


if __name__ == "__main__":
    sys.exit(RUNBOOK.main())
