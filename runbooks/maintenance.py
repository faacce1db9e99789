"""Maintenance: apply one kind of change and touch only what it concerns, each step gated.

    python runbooks/maintenance.py update       # after pinning a new Synapse version (artifacts/manifest.yaml,
                                                # native mode) or a new playbook commit (versions.playbook):
                                                # native installs it beside the running one and restarts one
                                                # process at a time behind HAProxy (drain, restart, health,
                                                # ready + slowstart); playbook mode runs the playbook's tags
    python runbooks/maintenance.py workers      # after changing synapse.workers, scale or ccu in config.yaml:
                                                # worker processes added/removed, HAProxy routing, firewall,
                                                # Prometheus targets; other processes keep running
    python runbooks/maintenance.py federation   # after changing synapse.federation: Synapse, the 8448
                                                # frontend and the firewall together, then 8448 checked
    python runbooks/maintenance.py rolling-restart   # reboot every server (or --limit's), one at a time:
                                                # least important first, the Patroni primary after a
                                                # switchover, Synapse's host last; each must be back and the
                                                # platform healthy before the next (asks first; --yes)
    python runbooks/maintenance.py intranet     # the network transition: /etc/hosts everywhere, every name
                                                # resolved from /etc/hosts alone, no time server or Synapse
                                                # setting that needs the internet, default routes reported
    python runbooks/maintenance.py storage      # every volume's use, growth (from Prometheus) and days until
                                                # full with what to do; the database's largest tables and
                                                # transaction-ID age; the media store by kind. Reads only;
                                                # exit 1 when a volume needs action now
    python runbooks/maintenance.py purge-media  # synapse.retention's media lifetimes applied now (Synapse does it
                                                # hourly): other servers' media and, when local_media is set,
                                                # uploads unused that long are deleted; says how many
    python runbooks/maintenance.py compress-state  # a state compressor run now (its timer runs one daily):
                                                # state_groups_state rows saved, chunks, what is left

Each runs the deploy's steps for its change (update and rolling-restart add their own
rolling steps) with their health gates, so a re-run that changes nothing says so. Adding
a sync or generic worker starts only that worker; a change of event persisters or
federation senders restarts every Synapse process (they share the stream writer map).
The runbook options (--lab, --check, --plan, …) go before or after the command.
"""

import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.step import Step
from runbooks.commands import Command, Commands
from runbooks.deploy import RUNBOOK as DEPLOY
from runbooks.display import answers
from runbooks.shell import Runbook
from runbooks.validate import FEDERATION
from tasks.compress_state import compress_now, compress_table
from tasks.hosts_file import outbound_route, outside_dependencies, verify_resolution
from tasks.media_purge import purge_media, purge_table
from tasks.reboots import reboot_order, rolling_reboot
from tasks.rolling import SYNAPSE_ROLLING
from tasks.state_compressor import compressing
from tasks.storage import (
    database_table,
    database_usage,
    media_table,
    media_usage,
    needing_action,
    volumes_and_growth,
    volumes_table,
)
from tasks.synapse import SYNAPSE_STAGE

DEPLOY_STEPS = {step.name: step for step in DEPLOY.steps}
UPDATE = [
    DEPLOY_STEPS["haproxy"],  # routing as the deploy wants it: every process and the main one as backup
    SYNAPSE_STAGE.step(),
    SYNAPSE_ROLLING.step(),
    DEPLOY_STEPS["synapse-playbook"],
]
STEPS = {
    "update": UPDATE,
    "workers": [DEPLOY_STEPS[name] for name in ("firewall", "synapse", "synapse-playbook", "haproxy", "monitoring")],
    "federation": [
        *(DEPLOY_STEPS[name] for name in ("firewall", "synapse", "synapse-playbook", "haproxy")),
        replace(FEDERATION, name="federation-check"),
    ],
    "rolling-restart": [
        Step(
            "rolling-restart",
            "each server rebooted once the platform is healthy, then back and healthy before the next",
            rolling_reboot,
            serial=True,
            order=reboot_order,
        )
    ],
    "intranet": [
        DEPLOY_STEPS["hosts-file"],
        Step(
            "offline-names",
            "every platform name resolves from /etc/hosts alone (no DNS server needed)",
            partial(verify_resolution, files_only=True),
            report=answers,
            live=True,
        ),
        Step(
            "outside-dependencies",
            "nothing on a server needs the internet: its time source, Synapse's outbound settings",
            outside_dependencies,
            report=answers,
            live=True,
        ),
        Step(
            "default-routes",
            "each server's default route, if any (the platform uses none)",
            outbound_route,
            report=answers,
            live=True,
        ),
    ],
    "storage": [
        Step(
            "volumes",
            "every server's volumes: size, use, how fast each fills (Prometheus) and when it is full",
            volumes_and_growth,
            report=volumes_table,
            gate=needing_action,
            live=True,
        ),
        Step(
            "database-usage",
            "the Synapse database on the primary: its size, largest tables, dead rows, transaction-ID age",
            database_usage,
            groups=("patroni",),
            report=database_table,
            live=True,
        ),
        Step(
            "media-usage",
            "Synapse's media store by kind: uploads, thumbnails, other servers' media, URL previews",
            media_usage,
            groups=("synapse",),
            report=media_table,
            live=True,
        ),
    ],
    "purge-media": [
        Step(
            "purge-media",
            "media unused for longer than synapse.retention's lifetimes deleted now, through Synapse's admin API",
            purge_media,
            groups=("synapse",),
            report=purge_table,
        )
    ],
    "compress-state": [
        Step(
            "compress-state",
            "one run of the state compressor now: state_groups_state rewritten into fewer rows, a chunk at a time",
            compress_now,
            groups=("synapse",),
            report=compress_table,
            applies=compressing,
        )
    ],
}


SUMMARIES = {
    "update": "install a newly pinned Synapse (native) or playbook commit, one process at a time behind HAProxy",
    "workers": "after changing synapse.workers, scale or ccu: workers, HAProxy routing, firewall, scrape targets",
    "federation": "after changing synapse.federation: Synapse, the 8448 frontend and the firewall, then 8448 checked",
    "rolling-restart": "reboot every server (or --limit's) one at a time, least important first (asks first; --yes)",
    "intranet": "the network transition: /etc/hosts everywhere, names from /etc/hosts alone, nothing outside needed",
    "storage": "how full each volume is, how fast it fills, what fills it; exit 1 when one needs action now",
    "purge-media": "apply synapse.retention's media lifetimes now instead of at Synapse's next hourly pass",
    "compress-state": "run the state compressor now (its timer runs it daily): state rows saved, what is left",
}


def command(name: str) -> Command:
    # rolling-restart reboots: an outage of Synapse while its host is down, so it asks first.
    made = Runbook(
        "maintenance",
        f"maintenance {name}: {SUMMARIES[name]}.",
        STEPS[name],
        confirm=name == "rolling-restart",
        checklist=name == "storage",  # a report: each part is read whatever another found
    )
    return Command(name, SUMMARIES[name], lambda _: made)


COMMANDS = Commands("maintenance.py", __doc__ or "", tuple(command(name) for name in STEPS))
runbook = COMMANDS.choose


if __name__ == "__main__":
    sys.exit(COMMANDS.main(sys.argv[1:]))
