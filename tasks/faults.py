"""The faults of the drills and of the soak, and the drills made of them.

A fault is one episode on the running platform: it picks its target from what the
platform says now (the Patroni leader, the VIP holder, the Redis master), applies the fault
on that host through the controller's connection, watches the platform react, undoes the
fault in a `finally` whatever happened and waits until the target serves again. It returns
the episode's `Record`: the moments (fault, detected, restored, rejoined) and what was wrong
with the platform's own reaction (no new leader, a flapping VIP). A drill is one fault under
the probes (`Load`) and the verdicts on what they measured; the soak (tasks/soak.py) runs
many faults, drawn at random, under one `Load`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial

from nornir.core.task import Result, Task

from core.errors import HostError
from core.settings import Settings
from tasks import redis_probe
from tasks.drills import (
    HEAL_UNIT,
    PARTITION_TABLE,
    REJOIN_STABLE,
    Load,
    Record,
    anchor,
    cluster,
    database_problems,
    etcd_problems,
    leader_of,
    vip_holders,
    wait_until,
)
from tasks.patroni import TTL, api_base, rest_get, rest_write
from tasks.remote import Expectation, Mode, mode, run

Fault = Callable[[Task, Settings, Load], Record]

# --- Patroni ------------------------------------------------------------------------------

FAULTS = {
    "stop": "systemctl stop patroni.service",
    # SIGKILL to Patroni and PostgreSQL (one cgroup); stopping the unit cancels the
    # automatic restart, as if the host had died.
    "kill": "systemctl kill --signal=SIGKILL patroni.service; sleep 0.2; systemctl stop patroni.service",
}
CUT_SECONDS = 40  # a network cut: longer than Patroni's ttl, so the leader key expires


def partition_script(seconds: int) -> str:
    """Drop all traffic but SSH on this host; a transient timer heals it by itself after `seconds`."""
    rules = (
        f"table inet {PARTITION_TABLE} {{\n"
        "  chain input { type filter hook input priority -10; policy drop; iif lo accept; tcp dport 22 accept; }\n"
        "  chain output { type filter hook output priority -10; policy drop; oif lo accept; tcp sport 22 accept; }\n"
        "}\n"
    )
    return (
        f"systemd-run --unit={HEAL_UNIT} --on-active={seconds} nft delete table inet {PARTITION_TABLE} >/dev/null && "
        f"nft -f - <<'EOF'\n{rules}EOF"
    )


def heal_script() -> str:
    return f"nft delete table inet {PARTITION_TABLE} 2>/dev/null; systemctl stop {HEAL_UNIT}.timer 2>/dev/null; true"


def current_leader(task: Task, settings: Settings) -> str:
    leader = leader_of(cluster(task, settings))
    if leader is None:
        raise HostError("no running Patroni leader to fault; run the drill on a healthy cluster")
    return leader


def rejoined(task: Task, settings: Settings, record: Record) -> None:
    """Wait until the database is whole: every replica streams the leader's timeline, for REJOIN_STABLE seconds on
    end (Patroni may still decide to rewind the old primary); then the leader change goes into the record."""
    record.rejoined_at = wait_until(
        lambda: not database_problems(cluster(task, settings), settings), 180, REJOIN_STABLE
    )
    new = leader_of(cluster(task, settings))
    record.notes.append(f"leader {record.target} → {new}")
    if record.detected_at is None or new in (None, record.target):
        record.problems.append(f"no new leader within 90 s of the fault (leader now: {new})")
    if record.rejoined_at is None:
        left = "; ".join(database_problems(cluster(task, settings), settings))
        record.problems.append(f"the cluster was not whole again within 180 s of the restore: {left}")


def patroni_fault(task: Task, settings: Settings, _load: Load, variant: str = "stop") -> Record:
    """Fault the primary: stop Patroni, kill -9 it and PostgreSQL, or cut its network for CUT_SECONDS."""
    old = current_leader(task, settings)
    fault = FAULTS.get(variant, f"network cut for {CUT_SECONDS} s (nftables, SSH kept)")
    record = Record("patroni", variant, old, f"{fault} on {old}")
    undo = heal_script() if variant == "partition" else "systemctl start patroni.service"
    record.fault_at = time.time()
    try:
        script = partition_script(CUT_SECONDS + 30) if variant == "partition" else FAULTS[variant]
        run(task, script, host=old, what=Expectation(f"the fault applied on {old}"))
        record.detected_at = wait_until(lambda: leader_of(cluster(task, settings, skip=old)) not in (None, old), 90)
        # The old primary stays down a while after the new leader is known: returning while
        # the new leader's end-of-recovery checkpoint still runs can make Patroni skip a needed
        # pg_rewind (patroni/patroni#3367), which a real failed host would not hit either. The
        # network cut lasts CUT_SECONDS whatever.
        hold = CUT_SECONDS if variant == "partition" else (record.detected_at or time.time()) - record.fault_at + 10
        time.sleep(max(0.0, record.fault_at + hold - time.time()))
    finally:
        run(task, undo, host=old, what=Expectation(f"the fault undone on {old}"))
        record.restored_at = time.time()
    rejoined(task, settings, record)
    return record


def switchover_fault(task: Task, settings: Settings, _load: Load) -> Record:
    """A planned switchover (Patroni's REST API, asked on the leader with its client certificate) to a streaming
    standby: the synchronous one where synchronous_mode is on."""
    old = current_leader(task, settings)
    state = cluster(task, settings)
    wanted = ("sync_standby",) if settings.config.database.synchronous_mode else ("sync_standby", "replica")
    standbys = sorted(m["name"] for m in state["members"] if m["role"] in wanted and m["state"] == "streaming")
    if not standbys:
        raise HostError(f"no streaming {' or '.join(wanted)} to switch over to")
    leader = next(m for m in state["members"] if m["name"] == old)
    record = Record("patroni", "switchover", old, f"switchover {old} → {standbys[0]} (Patroni REST API)")
    record.fault_at = time.time()
    status, answer = rest_write(
        task, settings, "POST", api_base(leader) + "/switchover", {"leader": old, "candidate": standbys[0]}, host=old
    )
    if status != 200:
        record.problems.append(f"switchover {old} → {standbys[0]} refused ({status}): {answer[:200]}")
    record.detected_at = wait_until(lambda: leader_of(cluster(task, settings)) not in (None, old), 60)
    record.restored_at = record.detected_at
    rejoined(task, settings, record)
    return record


# --- the VIP ------------------------------------------------------------------------------

VIP_FAULTS = {"haproxy": "systemctl stop haproxy.service", "keepalived": "systemctl stop keepalived.service"}
# The longest pause database writes may see while the edge fails: the write probe's own pace is
# 0.05 s and its gaps are 0.07-0.21 s through the other drills, but one CI run measured 0.52 s just
# as the VIP moved, on a lab whose two cores then also serve the clients' reconnections. Writes
# that went through the edge would stop for the whole move (the clients' gap: 1.2-1.9 s).
VIP_WRITE_GAP = 1.0


def vip_fault(task: Task, settings: Settings, _load: Load, variant: str = "haproxy") -> Record:
    """Stop HAProxy (or Keepalived) on the VIP holder: the VIP moves to the peer, and stays when it returns."""
    holder = vip_holders(task, settings)[0]
    peer = next(h.name for h in settings.members("haproxy") if h.name != holder)
    unit = f"{variant}.service"
    record = Record("vip", variant, holder, f"{VIP_FAULTS[variant]} on {holder}")
    record.fault_at = time.time()
    try:
        run(task, VIP_FAULTS[variant], host=holder, what=Expectation(f"{unit} stopped on {holder}"))
        record.detected_at = wait_until(lambda: vip_holders(task, settings) == [peer], 30)
        time.sleep(2)
    finally:
        run(task, f"systemctl start {unit}", host=holder, what=Expectation(f"{unit} started on {holder}"))
        record.restored_at = time.time()
    time.sleep(8)  # longer than Keepalived's rise + adverts: a preempting holder would take it back now
    record.rejoined_at = record.restored_at
    holders = vip_holders(task, settings)
    record.notes.append(f"VIP {holder} → {peer}; after the return: {holders}")
    if record.detected_at is None:
        record.problems.append(f"the VIP did not move to {peer} within 30 s")
    if holders != [peer]:
        record.problems.append(f"the VIP moved again after {holder} returned (now on {holders}): flapping")
    return record


def vip_verdict(record: Record, _load: Load) -> None:
    """Requests through the VIP answered again once the holder returned; database writes never paused."""
    https = [(at, ok) for at, ok, probe in record.samples if probe == "https"]
    failures = [at for at, ok in https if not ok]
    record.recovered_at = next((at for at, ok in https if ok and failures and at > failures[-1]), None)
    unit = f"{record.variant}.service"
    if [at for at in failures if at > (record.restored_at or 0)]:
        record.problems.append(f"requests through the VIP failed after {record.target} returned")
    if record.write_gap is None or record.write_gap > VIP_WRITE_GAP:
        gap = "no gap measured" if record.write_gap is None else f"a {record.write_gap:.2f} s gap"
        record.problems.append(
            f"database writes through PgBouncer had {gap} while {unit} was stopped on {record.target} (at most "
            f"{VIP_WRITE_GAP} s): the database path must not depend on the edge (haproxy-postgres.service)"
        )


# --- etcd ---------------------------------------------------------------------------------

ETCD_HOLD = TTL + 10  # longer than Patroni's ttl: a lost leader key would show


def primary_state(task: Task, settings: Settings, name: str) -> str:
    """What a member's REST API says of itself: its role and whether failsafe mode holds it up."""
    status, body = rest_get(task, "/patroni", settings.hosts[name].private_ip)
    if status != 200:
        return f"no answer from its REST API (HTTP {status})"
    facts = json.loads(body)
    return f"role {facts.get('role')}, failsafe mode active: {bool(facts.get('failsafe_mode_is_active'))}"


def etcd_fault(task: Task, settings: Settings, _load: Load, variant: str = "member") -> Record:
    """Stop etcd on one member that does not lead the database (`member`: nothing may change) or two (`quorum`)."""
    leader = current_leader(task, settings)
    others = [h.name for h in settings.members("patroni") if h.name != leader]
    targets = others[:1] if variant == "member" else others[:2]
    record = Record("etcd", variant, ",".join(targets), f"systemctl stop etcd on {', '.join(targets)}")
    record.fault_at = time.time()
    try:
        for target in targets:
            run(task, "systemctl stop etcd.service", host=target, what=Expectation(f"etcd stopped on {target}"))
        time.sleep(ETCD_HOLD)
        record.notes.append(f"with etcd down on {', '.join(targets)}: leader {leader_of(cluster(task, settings))}")
        if variant == "quorum":
            record.notes.append(f"{leader} says: {primary_state(task, settings, leader)}")
    finally:
        for target in targets:
            run(task, "systemctl start etcd.service", host=target, what=Expectation(f"etcd started on {target}"))
        record.restored_at = time.time()
    record.rejoined_at = wait_until(lambda: not etcd_problems(task, settings), 60)
    after = leader_of(cluster(task, settings))
    record.notes.append(f"leader before {leader}, after {after}")
    if variant == "member" and after != leader:
        record.problems.append(f"losing one etcd member changed the database leader ({leader} → {after})")
    if record.rejoined_at is None:
        record.problems.append("etcd did not become healthy within 60 s of the restart")
    return record


def etcd_verdict(record: Record, _load: Load) -> None:
    """One member lost: database writes undisturbed. A quorum lost: what the primary did, as a note."""
    if record.variant == "member" and (record.write_gap or 0) > 1:
        record.problems.append(f"losing one etcd member paused database writes {record.write_gap:.2f} s")
    if record.variant == "quorum":
        start, end = record.fault_at + TTL, record.restored_at or record.fault_at
        late = [at for at, ok, probe in record.samples if probe == "writes" and ok and start < at < end]
        record.notes.append(
            f"{len(late)} writes acknowledged from Patroni's ttl ({TTL} s) into the quorum loss to its end: "
            + ("the primary stayed writable" if late else "the primary took no writes (demoted or read-only)")
        )


# --- Coturn -------------------------------------------------------------------------------

COTURN_HOLD = 20  # seconds the TURN server stays lost


def has_coturn(settings: Settings) -> bool:
    """no coturn hosts in the inventory: no TURN drill"""
    return bool(settings.members("coturn"))


def coturn_fault(task: Task, settings: Settings, load: Load, variant: str = "stop", target: int = 0) -> Record:
    """Stop Coturn on one host (the group's `target`-th) or cut its network: it allocates again once back."""
    host = settings.members("coturn")[target % len(settings.members("coturn"))]
    faults = {"stop": "systemctl stop coturn.service", "partition": partition_script(COTURN_HOLD + 30)}
    shown = "systemctl stop coturn.service" if variant == "stop" else f"network cut for {COTURN_HOLD} s"
    record = Record("coturn", variant, host.name, f"{shown} on {host.name}")
    undo = "systemctl start coturn.service" if variant == "stop" else heal_script()
    record.fault_at = time.time()
    try:
        run(task, faults[variant], host=host.name, what=Expectation(f"the fault applied on {host.name}"))
        record.detected_at = wait_until(lambda: load.turn_latest(host, record.fault_at) is False, 30)
        time.sleep(max(0.0, record.fault_at + COTURN_HOLD - time.time()))
    finally:
        run(task, undo, host=host.name, what=Expectation(f"the fault undone on {host.name}"))
        record.restored_at = time.time()
    record.rejoined_at = wait_until(lambda: load.turn_latest(host, record.restored_at or 0) is True, 60)
    if record.detected_at is None:
        record.problems.append(f"allocations on {host.name} kept succeeding: the fault did not take")
    if record.rejoined_at is None:
        record.problems.append(f"{host.name} allocated no relay within 60 s of the restore")
    return record


def coturn_verdict(record: Record, load: Load) -> None:
    """The other TURN servers allocated throughout: callers never lost TURN."""
    record.recovered_at = None
    others = [h for h in load.settings.members("coturn") if h.name != record.target]
    failed = sorted({f"{h.name} ({s.detail})" for h in others for s in load.turn.samples[h.private_ip] if not s.ok})
    if failed:
        record.problems.append(f"allocations failed during the drill on {', '.join(failed)}")
    if record.turn_gap:
        record.problems.append(f"no TURN server allocated for {record.turn_gap:.2f} s")
    record.notes.append(f"the other TURN servers: {', '.join(h.name for h in others)}")


# --- LiveKit's Redis ----------------------------------------------------------------------

REDIS_UNIT = "redis-server@livekit.service"
# Held down this long after a replica is promoted, as a lost host would be: it comes back a replica.
REDIS_HOLD = 5
# The longest the Sentinel client may go without an acknowledged write: the sentinels' 3 s
# down-after, their vote and the promotion, with a margin for the client's own retries.
REDIS_WRITE_GAP = 10.0


def uses_redis(settings: Settings) -> bool:
    """LiveKit is off (or no monitoring host to probe from): no Redis drill"""
    return redis_probe.used(settings)


def redis_fault(task: Task, settings: Settings, _load: Load, variant: str = "kill") -> Record:
    """Kill LiveKit's Redis master (SIGKILL, held down as a lost host): the sentinels promote the replica, and the
    old master returns as its replica."""
    names = {h.private_ip: h.name for h in settings.members("livekit")}

    def master() -> str | None:
        return redis_probe.master_of(redis_probe.state(task, settings))

    old_ip = master()
    if old_ip not in names:
        raise HostError(f"the sentinels name no Redis master on a livekit host ({old_ip}); run the deploy first")
    old = names[old_ip]
    fault = f"systemctl kill --signal=SIGKILL {REDIS_UNIT}; sleep 0.2; systemctl stop {REDIS_UNIT}"
    record = Record("redis", variant, old, f"SIGKILL to {REDIS_UNIT} on {old}, held down until a replica leads")
    record.fault_at = time.time()
    try:
        run(task, fault, host=old, what=Expectation(f"the Redis master killed on {old}"))
        record.detected_at = wait_until(lambda: master() not in (None, old_ip), 30)
        time.sleep(max(0.0, (record.detected_at or time.time()) + REDIS_HOLD - time.time()))
    finally:
        run(task, f"systemctl start {REDIS_UNIT}", host=old, what=Expectation(f"Redis started again on {old}"))
        record.restored_at = time.time()
    record.rejoined_at = wait_until(lambda: not redis_probe.problems(task, settings), 60, 2)
    new_ip = master()
    record.notes.append(f"Redis master {old} → {names.get(new_ip or '', new_ip)}; {old} back as its replica")
    if record.detected_at is None or new_ip in (None, old_ip):
        record.problems.append(f"no replica promoted within 30 s of the kill (master now: {new_ip})")
    if record.rejoined_at is None:
        left = "; ".join(redis_probe.problems(task, settings))
        record.problems.append(f"the Redis cluster was not whole again within 60 s of the restart: {left}")
    return record


def redis_verdict(record: Record, load: Load) -> None:
    """The Sentinel client wrote again within REDIS_WRITE_GAP of the kill."""
    record.recovered_at = load.redis_outage[1] if load.redis_outage else None  # the write that ended the gap
    if record.redis_gap is None or record.redis_gap > REDIS_WRITE_GAP:
        gap = "no gap measured" if record.redis_gap is None else f"a {record.redis_gap:.2f} s gap"
        record.problems.append(f"the Sentinel client had {gap} in its writes (at most {REDIS_WRITE_GAP:g} s)")


# --- the drills ---------------------------------------------------------------------------


def drill(
    task: Task, settings: Settings, fault: Fault, verdict: Callable[[Record, Load], None] | None, settle: float
) -> Result:
    """One fault under the probes, `settle` seconds of writes after it, then every probe checked and the verdict."""
    if not anchor(task, settings) or mode(task) is not Mode.APPLY:
        return Result(host=task.host, result=None)
    with Load(task, settings) as load:
        record = fault(task, settings, load)
        time.sleep(settle)  # writes go on against the new leader after the old one is back
    load.measure(record)
    if verdict:
        verdict(record, load)
    return Result(host=task.host, changed=True, result=asdict(record))


def patroni_drill(task: Task, settings: Settings, variant: str = "stop") -> Result:
    """Fault the primary (stop, kill -9, cut its network, or a planned switchover) under a steady write load."""
    fault = switchover_fault if variant == "switchover" else partial(patroni_fault, variant=variant)
    return drill(task, settings, fault, None, 5)


def vip_drill(task: Task, settings: Settings, variant: str = "haproxy") -> Result:
    """Stop HAProxy (or Keepalived) on the VIP holder: the VIP moves, and stays when it returns; database writes
    go on undisturbed (their route to the primary is not the edge's)."""
    return drill(task, settings, partial(vip_fault, variant=variant), vip_verdict, 0)


def etcd_drill(task: Task, settings: Settings, variant: str = "member") -> Result:
    """Stop etcd on one member (`member`: nothing may change) or two (`quorum`: report Patroni's reaction)."""
    return drill(task, settings, partial(etcd_fault, variant=variant), etcd_verdict, 5)


def coturn_drill(task: Task, settings: Settings, variant: str = "stop") -> Result:
    """Stop Coturn on one host (or cut its network): allocations go on succeeding on the others throughout, and
    the host allocates again once it is back."""
    return drill(task, settings, partial(coturn_fault, variant=variant), coturn_verdict, 2)


def redis_drill(task: Task, settings: Settings, variant: str = "kill") -> Result:
    """Kill LiveKit's Redis master: the sentinels promote the replica, the Sentinel client finds it, the old master
    returns as its replica; no acknowledged write is lost."""
    return drill(task, settings, partial(redis_fault, variant=variant), redis_verdict, 3)
