"""What the failover drills and the soak share (runbooks/failover_drill.py): the record of a
fault, the platform's health, the probes (`Load`) and the report.

Every drill runs from the first Synapse host, the database's real client: it checks the
platform is healthy (else refuses, having changed nothing), starts the probes, causes the
fault (tasks/faults.py) on the host concerned through the controller's connection to it,
watches the platform recover, undoes the fault in a `finally` whatever happened, waits for
the faulty member to rejoin and then compares every acknowledged write with what is stored.
Times are Unix times; the probe hosts' clocks and the controller's are assumed in sync
(preflight checks the skew).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from nornir.core.task import AggregatedResult, Result, Task

from core import timeline
from core.probe import HttpsProbe
from core.settings import HostInfo, Settings
from core.turn import TurnClient, TurnError, TurnProbe
from core.turn_service import rest_credential
from tasks import drill_probes, message_probe, redis_probe
from tasks.etcd import endpoints, etcdctl
from tasks.patroni import LOOP_WAIT, rest_get
from tasks.remote import Expectation, Mode, mode, run

POLL = 0.5
PARTITION_TABLE = "matrix_drill_partition"
HEAL_UNIT = "matrix-drill-heal"
MAX_LAG = 1 << 20  # bytes a healthy replica may be behind
REJOIN_STABLE = 3 * LOOP_WAIT + 2  # seconds: three of Patroni's cycles and a poll's margin


@dataclass
class Record:
    """One drill run: what was done, what was measured, the verdict."""

    drill: str
    variant: str
    target: str  # the host the fault hit
    fault: str
    fault_at: float = 0.0
    detected_at: float | None = None  # new leader / VIP on the peer
    recovered_at: float | None = None  # end of the longest write gap (VIP: first answer after the last failure)
    restored_at: float | None = None  # the fault undone
    rejoined_at: float | None = None  # the faulty member back in service
    write_gap: float | None = None
    writes_acknowledged: int = 0
    writes_lost: list[int] = field(default_factory=list)
    http_gap: float | None = None
    turn_gap: float | None = None  # no TURN server allocating
    # The Matrix client sending through the VIP: its gap between acknowledgements, what was lost,
    # what it saw go wrong (failed sends by kind, answers slower than message_probe.STALL).
    message_gap: float | None = None
    messages_acknowledged: int = 0
    messages_lost: list[str] = field(default_factory=list)
    client_errors: dict[str, int] = field(default_factory=dict)
    client_stalls: int = 0
    # The Sentinel client writing to LiveKit's Redis: its gap between acknowledgements, what was lost.
    redis_gap: float | None = None
    redis_acknowledged: int = 0
    redis_lost: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    samples: list[tuple[float, bool, str]] = field(default_factory=list)  # (time, ok, probe) for the timeline

    @property
    def verdict(self) -> str:
        return "FAIL" if self.problems else "PASS"

    def seconds(self, moment: float | None) -> float | None:
        return None if moment is None else round(moment - self.fault_at, 2)

    def summary(self) -> dict:
        return {
            "drill": self.drill,
            "variant": self.variant,
            "target": self.target,
            "fault": self.fault,
            "detection_s": self.seconds(self.detected_at),
            "recovery_s": self.seconds(self.recovered_at),
            "rejoined_s": self.seconds(self.rejoined_at),
            "write_gap_s": None if self.write_gap is None else round(self.write_gap, 2),
            "http_gap_s": None if self.http_gap is None else round(self.http_gap, 2),
            "turn_gap_s": None if self.turn_gap is None else round(self.turn_gap, 2),
            "writes_acknowledged": self.writes_acknowledged,
            "writes_lost": len(self.writes_lost),
            "message_gap_s": None if self.message_gap is None else round(self.message_gap, 2),
            "messages_acknowledged": self.messages_acknowledged,
            "messages_lost": len(self.messages_lost),
            "client_errors": self.client_errors,
            "client_stalls": self.client_stalls,
            "redis_gap_s": None if self.redis_gap is None else round(self.redis_gap, 2),
            "redis_writes_acknowledged": self.redis_acknowledged,
            "redis_writes_lost": len(self.redis_lost),
            "verdict": self.verdict,
            "problems": self.problems,
            "notes": self.notes,
        }


def drills_host(settings: Settings) -> str:
    """Drills and checks run once, from the first Synapse host (the firewall lets it ask Patroni)."""
    return settings.members("synapse")[0].name


def anchor(task: Task, settings: Settings) -> bool:
    return task.host.name == drills_host(settings)


# --- facts -------------------------------------------------------------------------


def cluster(task: Task, settings: Settings, skip: str = "") -> dict:
    """Patroni's /cluster document, asked of the first member that answers (not `skip`), from the drills' host
    (a rolling reboot asks on behalf of any host; only the drills' host may reach Patroni's REST API)."""
    asker = drills_host(settings)
    for host in settings.members("patroni"):
        if host.name == skip:
            continue
        status, body = rest_get(task, "/cluster", host.private_ip, asker)
        if status == 200:
            return json.loads(body)
    return {"members": []}


def leader_of(state: dict) -> str | None:
    return next((m["name"] for m in state["members"] if m["role"] == "leader" and m["state"] == "running"), None)


def database_problems(state: dict, settings: Settings) -> list[str]:
    """What keeps the database tier from being healthy: one running leader, every replica streaming and current."""
    members = {m["name"]: m for m in state["members"]}
    problems = [
        f"{name}: not in the Patroni cluster"
        for name in sorted({h.name for h in settings.members("patroni")} - set(members))
    ]
    leaders = [m for m in members.values() if m["role"] == "leader"]
    if len(leaders) != 1 or leaders[0]["state"] != "running":
        problems.append(f"Patroni has {len(leaders)} leader(s) {[m['name'] for m in leaders]} (expected one, running)")
    timeline = leaders[0].get("timeline") if len(leaders) == 1 else None
    for member in members.values():
        if member["role"] == "leader":
            continue
        lag = member.get("lag", 0)
        if member["state"] != "streaming":
            problems.append(f"{member['name']}: {member['state']}, not streaming")
        elif timeline is not None and member.get("timeline") != timeline:
            # An old primary may stream its old timeline for a moment before Patroni rewinds it.
            problems.append(f"{member['name']}: on timeline {member.get('timeline')}, the leader on {timeline}")
        elif not isinstance(lag, int) or lag > MAX_LAG:
            problems.append(f"{member['name']}: {lag} bytes behind the leader")
    if settings.config.database.synchronous_mode and not any(m["role"] == "sync_standby" for m in members.values()):
        problems.append("no synchronous standby (synchronous_mode is on)")
    return problems


def etcd_problems(task: Task, settings: Settings) -> list[str]:
    members = settings.members("patroni")
    out = run(
        task,
        f"{etcdctl(endpoints(members))} --command-timeout=3s endpoint health 2>&1",
        ok_codes=(0, 1),
        host=members[0].name,
        what=Expectation("etcd's health, every member"),
    )
    return [f"etcd: {line.strip()}" for line in out.stdout.splitlines() if "is unhealthy" in line]


def vip_holders(task: Task, settings: Settings) -> list[str]:
    holders = []
    for host in settings.members("haproxy"):
        out = run(task, "ip -o -4 addr show", host=host.name, what=Expectation("the host's IPv4 addresses"))
        if f"inet {settings.vip}/" in out.stdout:
            holders.append(host.name)
    return holders


def turn_credential(settings: Settings) -> Callable[[], tuple[str, str]]:
    return partial(rest_credential, settings.secrets["turn_shared_secret"], "matrix-drill")


def turn_problems(settings: Settings) -> list[str]:
    """One relay allocated and released on each Coturn host, from the controller."""
    problems = []
    for host in settings.members("coturn"):
        try:
            TurnClient(host.private_ip).allocate(turn_credential(settings))
        except TurnError as exc:
            problems.append(f"{host.name}: no TURN allocation on {host.private_ip}:3478 ({exc})")
    return problems


def platform_problems(task: Task, settings: Settings) -> list[str]:
    problems = database_problems(cluster(task, settings), settings) + etcd_problems(task, settings)
    holders = vip_holders(task, settings)
    if len(holders) != 1:
        problems.append(f"the VIP {settings.vip} is held by {holders or 'no host'} (expected exactly one)")
    if redis_probe.used(settings):
        problems += [f"LiveKit's Redis: {p}" for p in redis_probe.problems(task, settings)]
    return problems + turn_problems(settings)


def healthy(task: Task, settings: Settings) -> Result:
    """Fact: what is unhealthy now (an empty list: ready for a drill)."""
    if not anchor(task, settings) or mode(task) is Mode.PLAN:
        return Result(host=task.host, result=[])
    return Result(host=task.host, result=platform_problems(task, settings))


def refuse_unless_healthy(result: AggregatedResult, settings: Settings) -> list[str]:
    return [
        f"refusing to start the drill, nothing was touched: {p}" for h in result.values() for p in h[0].result or []
    ]


def still_healthy(result: AggregatedResult, settings: Settings) -> list[str]:
    return [f"after the drill: {p}" for h in result.values() for p in h[0].result or []]


def wait_until(condition: Callable[[], bool], timeout: float, stable: float = 0.0) -> float | None:
    """Poll `condition`; the time from which it held for `stable` seconds on end, or None after `timeout`."""
    deadline = time.time() + timeout
    since = None
    while time.time() < deadline:
        if not condition():
            since = None
        elif (since := since or time.time()) <= time.time() - stable:
            return since
        time.sleep(POLL)
    return None


class Load:
    """The probes of a drill, started together and read into the record: numbered writes
    through PgBouncer and Matrix messages through the VIP (on the Synapse host), numbered
    writes to LiveKit's Redis through Sentinel (on the monitoring host), HTTPS requests through
    the VIP and TURN allocations on every Coturn host (both from the controller)."""

    def __init__(self, task: Task, settings: Settings) -> None:
        self.task, self.settings = task, settings
        self.run_id = uuid.uuid4().hex[:12]
        self.https = HttpsProbe(settings.vip, settings.config.homeserver_fqdn, settings.ca.cert_path)
        self.turn_hosts = {host.private_ip: host.name for host in settings.members("coturn")}
        self.turn = TurnProbe(list(self.turn_hosts), turn_credential(settings))
        self.redis = redis_probe.used(settings)
        self.redis_outage: tuple[float, float] | None = None

    def __enter__(self) -> Load:
        drill_probes.start(self.task, self.settings, self.run_id)
        message_probe.start(self.task, self.settings, self.run_id)
        if self.redis:
            redis_probe.start(self.task, self.settings, self.run_id)
        self.https.__enter__()
        self.turn.__enter__()
        time.sleep(3)  # a baseline before the fault
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.https.__exit__()
        self.turn.__exit__()
        if kind is not None:  # the drill broke off: leave no probe, table, user or secret behind
            drill_probes.cleanup(self.task)
            message_probe.cleanup(self.task)
            if self.redis:
                redis_probe.cleanup(self.task, self.settings)

    def turn_latest(self, host: HostInfo, since: float) -> bool | None:
        """Whether the latest allocation on `host` started after `since` (Unix time) succeeded."""
        since -= time.time() - time.monotonic()
        latest = [s.ok for s in self.turn.samples[host.private_ip] if s.at >= since]
        return latest[-1] if latest else None

    def measure(self, record: Record) -> None:
        """Stop the writes, compare them with the primary's rows, and fill the record in."""
        writes = drill_probes.stop(self.task)
        present = drill_probes.stored(self.task, self.run_id)
        drill_probes.cleanup(self.task)
        record.writes_acknowledged = len(writes.acknowledged)
        record.writes_lost = writes.lost(present)
        outage = writes.outage(after=record.fault_at - 1)
        if outage:
            record.write_gap = outage[1] - outage[0]
            record.recovered_at = outage[1]  # the write that ended the longest unavailability
        offset = time.time() - time.monotonic()  # the HTTPS probe keeps monotonic times
        record.http_gap = self.https.longest_gap()
        record.samples = [(a.answered, a.ok, "writes") for a in writes.attempts]  # acknowledgement times
        self.measure_messages(record)
        if self.redis:
            self.measure_redis(record)
        record.samples += [(s.at + offset, s.ok, "https") for s in self.https.samples]
        if self.turn_hosts:
            record.turn_gap = self.turn.none_serving()
            for server, samples in self.turn.samples.items():
                record.samples += [(s.at + offset, s.ok, f"turn {self.turn_hosts[server]}") for s in samples]
        record.problems += writes.problems("writes", "the write probe", present)

    def measure_redis(self, record: Record) -> None:
        """Stop the Sentinel client, compare its acknowledged writes with the master's set, fill the record in."""
        try:
            writes, held = redis_probe.stop(self.task, self.settings)
        finally:
            redis_probe.cleanup(self.task, self.settings)
        record.redis_acknowledged = len(writes.acknowledged)
        record.redis_lost = writes.lost(held)
        self.redis_outage = outage = writes.outage(after=record.fault_at - 1)
        record.redis_gap = outage[1] - outage[0] if outage else None
        record.samples += [(a.answered, a.ok, "redis") for a in writes.attempts]
        gap = "-" if record.redis_gap is None else f"{record.redis_gap:.2f} s"
        record.notes.append(
            f"LiveKit's Redis through Sentinel: longest gap {gap}, {record.redis_acknowledged} writes acknowledged, "
            f"{len(record.redis_lost)} lost"
        )
        record.problems += writes.problems("Redis writes", "the Redis probe", held)

    def measure_messages(self, record: Record) -> None:
        """Stop the Matrix client, check its acknowledged messages against the room, and fill the record in."""
        try:
            messages = message_probe.stop(self.task)
        finally:
            message_probe.cleanup(self.task)
        record.messages_acknowledged = len(messages.log.details)
        record.messages_lost = messages.lost
        record.client_errors = dict(Counter(messages.errors))
        record.client_stalls = messages.stalls
        outage = messages.log.outage(after=record.fault_at - 1)
        record.message_gap = outage[1] - outage[0] if outage else None
        record.samples += [(a.answered, a.ok, "messages") for a in messages.log.attempts]
        if messages.lost:
            record.problems.append(f"{len(messages.lost)} acknowledged messages missing from the room")
        if not messages.in_order:
            record.problems.append("a sender's acknowledged messages stand in the room out of the order it sent them")
        if not messages.log.details:
            record.problems.append("the Matrix client got no message acknowledged at all")
        if record.client_errors or record.client_stalls:
            errors = ", ".join(f"{count} × {kind}" for kind, count in sorted(record.client_errors.items()))
            record.notes.append(
                f"the Matrix client saw {errors or 'no failed send'}; {record.client_stalls} answers slower than "
                f"{message_probe.STALL:g} s"
            )


def records_of(result: AggregatedResult) -> list[Record]:
    records = []
    for host in result.values():
        data = host[0].result
        if data:
            data = dict(data)
            data["samples"] = [tuple(s) for s in data["samples"]]
            records.append(Record(**data))
    return records


def failed_verdicts(result: AggregatedResult, settings: Settings) -> list[str]:
    return [f"{r.drill}/{r.variant}: {p}" for r in records_of(result) for p in r.problems]


def drill_report(result: AggregatedResult, settings: Settings) -> str:
    """The table of each run, and its JSON record and timeline PNG under drills/<site>/."""
    folder = settings.config_path.parent / "drills" / settings.site
    lines = [
        f"  {'drill':18} {'target':10} {'detect s':>8} {'recover s':>9} {'rejoin s':>8} {'write gap s':>11} "
        f"{'http gap s':>10} {'turn gap s':>10} {'msg gap s':>9} {'acked':>6} {'lost':>5}  verdict"
    ]
    for record in records_of(result):
        row = record.summary()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(record.fault_at))
        base = folder / f"{stamp}-{record.drill}-{record.variant}"
        base.parent.mkdir(parents=True, exist_ok=True)
        base.with_suffix(".json").write_text(json.dumps(row | {"fault_at": record.fault_at}, indent=2) + "\n")
        marks = {
            "fault": record.fault_at,
            "detected": record.detected_at,
            "recovered": record.recovered_at,
            "restored": record.restored_at,
            "rejoined": record.rejoined_at,
        }
        title = f"{record.drill}/{record.variant}: {record.fault} - {record.verdict}"  # the bitmap font is ASCII
        timeline.render(base.with_suffix(".png"), title, record.samples, marks, record.fault_at)

        def cell(value: object) -> str:
            return "-" if value is None else str(value)

        lines.append(
            f"  {record.drill + '/' + record.variant:18} {record.target:10} {cell(row['detection_s']):>8} "
            f"{cell(row['recovery_s']):>9} {cell(row['rejoined_s']):>8} {cell(row['write_gap_s']):>11} "
            f"{cell(row['http_gap_s']):>10} {cell(row['turn_gap_s']):>10} {cell(row['message_gap_s']):>9} "
            f"{row['writes_acknowledged']:>6} {row['writes_lost']:>5}  {record.verdict}"
        )
        lines += [f"    {note}" for note in record.notes] + [f"    problem: {p}" for p in record.problems]
        lines.append(f"    record: {base.with_suffix('.json')}  timeline: {base.with_suffix('.png')}")
    return "\n".join(lines)
