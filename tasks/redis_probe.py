"""The drills' Redis client: writes to LiveKit's Redis found through Sentinel, every acknowledged one checked.

Runs on the monitoring host (a client of the mesh's Redis and sentinels by the firewall, and
never the target of a drill) as a transient systemd unit, like the write probe: one number
every 0.1 s into a set of the run's own on whatever master the sentinels name, each attempt
logged with when it was sent and answered. Afterwards the set is read from the (new)
master: an acknowledged number that is not there is lost. Also here: what the sentinels and
servers say of themselves (`problems`), for the drills' health gate and the Redis drill.
The password reaches the host as a 0600 file, never a command line.
"""

from __future__ import annotations

import json

from nornir.core.task import Task

from core.pki import trusted_ca
from core.settings import Settings
from tasks.drill_probes import WriteLog, launch, parse
from tasks.files import FileSpec, render
from tasks.livekit import MESH_REDIS, MESH_REPLICATION, redis_servers, sentinel_hosts
from tasks.remote import Expectation, run

DIR = "/run/matrix-drill-redis"
SCRIPT = f"{DIR}/redis-probe.py"
SETTINGS_FILE = f"{DIR}/settings.json"
LOG = f"{DIR}/writes.log"
UNIT = "matrix-drill-redis"
INTERVAL = 0.1


def used(settings: Settings) -> bool:
    """Whether the platform has the mesh's Redis to probe (LiveKit on, a monitoring host to probe from)."""
    return settings.config.livekit.enabled and bool(settings.members("monitoring"))


def probe_host(settings: Settings) -> str:
    return settings.members("monitoring")[0].name


def _settings_file(settings: Settings, run_id: str) -> str:
    return json.dumps(
        {
            "sentinels": [h.private_ip for h in sentinel_hosts(settings)],
            "sentinel_port": MESH_REPLICATION.port,
            "name": MESH_REDIS.name,
            "password": settings.secrets[MESH_REDIS.password],
            "ca": trusted_ca(settings.site),
            "key": f"matrix-drill:{run_id}",
        }
    )


def start(task: Task, settings: Settings, run_id: str) -> None:
    """Put the probe and its settings on the monitoring host and start it."""
    script = render(task, "drills/redis-probe.py.j2", interval=INTERVAL, log_file=LOG)
    secrets = FileSpec(SETTINGS_FILE, _settings_file(settings, run_id), mode=0o600, secret=True)
    launch(task, UNIT, FileSpec(SCRIPT, script, mode=0o700), secrets, f"rm -f {LOG}", host=probe_host(settings))


def stop(task: Task, settings: Settings) -> tuple[WriteLog, set[int]]:
    """Stop the probe; its log and the numbers the master holds."""
    host = probe_host(settings)
    out = run(task, f"systemctl stop {UNIT}; cat {LOG}", host=host, what=Expectation("the Redis probe stopped"))
    held = run(
        task,
        f"python3 {SCRIPT} {SETTINGS_FILE} --read",
        host=host,
        what=Expectation("the run's set read back from the master the sentinels name"),
    )
    return parse(out.stdout), set(json.loads(held.stdout))


def cleanup(task: Task, settings: Settings) -> None:
    """Delete the run's key and remove the probe's files (the settings first)."""
    run(
        task,
        f"systemctl stop {UNIT} 2>/dev/null; [ ! -f {SETTINGS_FILE} ] || python3 {SCRIPT} {SETTINGS_FILE} --drop; "
        f"rm -rf {DIR}",
        host=probe_host(settings),
        what=Expectation("the Redis probe's key deleted and its files removed"),
    )


def _state_script(settings: Settings) -> str:
    """One line per sentinel ("sentinel <ip> <master ip> <ckquorum word>") and per server ("server <ip> <ROLE's
    first four lines>"), asked from the monitoring host."""
    ask = f"timeout 3 $cli_base --tls --cacert {trusted_ca(settings.site)}"
    lines = [
        f'echo "sentinel {h.private_ip} $({ask} -h {h.private_ip} -p {MESH_REPLICATION.port} --raw sentinel '
        f"get-master-addr-by-name {MESH_REDIS.name} | head -n 1) $({ask} -h {h.private_ip} "
        f'-p {MESH_REPLICATION.port} sentinel ckquorum {MESH_REDIS.name} | cut -d" " -f1)"'
        for h in sentinel_hosts(settings)
    ] + [
        f'echo "server {h.private_ip} $({ask} -h {h.private_ip} -p {MESH_REDIS.port} --raw role | head -n 4 | '
        "tr '\\n' ' ')\""
        for h in redis_servers(settings)
    ]
    return "cli_base='redis-cli --no-auth-warning'; " + "; ".join(lines)


def cluster_problems(state: str, settings: Settings) -> list[str]:
    """What keeps the mesh's Redis from being healthy, from the lines of `_state_script`: every sentinel names
    the same master with a quorum, that server is the one master, every other server its connected replica."""
    names = {h.private_ip: h.name for h in [*sentinel_hosts(settings), *redis_servers(settings)]}
    named, roles, problems = {}, {}, []
    for line in state.splitlines():
        kind, address, *words = line.split()
        if kind == "sentinel":
            named[address] = words[0] if words and words[0][:1].isdigit() else None
            if words[-1:] != ["OK"]:
                said = " ".join(words) or "no answer"
                problems.append(f"sentinel on {names.get(address, address)}: no quorum ({said})")
        else:
            roles[address] = words
    masters = {ip for ip in named.values() if ip}
    if len(masters) != 1:
        problems.append(f"the sentinels name {sorted(masters) or 'no master'} (expected one master)")
        return problems
    master = masters.pop()
    for address, role in roles.items():
        who, said = names.get(address, address), " ".join(role) or "no answer"
        if address == master and role[:1] != ["master"]:
            problems.append(f"{who}: the sentinels' master answers {said}")
        elif address != master and role[:2] + role[3:4] != ["slave", master, "connected"]:
            problems.append(f"{who}: not a connected replica of {names.get(master, master)} ({said})")
    return problems


def master_of(state: str) -> str | None:
    """The master the first answering sentinel names."""
    for line in state.splitlines():
        kind, _, *words = line.split()
        if kind == "sentinel" and words and words[0][:1].isdigit():
            return words[0]
    return None


def state(task: Task, settings: Settings) -> str:
    """The sentinels' and servers' answers (`_state_script`), asked from the monitoring host."""
    script = "IFS= read -r REDISCLI_AUTH; export REDISCLI_AUTH; " + _state_script(settings)
    out = run(
        task,
        script,
        stdin=settings.secrets[MESH_REDIS.password] + "\n",
        host=probe_host(settings),
        what=Expectation("what the mesh's sentinels and Redis servers say of themselves"),
    )
    return out.stdout


def problems(task: Task, settings: Settings) -> list[str]:
    """What keeps the mesh's Redis from being healthy now (`cluster_problems`)."""
    return cluster_problems(state(task, settings), settings)
