"""Replace one secret on a running platform: a new value in the secrets file, then the deploy that takes it everywhere.

    python runbooks/rotate_secret.py turn_shared_secret           # asks first (--yes without a terminal)
    python runbooks/rotate_secret.py haproxy_stats_password --check   # what would change; nothing is written

The servers carry the fingerprint of the secrets they were deployed with, and a run whose
secrets differ refuses before touching anything (tasks/site_identity.py): editing a value
in the secrets file by hand is refused like another site's file. This command writes the
new value together with the fingerprint the file had before, then runs the deploy; the
servers' identity moves to the new fingerprint as the deploy reaches them, and a deploy
re-run after an interruption finishes the job. The old value stays in the file (as
"previous NAME") so no output ever shows it.

Secrets that can be rotated this way (every consumer is a file the deploy renders and
restarts or reloads on change): turn_shared_secret, haproxy_stats_password,
synapse_db_password. The runbook options (--lab, --check, --yes, …) go before or after the name.
"""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.secrets import ROTATABLE, rotate
from core.settings import Settings
from runbooks.commands import Command, Commands
from runbooks.deploy import RUNBOOK as DEPLOY
from runbooks.shell import Runbook
from tasks.remote import Mode


def rotation(name: str) -> Command:
    """The command replacing the secret `name`, then deploying it."""

    def new_value(settings: Settings, mode: Mode) -> Settings:
        secrets = rotate(settings.secrets, name, settings.catalog.secrets[name], write=mode is Mode.APPLY)
        return dataclasses.replace(settings, secrets=secrets)

    said = f"Rotate {name}: a new value in the secrets file, then the deploy that takes it everywhere."
    made = Runbook("rotate_secret", said, DEPLOY.steps, confirm=True, prepare=new_value)
    return Command(name, f"a new {name}, deployed everywhere it is used", lambda _: made)


COMMANDS = Commands("rotate_secret.py", __doc__ or "", tuple(rotation(name) for name in ROTATABLE))
runbook = COMMANDS.choose


if __name__ == "__main__":
    sys.exit(COMMANDS.main(sys.argv[1:]))
