"""The failover drills' Matrix client: messages through the VIP, every acknowledged one checked afterwards.

Runs on the drills host as a transient systemd unit, like the write probe: two users of its
own (registered with the shared secret on the host's Synapse listener, their rate limits
lifted, deactivated afterwards) each send one message every 0.2 s to one private room through
the VIP, logging when each was sent and answered. Afterwards the room's timeline is read back:
an acknowledged message that is not there is lost; a sender's messages out of the order it
sent them are reported. What a client
saw is counted too: failed sends (5xx, timeouts) and stalls (answers slower than
`STALL` seconds). The shared secret reaches the host as a 0600 file, never a command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from nornir.core.task import Task

from core.settings import Settings
from tasks.drill_probes import WriteLog, launch, parse
from tasks.files import FileSpec, render
from tasks.haproxy import backends
from tasks.remote import Expectation, run

DIR = "/run/matrix-drill-messages"
SCRIPT = f"{DIR}/message-probe.py"
SETTINGS_FILE = f"{DIR}/settings.json"
STATE = f"{DIR}/state.json"
LOG = f"{DIR}/messages"  # one log per sender: messages-<sender>.log
UNIT = "matrix-drill-messages"
INTERVAL = 0.2
STALL = 5.0  # seconds: an answer slower than this is a stall a user notices


@dataclass(frozen=True)
class Messages:
    """What the probe saw and what the room holds."""

    log: WriteLog
    present: set[str]
    in_order: bool

    @property
    def lost(self) -> list[str]:
        return [event for event in self.log.details if event not in self.present]

    @property
    def errors(self) -> list[str]:
        """Failed sends, by what the client got: "HTTP 502", "TimeoutError", …"""
        return [a.detail for a in self.log.attempts if not a.ok]

    @property
    def stalls(self) -> int:
        return sum(1 for a in self.log.attempts if a.ok and a.answered - a.at > STALL)


def _settings_file(settings: Settings, run_id: str) -> str:
    listener = backends(settings)["client"].servers[0]  # what HAProxy sends clients to on the first Synapse host
    return json.dumps(
        {
            "listener": f"http://{listener['ip']}:{listener['port']}",
            "base": f"https://{settings.config.homeserver_fqdn}",
            "secret": settings.secrets["synapse_registration_shared_secret"],
            "user": f"drill-{run_id}",
        }
    )


def start(task: Task, settings: Settings, run_id: str) -> None:
    """Put the probe and its settings on the host and start it."""
    script = render(task, "drills/message-probe.py.j2", interval=INTERVAL, log_file=LOG, state_file=STATE)
    secrets = FileSpec(SETTINGS_FILE, _settings_file(settings, run_id), mode=0o600, secret=True)
    launch(task, UNIT, FileSpec(SCRIPT, script, mode=0o700), secrets, f"rm -f {LOG}-*.log {STATE}")


def stop(task: Task) -> Messages:
    """Stop the probe, read its log, and check every acknowledged message against the room."""
    out = run(
        task, f"systemctl stop {UNIT}; cat {LOG}-*.log", what=Expectation("the message probe stopped, its logs read")
    )
    log = parse(out.stdout)
    checked = run(
        task,
        f"python3 {SCRIPT} {SETTINGS_FILE} --check",
        what=Expectation("the room's timeline read back through the VIP"),
    )
    found = json.loads(checked.stdout)
    return Messages(log, set(found["present"]), found["in_order"])


def cleanup(task: Task) -> None:
    """Deactivate the probe's users and remove its files (the settings first)."""
    run(
        task,
        f"systemctl stop {UNIT} 2>/dev/null; [ ! -s {STATE} ] || python3 {SCRIPT} {SETTINGS_FILE} --retire; "
        f"rm -rf {DIR}",
        what=Expectation("the message probe's users deactivated and its files removed"),
    )
