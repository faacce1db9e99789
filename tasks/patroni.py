"""Deployment step 2: PostgreSQL managed by Patroni on every patroni host, etcd3 as DCS.

Patroni comes from the pinned wheels of the artifact cache (see the template for why not
Debian's 3.0.2), installed offline into a venv that takes its compiled dependencies
(psycopg2, psutil, PyYAML) from Debian packages. PostgreSQL tuning is derived from the
host's RAM and `max_connections` from the sizing's connection budget.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from nornir.core.task import Result, Task

from core.catalog import GroupRule
from core.errors import HostError
from core.pki import ServerCertificate, trusted_ca
from core.ports import tcp
from core.secrets import token
from core.settings import HostInfo, Settings
from core.targets import Job, per_host
from tasks import etcd
from tasks.component import Component
from tasks.declaration import Action, Command, Context, File, Procedure, Service, Venv, Wheels, template
from tasks.facts import HostFacts
from tasks.files import Write, jinja
from tasks.remote import Expectation, lost_hosts, run
from tasks.systemd import UNIT_DIR, Systemctl, UnitsWanted
from tasks.venvs import install_name

VENV = "/opt/patroni/venv"
WHEELS = "/opt/patroni/wheels"
CONFIG = "/etc/patroni/patroni.yml"
# The member's certificate from the site CA: its REST API's (HTTPS), and its own as a client of
# etcd and of the other members' REST APIs.
TLS_DIR = "/etc/patroni/tls"
TLS_CA, TLS_CERT, TLS_KEY = f"{TLS_DIR}/ca.crt", f"{TLS_DIR}/member.crt", f"{TLS_DIR}/member.key"
SCOPE = f"grep -m1 '^scope:' {CONFIG} 2>/dev/null; true"  # the cluster the host's config names
REST_PORT = 8008
# Who connects to PostgreSQL over the network: the other members (replication, pg_rewind) and
# PgBouncer's route to the primary. The firewall and pg_hba both let in these groups' hosts only.
CLIENTS = ("patroni", "pgbouncer")
POSTGRES_PORT = 5432
LOOP_WAIT = 2  # seconds; the template's loop_wait
TTL = 20  # seconds a leader key lives without renewal; the template's ttl
# Compiled dependencies come from Debian, so no wheel has to match the host's Python.
PYTHON_PACKAGES = [
    "python3-venv",
    "python3-psycopg2",
    "python3-psutil",
    "python3-yaml",
    "python3-click",
    "python3-prettytable",
    "python3-dateutil",
    "python3-urllib3",
    "python3-etcd",
    "python3-requests",
]
# Patroni's validator also insists that its ports are free, so it can vet a first
# config only; a running Patroni checks a changed one itself when it reloads.
VALIDATE = (
    f"{{{{ systemctl is-active -q patroni || runuser -u postgres -- {VENV}/bin/patroni --validate-config {{path}}; }}}}"
)
NO_MAIN_CLUSTER_FILE = "/etc/postgresql-common/createcluster.d/00-matrix-platform.conf"
NO_MAIN_CLUSTER = "# matrix-platform: Patroni creates and owns the cluster\ncreate_main_cluster = false\n"


@dataclass(frozen=True)
class Memory:
    """PostgreSQL memory settings for a host with `total_mb` of RAM."""

    total_mb: int
    max_connections: int

    @property
    def shared_buffers_mb(self) -> int:
        return max(32, self.total_mb // 4)

    @property
    def effective_cache_size_mb(self) -> int:
        return max(64, self.total_mb * 3 // 4)

    @property
    def work_mem_mb(self) -> int:
        return min(64, max(4, self.total_mb // (4 * self.max_connections)))

    @property
    def maintenance_work_mem_mb(self) -> int:
        return min(2048, max(64, self.total_mb // 16))


def scope(settings: Settings) -> str:
    return f"matrix-{settings.site}"


MEMORY = "awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo"
UNREAD_MEMORY_MB = 16384  # what plan mode tunes for when the inventory gives no memory_mb


def data_dir(settings: Settings) -> str:
    return f"/var/lib/postgresql/{settings.config.versions.postgresql}/main"


def archive_command(settings: Settings) -> str:
    """WAL archiving through Patroni (so it follows the primary): pgBackRest pushes to the backup host."""
    return f"pgbackrest --stanza={settings.config.backup.stanza} archive-push %p"


@dataclass(frozen=True)
class Recovery:
    """Bootstrap a new cluster from the newest backup (disaster recovery) instead of initdb.

    `time`: restore to this moment (pgBackRest's form, UTC) instead of the end of the archive.
    """

    time: str | None = None


RESTORE_SCRIPT = "/usr/local/sbin/matrix-bootstrap-from-backup"


def patroni_variables(settings: Settings, host: HostInfo, total_mb: int, recovery: Recovery | None) -> dict[str, Any]:
    """Template data of patroni.yml for `host` with `total_mb` of RAM."""
    secrets = settings.secrets
    memory = Memory(total_mb, settings.sizing.max_connections)
    patroni_hosts = settings.members("patroni")
    return dict(
        patroni_version=settings.config.versions.patroni,
        scope=scope(settings),
        host_name=host.name,
        ip=host.private_ip,
        rest_password=secrets["patroni_rest_password"],
        etcd_hosts=[f"{h.private_ip}:{etcd.CLIENT_PORT}" for h in patroni_hosts],
        tls={"ca": TLS_CA, "cert": TLS_CERT, "key": TLS_KEY},
        synchronous_mode=settings.config.database.synchronous_mode,
        loop_wait=LOOP_WAIT,
        ttl=TTL,
        max_connections=memory.max_connections,
        pg_version=settings.config.versions.postgresql,
        data_dir=data_dir(settings),
        archive_command=archive_command(settings),
        superuser_password=secrets["postgres_superuser_password"],
        replication_password=secrets["postgres_replication_password"],
        rewind_password=secrets["postgres_rewind_password"],
        memory_mb=memory.total_mb,
        shared_buffers_mb=memory.shared_buffers_mb,
        effective_cache_size_mb=memory.effective_cache_size_mb,
        work_mem_mb=memory.work_mem_mb,
        maintenance_work_mem_mb=memory.maintenance_work_mem_mb,
        replication_addresses=[h.private_ip for h in patroni_hosts],
        client_addresses=sorted({h.private_ip for h in settings.hosts.values() if set(h.groups) & set(CLIENTS)}),
        recovery=recovery,
        restore_script=RESTORE_SCRIPT,
        stanza=settings.config.backup.stanza,
    )


def primary_name(settings: Settings) -> str:
    """The name every member's certificate carries besides its own: PgBouncer reaches "the primary"
    through a local route, whichever member that is, and verifies the server for this name."""
    return f"postgres-primary.{settings.config.internal_domain}"


def member_certificate(settings: Settings, host: HostInfo) -> ServerCertificate:
    """A member's certificate: its REST API and PostgreSQL serve it, and it shows it to etcd and to the
    other members."""
    names = [settings.service_name(host), host.private_ip, primary_name(settings)]
    return settings.certificate(f"patroni-{host.name}", names, client=True)


TLS_FILES = (
    File(TLS_CA, lambda c: c.settings.ca.ca_pem(), "postgres", "postgres"),
    File(TLS_CERT, lambda c: member_certificate(c.settings, c.host).cert_pem, "postgres", "postgres"),
    File(TLS_KEY, lambda c: member_certificate(c.settings, c.host).key_pem, "postgres", "postgres", 0o600, secret=True),
)


def postgresql_package(settings: Settings) -> str:
    return f"postgresql-{settings.config.versions.postgresql}"


# Written before the server package is installed, so Debian creates and starts no cluster of its own.
NO_MAIN_CLUSTER_DECLARED = File(NO_MAIN_CLUSTER_FILE, lambda _: NO_MAIN_CLUSTER, first=True)
# PostgreSQL's server alone (the restore drill's scratch host): no cluster, no Patroni.
POSTGRESQL_SERVER = Component(
    "postgresql-server",
    groups=("backup",),
    summary="PostgreSQL's server package, without the cluster Debian would create and start",
    packages=(postgresql_package,),
    files=(NO_MAIN_CLUSTER_DECLARED,),
)
PATRONI_VENV = Venv(
    Wheels("patroni", WHEELS), "patroni", "patroni", lambda settings: settings.config.versions.patroni, VENV
)
UNIT_FILE = f"{UNIT_DIR}/patroni.service"


def refuse_another_cluster(context: Context, facts: HostFacts | None, _written: frozenset[str]) -> list[Command]:
    """Refuse a host whose Patroni config names another cluster: this step changes nothing there."""
    settings = context.settings
    found = facts.commands["scope"].partition(":")[2].strip() if facts else ""
    if found and found != scope(settings):
        raise HostError(
            f"{context.host.name}: this host already belongs to the Patroni cluster '{found}', not "
            f"'{scope(settings)}' (the inventory's site '{settings.site}'). Refusing to reconfigure it: check that "
            "the inventory points at the right servers; to really move the host, remove it from its old "
            f"cluster first (patronictl remove {found}, then delete {CONFIG} and the data dir)"
        )
    return []


def pending_restart(context: Context, actions: Sequence[Action]) -> tuple[str, str]:
    """A running Patroni is never restarted here (that stops PostgreSQL, on every host at once): a new binary or
    unit waits for a restart one host at a time, and the step says so."""
    version = context.settings.config.versions.patroni
    installed = any(isinstance(a, Command) and a.name == install_name(PATRONI_VENV, context.settings) for a in actions)
    new_unit = any(isinstance(a, Write) and a.spec.path == UNIT_FILE and a.changes for a in actions)
    started = any(isinstance(a, Systemctl) and any(verb == "start" for verb, _ in a.verbs) for a in actions)
    read = not any(isinstance(a, UnitsWanted) for a in actions)
    if read and (installed or new_unit) and not started:
        note = "; patroni.service runs the old binary/unit until restarted host by host"
        return f"patroni {version}{note}", "patroni.service: restart pending (new binary or unit)"
    return f"patroni {version}", ""


def patroni_component(recovery: Recovery | None = None) -> Component:
    """PostgreSQL and Patroni; with `recovery`, a cluster bootstrapped now starts from the newest backup: the
    member that wins the bootstrap restores it, the others are cloned from that member."""

    def config(context: Context) -> str:
        memory = context.host.memory_mb or (int(context.reads["memory"]) if context.reads else UNREAD_MEMORY_MB)
        variables = patroni_variables(context.settings, context.host, memory, recovery)
        return jinja().get_template("patroni/patroni.yml.j2").render(**variables)

    restore = (
        ()
        if recovery is None
        else (
            File(
                RESTORE_SCRIPT,
                template(
                    "patroni/bootstrap-from-backup.sh.j2",
                    lambda c: {"stanza": c.settings.config.backup.stanza, "recovery": recovery},
                ),
                mode=0o755,
            ),
        )
    )
    return Component(
        "patroni",
        groups=("patroni",),
        summary="PostgreSQL under Patroni: one leader, streaming replicas, a sync standby",
        after=("etcd",),
        packages=(postgresql_package, *PYTHON_PACKAGES),
        venvs=(PATRONI_VENV,),
        files=(
            NO_MAIN_CLUSTER_DECLARED,
            *restore,
            *TLS_FILES,  # before the config: its validation looks for them
            File(CONFIG, config, "postgres", "postgres", 0o600, secret=True, check=VALIDATE),
            File(
                UNIT_FILE,
                template("patroni/patroni.service.j2", lambda c: {"scope": scope(c.settings), "venv": VENV}),
            ),
        ),
        # A config change is reloaded: Patroni applies it and flags parameters that need a
        # PostgreSQL restart (patroni-config rolls those).
        services=(Service("patroni.service", reload=True, restart_on=(CONFIG, *(f.path for f in TLS_FILES))),),
        reads={"scope": SCOPE, "memory": MEMORY},
        behaviour=refuse_another_cluster,
        notes=pending_restart,
        check=wait_for_cluster,
        inventory=(GroupRule("patroni", fewest=3, odd="each runs an etcd member", reboot_rank=6),),
        secrets={
            "postgres_superuser_password": token,
            "postgres_replication_password": token,
            "postgres_rewind_password": token,
            "patroni_rest_password": token,
        },
        ports=(
            # Replication and rewind between members; PgBouncer's route to the primary.
            tcp("postgresql", POSTGRES_PORT, ("postgres",), CLIENTS),
            # Members, the route's health check, Prometheus, and the drills and checks run from
            # the first Synapse host (tasks/drills.py).
            tcp("patroni-rest", REST_PORT, ("patroni",), ("patroni", "pgbouncer", "monitoring", "synapse")),
        ),
        scrape=lambda settings: [
            Job("patroni", per_host(settings, "patroni", REST_PORT), tls_ca=trusted_ca(settings.site))
        ],
    )


def config_patch(desired: dict, current: dict) -> dict:
    """The part of `desired` that `current` (GET /config) lacks or holds differently."""
    patch = {}
    for key, value in desired.items():
        if isinstance(value, dict):
            sub = config_patch(value, current.get(key) or {})
            if sub:
                patch[key] = sub
        elif str(current.get(key)) != str(value):
            patch[key] = value
    return patch


# A changing request to Patroni's REST API; the password and body arrive on stdin.
REST_WRITE = """import base64,json,ssl,sys,urllib.request,urllib.error
password=sys.stdin.readline().rstrip("\\n"); body=sys.stdin.read().encode()
auth=base64.b64encode(("patroni:"+password).encode()).decode()
req=urllib.request.Request(sys.argv[2],data=body,method=sys.argv[1],
    headers={"Authorization":"Basic "+auth,"Content-Type":"application/json"})
tls=ssl.create_default_context(cafile=sys.argv[3]); tls.load_cert_chain(sys.argv[4],sys.argv[5])
try:
    r=urllib.request.urlopen(req,timeout=60,context=tls); print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
"""
# Its arguments after the method and URL: the site CA, and the member's certificate (on a patroni host).
WRITE_TLS = f"{TLS_CA} {TLS_CERT} {TLS_KEY}"


def api(address: str) -> str:
    """The base URL of the Patroni REST API at `address` (HTTPS, a certificate of the site CA)."""
    return f"https://{address}:{REST_PORT}"


def rest_write(
    task: Task, settings: Settings, method: str, url: str, body: dict, host: str | None = None
) -> tuple[int, str]:
    """PATCH/POST to a Patroni REST API (any member's) from this host (or the member `host`, whose client
    certificate it shows); returns (status, body)."""
    out = run(
        task,
        f"python3 -c {shlex.quote(REST_WRITE)} {method} {shlex.quote(url)} {WRITE_TLS}",
        host=host,
        stdin=settings.secrets["patroni_rest_password"] + "\n" + json.dumps(body),
        what=Expectation(f"{method} {url} answered", f"run '{VENV}/bin/patronictl -c {CONFIG} list'"),
    )
    status, _, answer = out.stdout.partition("\n")
    return int(status), answer


def rest_reads(settings: Settings, host: HostInfo) -> str:
    """GET /primary, /config and /cluster from the member's own REST API, in one command (read ahead)."""
    return rest_gets_command(api(host.private_ip), ["/primary", "/config", "/cluster"])


# A PATCH through REST_WRITE that fails unless Patroni answered 200 (its answer is printed either way).
PATCH_ACCEPTED = (
    'out=$(python3 -c {script} PATCH {url} {tls}) || exit 1; echo "$out"; [ "$(echo "$out" | head -n1)" = 200 ]'
)


def sync_dynamic_config(
    context: Context, _facts: HostFacts | None, _written: frozenset[str]
) -> list[Procedure | Command]:
    """On the leader: bring the cluster-wide config in etcd in line with the template, then restart PostgreSQL
    where Patroni flags a pending restart (never all at once).

    bootstrap.dcs is read only when the cluster is first created; afterwards a change of,
    say, synchronous_mode in config.yaml must be sent to Patroni's REST API, or it would
    silently not apply.
    """
    if context.reads is None:
        return []
    answers = json.loads(context.reads["rest"])
    if answers["/primary"][0] != 200:
        return []
    settings, host = context.settings, context.host
    status, body = answers["/config"]
    if status != 200:
        raise HostError(f"{host.name}: Patroni REST /config answered {status}: {body.strip()[:200]}")
    memory = host.memory_mb or int(context.reads["memory"])
    rendered = jinja().get_template("patroni/patroni.yml.j2").render(**patroni_variables(settings, host, memory, None))
    patch = config_patch(yaml.safe_load(rendered)["bootstrap"]["dcs"], json.loads(body))
    actions: list[Procedure | Command] = []
    if patch:
        url = f"{api(host.private_ip)}/config"
        actions.append(
            Command(
                PATCH_ACCEPTED.format(script=shlex.quote(REST_WRITE), url=shlex.quote(url), tls=WRITE_TLS),
                f"dynamic config in etcd: {json.dumps(patch, sort_keys=True)}",
                "Patroni accepted the config change (200)",
                f"run '{VENV}/bin/patronictl -c {CONFIG} list'",
                name=f"PATCH {url}",
                stdin=settings.secrets["patroni_rest_password"] + "\n" + json.dumps(patch),
            )
        )
    status, body = answers["/cluster"]
    seen = json.loads(body) if status == 200 else {"members": []}
    pending = [m["name"] for m in seen["members"] if m.get("pending_restart")]
    if patch or pending:
        state = None if patch else seen  # after a change, the members are asked again once they settled
        actions.append(
            Procedure(
                "restart PostgreSQL where Patroni flags it: replicas, a switchover, the old leader",
                "\n".join(f"{name}: PostgreSQL restart pending" for name in pending),
                lambda task: rolling_restart(task, settings, settle=bool(patch), seen=state),
            )
        )
    return actions


def leader_or_replica(context: Context, _actions: Sequence[Action]) -> tuple[str, str]:
    assert context.reads is not None  # plan mode says `unread`
    primary = json.loads(context.reads["rest"])["/primary"][0] == 200
    return ("leader" if primary else "replica: the leader syncs the dynamic config"), ""


PATRONI_CONFIG = Component(
    "patroni-config",
    groups=("patroni",),
    summary="cluster-wide Patroni settings in etcd match the template (reported: pending restarts)",
    after=("patroni",),
    reads={"rest": rest_reads, "memory": MEMORY},
    behaviour=sync_dynamic_config,
    notes=leader_or_replica,
    unread="the dynamic config is compared with etcd at deploy time",
)


def rolling_restart(task: Task, settings: Settings, *, settle: bool, seen: dict | None = None) -> list[str]:
    """Restart PostgreSQL where Patroni flags a pending restart, never all at once.

    The autobase order: replicas one by one, each back to streaming before the next;
    then a switchover to the synchronous standby, after which the old leader restarts
    unless its demotion already did. A decreased max_connections (and the like) cannot
    take effect on a replica while the primary runs the larger value, so whatever is
    still pending then is finished by restarting the primary in place, then the replicas.
    Members flag a pending restart on their next loop: each pass first lets them settle.
    `seen` is the cluster's state (GET /cluster) already read, when nothing changed since.
    """
    done: list[str] = []
    if settle:
        time.sleep(2 * LOOP_WAIT)
    members, leader = members_and_leader(task, settings, seen)
    done += restart_all(task, settings, [m for n, m in members.items() if n != leader and m.get("pending_restart")])
    if done:
        time.sleep(2 * LOOP_WAIT)
        members, leader = members_and_leader(task, settings)
    if members[leader].get("pending_restart"):
        standbys = [n for n, m in members.items() if m["role"] == "sync_standby"]
        candidate = (standbys or [n for n in members if n != leader])[0]
        status, answer = rest_write(
            task,
            settings,
            "POST",
            api_base(members[leader]) + "/switchover",
            {"leader": leader, "candidate": candidate},
        )
        if status != 200:
            raise HostError(f"switchover {leader} → {candidate} refused ({status}): {answer[:200]}")
        await_cluster(task, settings, lambda state: leader_of(state) == candidate, f"{candidate} leads")
        done.append(f"switchover {leader} → {candidate}")
        time.sleep(2 * LOOP_WAIT)
        members, leader = members_and_leader(task, settings)
    if members[leader].get("pending_restart"):
        done += restart_all(task, settings, [members[leader]])
        time.sleep(2 * LOOP_WAIT)
        members, leader = members_and_leader(task, settings)
    return done + restart_all(task, settings, [m for m in members.values() if m.get("pending_restart")])


def members_and_leader(task: Task, settings: Settings, state: dict | None = None) -> tuple[dict[str, dict], str]:
    """The members by name and the leader's name, from `state` or a fresh GET /cluster."""
    state = state or cluster(task, settings)
    leader = leader_of(state)
    if leader is None:
        raise HostError(
            f"{task.host.name}: the Patroni cluster has no leader; run '{VENV}/bin/patronictl -c {CONFIG} list'"
        )
    return {m["name"]: m for m in state["members"]}, leader


def restart_all(task: Task, settings: Settings, members: list[dict]) -> list[str]:
    """Restart each member's PostgreSQL in turn, each back to health before the next.

    A replica first replays everything the leader has written: Patroni starts a replica with
    max_connections and the like taken from its pg_controldata when those are higher, and
    only replaying the leader's parameter-change record (written when the leader restarted
    with a lower value) lowers them there. Restarted before that, it would come back with
    the old value and still pending.
    """
    for member in members:
        if member["role"] != "leader":
            await_replay(task, settings, member)
        restart_member(task, settings, member)
    return [f"{m['name']}: PostgreSQL restarted (pending restart)" for m in members]


def await_replay(task: Task, settings: Settings, replica: dict, timeout: float = 60) -> None:
    """Wait until `replica` has replayed the WAL up to the leader's current position."""
    _members, leader = members_and_leader(task, settings)
    target = wal_position(task, settings, leader, "location")
    deadline = time.monotonic() + timeout
    replayed = wal_position(task, settings, replica["name"], "replayed_location")
    while replayed < target:
        if time.monotonic() > deadline:
            raise HostError(
                f"{replica['name']} has replayed the WAL to {replayed}, not yet to the leader's {target}, "
                f"after {timeout:g} s; run '{VENV}/bin/patronictl -c {CONFIG} list' (Lag in MB)"
            )
        time.sleep(0.5)
        replayed = wal_position(task, settings, replica["name"], "replayed_location")


def wal_position(task: Task, settings: Settings, member: str, key: str) -> int:
    """A member's WAL position in bytes from its REST GET /patroni (`location` on a leader)."""
    status, body = rest_get(task, "/patroni", settings.hosts[member].private_ip)
    if status != 200:
        raise HostError(f"{member}: Patroni REST /patroni answered {status}: {body.strip()[:200]}")
    return int(json.loads(body).get("xlog", {}).get(key, 0))


def api_base(member: dict) -> str:
    return member["api_url"].rsplit("/", 1)[0]


def leader_of(state: dict) -> str | None:
    return next((m["name"] for m in state["members"] if m["role"] == "leader"), None)


def restart_member(task: Task, settings: Settings, member: dict) -> None:
    """Restart one member through its REST API (which answers when it is done), then wait for health."""
    status, answer = rest_write(task, settings, "POST", api_base(member) + "/restart", {})
    if status != 200:
        raise HostError(f"restart of {member['name']} refused ({status}): {answer[:200]}")
    await_cluster(task, settings, lambda _state: True, f"{member['name']} back after its restart")


def await_cluster(
    task: Task, settings: Settings, condition: Callable[[dict], bool], what: str, timeout: float = 120
) -> dict:
    """Poll GET /cluster until it is healthy and `condition(state)` holds."""
    members = answering_members(task, settings)
    deadline = time.monotonic() + timeout
    found: list[str] = []
    while time.monotonic() < deadline:
        state = cluster(task, settings)
        found = cluster_problems(state, members, settings.config.database.synchronous_mode)
        if not found and condition(state):
            return state
        time.sleep(1)
    raise HostError(
        f"{task.host.name}: waiting for {what}: the Patroni cluster is not healthy after {timeout:g} s"
        f"{': ' + '; '.join(found) if found else ''}. Run '{VENV}/bin/patronictl -c {CONFIG} list'"
    )


# GETs each path of argv[3:] from the Patroni REST API at argv[1]; prints {path: [status, body]}
# (status 0: no answer, the error as the body). One TLS context for all: each loads the trust
# store, a third of the command's CPU when made per request. Unless argv[2] is "-", the answer
# also says under "served" whether the API serves the certificate in that file: Patroni applies
# a reload on its next loop, after `systemctl reload` returned, and then reopens its socket.
# The requests go at once: Patroni's API answers each some 40 ms late (its reply waits on the
# client's delayed ACK), so one after another three GETs took 130 ms of every read.
REST_GETS = r"""
import json, ssl, sys, threading, urllib.error, urllib.parse, urllib.request
base, certificate, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
answers, tls = dict.fromkeys(paths), ssl.create_default_context()
def get(path):
    try:
        with urllib.request.urlopen(base + path, timeout=3, context=tls) as answer:
            answers[path] = [answer.status, answer.read().decode()]
    except urllib.error.HTTPError as error:
        answers[path] = [error.code, error.read().decode()]
    except OSError as error:
        answers[path] = [0, str(error)]
def served():
    url = urllib.parse.urlsplit(base)
    try:
        pem = ssl.get_server_certificate((url.hostname, url.port), timeout=3)
        with open(certificate) as file:
            answers["served"] = ssl.PEM_cert_to_DER_cert(pem) == ssl.PEM_cert_to_DER_cert(file.read())
    except (OSError, ValueError):
        answers["served"] = False
asks = [threading.Thread(target=get, args=(path,)) for path in paths]
if certificate != "-":
    asks.append(threading.Thread(target=served))
for ask in asks:
    ask.start()
for ask in asks:
    ask.join()
print(json.dumps(answers))
"""


def rest_gets_command(base: str, paths: list[str], certificate: str = "-") -> str:
    """The command printing what the REST API at `base` answers for each of `paths` and, given a
    `certificate` file on the host, whether the API serves it (REST_GETS)."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    return f"python3 -I -S -c {shlex.quote(REST_GETS)} {base} {shlex.quote(certificate)} {quoted}"


def rest_gets(task: Task, paths: list[str], address: str, asker: str | None = None) -> dict[str, tuple[int, str]]:
    """GET Patroni REST endpoints, in one command run on the host `asker` (the task's host when None), which the
    firewall must let in (the port's clients); (status, body) by path."""
    what = Expectation(f"Patroni REST {', '.join(paths)}")
    out = run(task, rest_gets_command(api(address), paths), host=asker, what=what, reads_only=True)
    return {path: (status, body) for path, (status, body) in json.loads(out.stdout).items()}


def rest_get(task: Task, path: str, address: str, asker: str | None = None) -> tuple[int, str]:
    """GET a Patroni REST endpoint (from the task's host, or `asker`); returns (status, body)."""
    return rest_gets(task, [path], address, asker)[path]


def wait_for_member(task: Task, settings: Settings, timeout: float = 120) -> None:
    """Wait until this member's PostgreSQL runs (REST /health answers 200)."""
    ip = settings.hosts[task.host.name].private_ip
    deadline = time.monotonic() + timeout
    status, body = 0, ""
    while time.monotonic() < deadline:
        status, body = rest_get(task, "/health", ip)
        if status == 200:
            return
        time.sleep(1)
    raise HostError(
        f"{task.host.name}: PostgreSQL did not come up under Patroni within {timeout:g} s "
        f"(REST /health: {status} {body.strip()[:200]}). Read 'journalctl -u patroni -n 80' on the host"
    )


def answering_members(task: Task, settings: Settings) -> list[str]:
    """The members expected in the cluster: all but those that dropped out of this run (they
    stopped answering; the others carry on without them, a replica or the leader alike)."""
    lost = lost_hosts(task)
    return [h.name for h in settings.members("patroni") if h.name not in lost]


def cluster_problems(cluster: dict, members: list[str], synchronous: bool) -> list[str]:
    """What keeps a Patroni cluster (GET /cluster) from being healthy: one leader, the rest streaming."""
    found = []
    by_name = {m["name"]: m for m in cluster.get("members", [])}
    leaders = [m["name"] for m in by_name.values() if m.get("role") == "leader"]
    if len(leaders) != 1:
        found.append(f"{len(leaders)} leaders ({', '.join(leaders) or 'none'})")
    for name in members:
        member = by_name.get(name)
        if member is None:
            found.append(f"{name} is not in the cluster")
        elif member.get("role") != "leader" and member.get("state") != "streaming":
            found.append(f"{name} is {member.get('state')}, not streaming")
    if synchronous and not any(m.get("role") == "sync_standby" for m in by_name.values()):
        found.append("no synchronous standby")
    return found


def cluster(task: Task, settings: Settings) -> dict:
    status, body = rest_get(task, "/cluster", settings.hosts[task.host.name].private_ip)
    if status != 200:
        raise HostError(f"{task.host.name}: Patroni REST /cluster answered {status}: {body.strip()[:200]}")
    return json.loads(body)


def own_view(task: Task, settings: Settings) -> tuple[int, str, bool]:
    """GET /cluster from this member's REST API, and whether the API serves the member's certificate on disk
    (one command): (status, body, serves it)."""
    what = Expectation("Patroni REST /cluster and the certificate it serves")
    command = rest_gets_command(api(settings.hosts[task.host.name].private_ip), ["/cluster"], TLS_CERT)
    answers = json.loads(run(task, command, what=what, reads_only=True).stdout)
    status, body = answers["/cluster"]
    return status, body, answers["served"]


def await_certificate(task: Task, settings: Settings, timeout: float = 30) -> None:
    """Wait until the REST API serves the certificate on disk: after a reload that brought a new one, Patroni
    reopens its socket on its next loop, and a client reaching it in between is reset."""
    deadline = time.monotonic() + timeout
    while not own_view(task, settings)[2]:
        if time.monotonic() > deadline:
            raise HostError(
                f"{task.host.name}: Patroni's REST API still does not serve {TLS_CERT} {timeout:g} s after the "
                f"reload. Read 'journalctl -u patroni -n 80' on the host"
            )
        time.sleep(0.5)


def wait_for_cluster(task: Task, settings: Settings) -> Result:
    """Health check: the REST API serves the member's certificate, one leader, every other member streaming, a
    sync standby when synchronous_mode is on."""
    members = answering_members(task, settings)
    status, body, current = own_view(task, settings)
    healthy = status == 200 and not cluster_problems(
        state := json.loads(body), members, settings.config.database.synchronous_mode
    )
    if not healthy:  # just started, or still settling
        wait_for_member(task, settings)
    if not current:  # a reload that brought a new one is still to take effect
        await_certificate(task, settings)
    if not healthy:
        state = await_cluster(task, settings, lambda _state: True, "the cluster")
    return Result(host=task.host, result=f"leader {leader_of(state)}, replicas streaming")


PATRONI = patroni_component()
