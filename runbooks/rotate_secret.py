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
synapse_db_password. The runbook options (--lab, --check, --yes, …) follow the name.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.secrets import ROTATABLE, rotate
from core.settings import Settings
from runbooks.deploy import RUNBOOK as DEPLOY
from runbooks.shell import Runbook
from tasks.remote import Mode


def runbook(argv: list[str]) -> tuple[Runbook, list[str]]:
    """The rotation of the secret `argv` names, and the options left for the runbook shell."""
    own = argparse.ArgumentParser(
        prog="python runbooks/rotate_secret.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    own.add_argument("name", choices=ROTATABLE, help="the secret to replace")
    if {"-h", "--help"} & set(argv) and not (argv and argv[0] in ROTATABLE):
        print(f"usage: python runbooks/rotate_secret.py NAME [options]; NAME: one of {', '.join(ROTATABLE)}\n")
        Runbook("rotate_secret", __doc__ or "", DEPLOY.steps).parser().print_help()
        sys.exit(0)
    known, rest = own.parse_known_args(argv)

    def new_value(settings: Settings, mode: Mode) -> Settings:
        secrets = rotate(settings.secrets, known.name, settings.catalog.secrets[known.name], write=mode is Mode.APPLY)
        return dataclasses.replace(settings, secrets=secrets)

    return Runbook("rotate_secret", __doc__ or "", DEPLOY.steps, confirm=True, prepare=new_value), rest


if __name__ == "__main__":
    chosen, options = runbook(sys.argv[1:])
    sys.exit(chosen.main(options))
