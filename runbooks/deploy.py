"""Deploy the whole platform in dependency order, each step gated by a health check.

    python runbooks/deploy.py --plan     # render everything into plan/<site>/, touch no host
    python runbooks/deploy.py --check    # read every host, show what would change
    python runbooks/deploy.py            # converge; a re-run that changes nothing says so

The tiers of SPEC "Deployment order" join the step list as they land.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runbook import Runbook, Step
from tasks.hosts_file import hosts_file
from tasks.preflight import duplicate_hostnames, preflight

RUNBOOK = Runbook(
    "deploy",
    "Deploy the Matrix homeserver platform onto the servers of the inventory.",
    [
        Step(
            "preflight",
            "SSH, sudo, OS, clock, disk, python3, free ports, unique host names",
            preflight,
            gate=lambda result, _settings: duplicate_hostnames(result),
        ),
        Step("hosts-file", "/etc/hosts maps the homeserver name to the VIP and every service name", hosts_file),
    ],
)

if __name__ == "__main__":
    sys.exit(RUNBOOK.main())
