"""Certificates: distribute, check, renew.

    python runbooks/certificates.py                    # distribute: CA trust and every holder of a certificate
                                                       # (etcd, Patroni/PostgreSQL, pgBackRest, PgBouncer,
                                                       # HAProxy, Coturn); verify what is served
    python runbooks/certificates.py check              # days left of every served certificate; fails under
                                                       # certificates.min_days_left; writes the expiry metric
    python runbooks/certificates.py renew [--name N]   # issue anew (internal CA; N from the table, default all)
                                                       # or re-read certificates.import_dir, then distribute

Every consumer reloads or restarts only when its own certificate changed. The runbook
options (--plan, --check, --limit, --lab, …) go before or after the command.
"""

import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.settings import Settings
from core.step import Step
from runbooks.commands import Command, Commands, flag
from runbooks.shell import Runbook
from tasks.backup import BACKUP_REPOSITORY, PGBACKREST
from tasks.certificates import CA_TRUST, expiring, expiry_check, expiry_table, reissue, unknown_names, unverified
from tasks.coturn import COTURN, TURN_TLS
from tasks.etcd import ETCD
from tasks.haproxy import HAPROXY
from tasks.livekit import LIVEKIT_REDIS, LIVEKIT_SENTINEL
from tasks.patroni import PATRONI
from tasks.pgbouncer import PGBOUNCER

# Every component that holds a certificate of the site CA (or the imported edge set), in the
# deploy's order. Each writes only what changed and then reloads or restarts by its own rule:
# PostgreSQL (through Patroni's reload), Patroni's REST API, PgBouncer, HAProxy and Redis reload and
# keep their connections; etcd reads its certificate anew on each connection; pgBackRest's
# server, Coturn (DTLS) and Redis Sentinel restart.
CONSUMERS = (
    CA_TRUST,
    ETCD,
    PATRONI,
    PGBACKREST,
    BACKUP_REPOSITORY,
    PGBOUNCER,
    HAPROXY,
    COTURN,
    TURN_TLS,
    LIVEKIT_REDIS,
    LIVEKIT_SENTINEL,
)

DISTRIBUTION = [
    *(consumer.step() for consumer in CONSUMERS),
    Step(
        "served",
        "from the monitoring host: every TLS endpoint serves a chain that verifies for its name",
        expiry_check,
        groups=("monitoring",),
        gate=unverified,
        report=expiry_table,
        live=True,
    ),
]

CHECK = Step(
    "expiry",
    "from the monitoring host: days left of every served certificate, written for Prometheus",
    expiry_check,
    groups=("monitoring",),
    gate=expiring,
    report=expiry_table,
    live=True,
)


def internal(settings: Settings) -> bool:
    """used with the internal CA only; an imported set is renewed by importing it again (certificates.import_dir)"""
    return settings.config.certificates.source == "internal"


def renew_step(names: tuple[str, ...]) -> Step:
    return Step(
        "reissue",
        f"the site CA retires {', '.join(names)}; the next steps issue and distribute new ones",
        partial(reissue, names=names),
        groups=("monitoring",),
        applies=internal,
        requires=partial(unknown_names, names=names),
    )


COMMANDS = Commands(
    "certificates.py",
    __doc__ or "",
    (
        Command(
            "distribute",
            "the CA's trust and every holder's certificate, then verify what is served",
            lambda _: Runbook(
                "certificates", "Distribute the site's certificates, and verify what is served.", DISTRIBUTION
            ),
        ),
        Command(
            "check",
            "chain, name and days left of every served certificate; fails under certificates.min_days_left",
            lambda _: Runbook("certificates", "Check chain, name and days left of every served certificate.", [CHECK]),
        ),
        Command(
            "renew",
            "issue anew (internal CA) or re-read certificates.import_dir, then distribute",
            lambda flags: Runbook(
                "certificates",
                "Renew certificates: issue anew and distribute.",
                [renew_step(tuple(flags.name or ["all"])), *DISTRIBUTION],
            ),
            flags=(
                flag(
                    "--name",
                    action="append",
                    default=[],
                    metavar="N",
                    help="a certificate from the expiry table (repeatable; default: all)",
                ),
            ),
        ),
    ),
    default="distribute",
)
runbook = COMMANDS.choose


if __name__ == "__main__":
    sys.exit(COMMANDS.main(sys.argv[1:]))
