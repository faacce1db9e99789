"""Rolling OS restarts: every server rebooted, one at a time, each followed by health gates.

The order (each group's `reboot_rank`, declared by the component that owns the group) goes
from hosts whose loss nobody notices to the ones that matter most: monitoring and backup,
then the redundant tiers one host at a time (Coturn, LiveKit, MinIO, HAProxy — Keepalived
moves the VIP), the Patroni members (the primary hands over first — to the synchronous
standby with synchronous_mode, else preferably to a replica already rebooted — as
autobase's rolling maintenance does), and the Synapse host last: it has no peer, so its
reboot is an outage of the homeserver until it is back.

Before each reboot the platform must be healthy (the drills' check: one Patroni leader
with every replica streaming, etcd healthy, the VIP on one host, every Coturn host
allocating); after it the host must be back (a new boot id, systemd `running`, no failed
unit, Synapse's processes answering) and the platform healthy again. Otherwise the run
stops at that host, naming what is wrong, and the hosts after it are not touched.
"""

from __future__ import annotations

import json
import time

from nornir.core.task import Result, Task

from core.connection import CONNECTION
from core.errors import HostError
from core.settings import Settings
from core.ssh_library import paramiko
from tasks.drills import REJOIN_STABLE, platform_problems, wait_until
from tasks.patroni import api_base, await_cluster, cluster, leader_of, rest_get, rest_write
from tasks.remote import Expectation, Mode, inventory_host, mode, run
from tasks.synapse import health_urls, native
from tasks.waits import wait_for_urls

BACK_SECONDS = 300  # from the reboot to SSH and systemd `running`
HEALTHY_SECONDS = 300  # then to a healthy platform (a replica catching up, the VIP settling)
BOOT_ID = "cat /proc/sys/kernel/random/boot_id"


def reboot_order(name: str, settings: Settings) -> tuple[int, int]:
    """Where a host comes in the rolling order: by the most important group it is in (its `reboot_rank`), then as
    in the inventory."""
    return settings.catalog.reboot_rank(settings.hosts[name].groups), list(settings.hosts).index(name)


def switchover(task: Task, settings: Settings) -> str:
    """If this host is the Patroni leader, hand over to a streaming standby first; what was done.

    With synchronous_mode Patroni hands over only to the synchronous standby (it refuses
    any other, 412); without it, a replica rebooted before this host comes first, so it
    is not the next to need a switchover.
    """
    state = cluster(task, settings)
    if leader_of(state) != task.host.name:
        return ""
    wanted = ("sync_standby",) if settings.config.database.synchronous_mode else ("sync_standby", "replica")
    standbys = [m for m in state["members"] if m["role"] in wanted and m["state"] == "streaming"]
    if not standbys:
        raise HostError(
            f"{task.host.name}: the Patroni leader has no streaming {' or '.join(wanted)} to hand over to; not rebooted"
        )
    here = reboot_order(task.host.name, settings)
    candidate = min(standbys, key=lambda m: (reboot_order(m["name"], settings) > here, m["name"]))["name"]
    leader = next(m for m in state["members"] if m["name"] == task.host.name)
    status, answer = rest_write(
        task, settings, "POST", api_base(leader) + "/switchover", {"leader": task.host.name, "candidate": candidate}
    )
    if status != 200:
        raise HostError(f"{task.host.name}: switchover to {candidate} refused ({status}): {answer[:200]}; not rebooted")
    await_cluster(task, settings, lambda s: leader_of(s) == candidate, f"{candidate} leading after the switchover")
    return f"switched over to {candidate}, "


def member_problems(task: Task, settings: Settings) -> list[str]:
    """This host's Patroni, asked itself: the cluster's view may still hold its member key from before the reboot."""
    status, body = rest_get(task, "/patroni", settings.hosts[task.host.name].private_ip)
    if status != 200:
        return [f"{task.host.name}: Patroni's REST API answers {status}"]
    me = json.loads(body)
    if me.get("state") != "running" or (me.get("role") != "primary" and me.get("replication_state") != "streaming"):
        return [
            f"{task.host.name}: Patroni reports {me.get('role')} {me.get('state')}, "
            f"replication {me.get('replication_state', 'none')}"
        ]
    return []


def come_back(task: Task, before: str) -> None:
    """Wait until the host answers SSH from a new boot and systemd has started everything."""
    host = inventory_host(task, None)
    deadline = time.monotonic() + BACK_SECONDS
    while True:
        if CONNECTION in host.connections:
            host.close_connection(CONNECTION)  # the old session died with the old boot
        try:
            if run(task, BOOT_ID, timeout=10).stdout.strip() != before:
                break
        except (HostError, OSError, EOFError, paramiko.SSHException):  # down, or going down under the command
            pass
        if time.monotonic() > deadline:
            raise HostError(f"{task.host.name}: not back over SSH {BACK_SECONDS} s after its reboot; check its console")
        time.sleep(2)
    state = run(task, "systemctl is-system-running --wait", ok_codes=(0, 1), timeout=BACK_SECONDS).stdout.strip()
    if state != "running":
        failed = run(task, "systemctl --failed --plain --no-legend", what=Expectation("the failed units")).stdout
        units = ", ".join(line.split()[0] for line in failed.splitlines() if line.strip()) or "none listed"
        raise HostError(
            f"{task.host.name}: systemd is {state or 'unknown'} after the reboot (failed units: {units}); "
            "read their journal (journalctl -b -u UNIT) and fix them before rebooting the next host"
        )


def rolling_reboot(task: Task, settings: Settings) -> Result:
    """Reboot this host once the platform is healthy, and wait until it and the platform are healthy again."""
    name = task.host.name
    member = "patroni" in settings.hosts[name].groups
    if mode(task) is not Mode.APPLY:
        note = " (after a switchover if it leads)" if member else ""
        return Result(host=task.host, changed=True, diff=f"reboot{note}")
    found = platform_problems(task, settings)
    if found:
        raise HostError(f"{name}: not rebooted, the platform is not healthy: {'; '.join(found)}")
    handed = switchover(task, settings) if member else ""
    before = run(task, BOOT_ID, what=Expectation("the host's boot id")).stdout.strip()
    started = time.monotonic()
    run(
        task,
        "systemd-run --quiet --on-active=1 systemctl reboot",
        what=Expectation("a reboot scheduled", "check that the host runs systemd"),
    )
    come_back(task, before)
    back = time.monotonic()
    if "synapse" in settings.hosts[name].groups and native(settings):
        wait_for_urls(task, list(health_urls(settings, settings.hosts[name].private_ip).values()), timeout=300)

    def unhealthy() -> list[str]:
        return (member_problems(task, settings) if member else []) + platform_problems(task, settings)

    if wait_until(lambda: not unhealthy(), HEALTHY_SECONDS, stable=REJOIN_STABLE) is None:
        raise HostError(
            f"{name}: the platform is not healthy {HEALTHY_SECONDS} s after its reboot: {'; '.join(unhealthy())}. "
            "The hosts after it are not rebooted"
        )
    healthy = time.monotonic() - back
    return Result(
        host=task.host,
        changed=True,
        diff=f"{handed}rebooted: back in {back - started:.1f} s, healthy {healthy:.1f} s later",
    )
