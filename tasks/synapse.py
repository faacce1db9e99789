"""Deployment step 11, native mode: Synapse and its workers from the pinned wheel set, run by systemd.

The lab (and sites that want no containers) run Synapse this way; production's default
is the playbook (matrix-docker-ansible-deploy). Wheels come from the artifact cache and
are installed without an index; psycopg2 comes from Debian. The database is reached
through the host's own PgBouncer (tasks/synapse_pgbouncer.py), the signing key comes from
the secrets file, and nothing in homeserver.yaml needs the internet (no trusted key
servers, no stats reporting).

Workers (core/workers.py, counts from the sizing) run from one template unit,
`synapse-worker@<name>`, each with its config in /etc/synapse/workers/; a private Redis
on the host carries replication. Only the processes whose inputs changed restart: the
shared config, the venv or the signing key restart all of them (adding an event
persister must restart every worker), a worker's own file restarts that worker.

Each Synapse version has its own venv (/opt/synapse/venvs/<version>) and the units name
it: installing a new version never changes the code under a running process, so
`maintenance.py update` can install first and restart one process at a time
(tasks/rolling.py), while the deploy restarts them all together.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from nornir.core.task import Result, Task

from core import artifacts
from core.catalog import GroupRule
from core.config import Config, duration_seconds
from core.ports import PortUse, tcp
from core.secrets import signing_key, token
from core.settings import HostInfo, Settings
from core.sizing import workers_for
from core.targets import Job, Target, labels
from core.turn_service import turn_uris
from core.workers import LOOPBACK, REDIS_PORT, REPLICATION_PORT, Worker, of_kind, plan, playbook_plan, port_ranges
from tasks.component import Component
from tasks.declaration import Command, Context, File, Handler, Service, Venv, Wheels, template
from tasks.facts import HostFacts
from tasks.pooler import SOCKET_DIR
from tasks.redis import RedisInstance, redis_component
from tasks.synapse_pgbouncer import SYNAPSE_PGBOUNCER
from tasks.systemd import UNIT_DIR
from tasks.venvs import venv_commands
from tasks.waits import wait_for_urls

VENVS = "/opt/synapse/venvs"
WHEELS = "/opt/synapse/wheels"
CONFIG_DIR = "/etc/synapse"
CONFIG = f"{CONFIG_DIR}/homeserver.yaml"
LOG_CONFIG = f"{CONFIG_DIR}/log.yaml"
SIGNING_KEY = f"{CONFIG_DIR}/signing.key"
DATA = "/var/lib/synapse"
WORKERS_DIR = f"{CONFIG_DIR}/workers"
UNIT = "synapse.service"
WORKER_UNIT = "synapse-worker@.service"
HTTP_PORT = 8008
USER = "synapse"
REDIS_EXPORTER_PORT = 9122
REDIS = RedisInstance(
    "synapse", "Synapse's worker replication streams", "synapse_redis_password", REDIS_PORT, REDIS_EXPORTER_PORT
)


def no_workers(settings: Settings, _host: HostInfo) -> str:
    return "" if workers(settings) else "Synapse runs no workers: no replication Redis"


# Converged inside Synapse's step, and only when there are workers to replicate between.
SYNAPSE_REDIS = redis_component(
    REDIS,
    "Redis for Synapse's worker replication, on loopback",
    ("synapse",),
    clients=(),  # bound to loopback
    absent=no_workers,
    listens=lambda config: config.synapse.mode == "native" and workers_for(config).total > 0,
)


def pinned_release(_settings: object = None) -> str:
    """The Synapse version artifacts/manifest.yaml pins (whatever the settings)."""
    return artifacts.manifest()["synapse"].version


def pinned_venv() -> str:
    """The venv of the version artifacts/manifest.yaml pins."""
    return SYNAPSE_VENV.of(pinned_release())


def worker_unit(name: str) -> str:
    return f"synapse-worker@{name}.service"


def native(settings: Settings) -> bool:
    """used in native mode only (synapse.mode: native); the playbook deploys Synapse otherwise"""
    return settings.config.synapse.mode == "native"


def workers(settings: Settings) -> list[Worker]:
    """The worker processes native mode runs (none in playbook mode: the playbook runs its own)."""
    return plan(workers_for(settings.config)) if native(settings) else []


def homeserver_config(settings: Settings, ip: str) -> dict[str, object]:
    """Template data of homeserver.yaml."""
    config, secrets = settings.config, settings.secrets
    processes = workers(settings)
    return {
        "workers": processes,
        "writers": of_kind(processes, "event_persister"),
        "senders": of_kind(processes, "federation_sender"),
        "media": of_kind(processes, "media"),
        "workers_dir": WORKERS_DIR,
        "loopback": LOOPBACK,
        "replication_port": REPLICATION_PORT,
        "replication_secret": secrets["synapse_replication_secret"],
        "redis_port": REDIS_PORT,
        "redis_password": secrets["synapse_redis_password"],
        "server_name": config.domain,
        "public_baseurl": f"https://{config.homeserver_fqdn}/",
        "ip": ip,
        "http_port": HTTP_PORT,
        "metrics_port": config.synapse.metrics_port,
        "federation": config.synapse.federation,
        "db_socket": SOCKET_DIR,
        "db_port": config.pgbouncer.port,
        "db_name": config.database.name,
        "db_user": config.database.user,
        "db_password": secrets["synapse_db_password"],
        "cp_min": config.synapse.database_cp_min,
        "cp_max": config.synapse.database_cp_max,
        "data": DATA,
        "log_config": LOG_CONFIG,
        "signing_key": SIGNING_KEY,
        "registration_shared_secret": secrets["synapse_registration_shared_secret"],
        "macaroon_secret_key": secrets["synapse_macaroon_secret_key"],
        "form_secret": secrets["synapse_form_secret"],
        "turn_uris": turn_uris(settings),
        "turn_shared_secret": secrets["turn_shared_secret"],
        "room_list_publication_rules": room_list_publication_rules(settings),
        "retention": retention_settings(settings),
    }


# Message retention's purge job: Synapse runs one a day when none is set; twice keeps a volume's
# daily growth from carrying a day's worth of expired history.
PURGE_INTERVAL = "12h"


def retention_settings(settings: Settings) -> dict[str, object]:
    """Synapse's own settings for `synapse.retention` (homeserver.yaml keys; a lifetime of null is left out).

    Synapse applies media retention once an hour (by last access, profile pictures and
    quarantined media kept), purges expired messages every PURGE_INTERVAL, and purges a room
    the whole server has forgotten after its period. Rooms may set a shorter message policy
    (m.room.retention), never a longer one than `messages`, nor one under a day (or under
    `messages` itself when that is shorter).
    """
    retention = settings.config.synapse.retention
    media = {
        key: lifetime
        for key, lifetime in (
            ("local_media_lifetime", retention.local_media),
            ("remote_media_lifetime", retention.remote_media),
        )
        if lifetime
    }
    found: dict[str, object] = {"media_retention": media} if media else {}
    if retention.messages:
        lifetime = retention.messages
        found["retention"] = {
            "enabled": True,
            "default_policy": {"max_lifetime": lifetime},
            "allowed_lifetime_min": lifetime if duration_seconds(lifetime) < duration_seconds("1d") else "1d",
            "allowed_lifetime_max": lifetime,
            "purge_jobs": [{"interval": PURGE_INTERVAL}],
        }
    found["forgotten_room_retention_period"] = retention.forgotten_rooms
    return found


def room_list_publication_rules(settings: Settings) -> list[dict[str, str]]:
    """Synapse's `room_list_publication_rules` for `synapse.room_directory`.

    Synapse refuses every publication when no rule matches (an empty list: a public room
    is created private and `PUT /directory/list/room` answers 403), and server admins do
    not bypass the rules, so "admin" allows the admin user by name.
    """
    config = settings.config
    who = {"everyone": "*", "admin": f"@{config.synapse.admin_user}:{config.domain}", "nobody": None}
    user = who[config.synapse.room_directory]
    return [] if user is None else [{"user_id": user, "alias": "*", "room_id": "*", "action": "allow"}]


# Each version in a venv of its own; installing one also makes the data folders, which Synapse's account owns.
SYNAPSE_VENV = Venv(
    Wheels("synapse", WHEELS),
    "matrix_synapse",
    "matrix-synapse[redis]",
    pinned_release,
    f"{VENVS}/{{version}}",
    prepare=f"install -d -o {USER} -g {USER} -m 0750 {DATA} {DATA}/media; install -d {VENVS}; ",
    timeout=900,
)
MAIN_UNIT_FILE = f"{UNIT_DIR}/{UNIT}"
WORKER_UNIT_FILE = f"{UNIT_DIR}/{WORKER_UNIT}"
SHARED = (CONFIG, LOG_CONFIG, SIGNING_KEY)  # a change restarts every process
VENVS_LISTING = f"ls -1t {VENVS} 2>/dev/null; true"  # newest first


def unit_variables(_context: Context) -> dict[str, object]:
    """Both units run the pinned version's venv."""
    return {"venv": pinned_venv(), "config": CONFIG, "data": DATA, "user": USER, "workers_dir": WORKERS_DIR}


UNIT_FILES = (
    File(MAIN_UNIT_FILE, template("synapse/synapse.service.j2", unit_variables)),
    File(WORKER_UNIT_FILE, template("synapse/synapse-worker@.service.j2", unit_variables)),
)


def worker_config(worker: Worker) -> File:
    def variables(context: Context) -> dict[str, object]:
        return {"worker": worker, "ip": context.host.private_ip, "loopback": LOOPBACK, "log_config": LOG_CONFIG}

    return File(
        f"{WORKERS_DIR}/{worker.name}.yaml", template("synapse/worker.yaml.j2", variables), group=USER, mode=0o640
    )


def synapse_files(settings: Settings) -> tuple[File, ...]:
    """The shared config, log config and signing key, both units, one config per worker."""
    return (
        File(
            CONFIG,
            template("synapse/homeserver.yaml.j2", lambda c: homeserver_config(c.settings, c.host.private_ip)),
            group=USER,
            mode=0o640,
        ),
        File(LOG_CONFIG, template("synapse/log.yaml.j2", lambda _: {})),
        File(SIGNING_KEY, lambda c: c.settings.secrets["synapse_signing_key"] + "\n", USER, USER, 0o640, secret=True),
        *UNIT_FILES,
        *(worker_config(w) for w in workers(settings)),
    )


def synapse_services(settings: Settings) -> tuple[Service, ...]:
    """The main process first (its first start creates the schema), then every worker at once; each restarts
    for the shared files and its own, never for another worker's."""
    return (
        Service(UNIT, restart_on=(*SHARED, MAIN_UNIT_FILE)),
        *(
            Service(worker_unit(w.name), restart_on=(*SHARED, WORKER_UNIT_FILE, worker_config(w).path), wave=1)
            for w in workers(settings)
        ),
    )


def process_restarts(context: Context, facts: HostFacts | None, written: frozenset[str]) -> frozenset[str]:
    """Every process after a new venv; otherwise those still running an older one (an interrupted update)."""
    if facts is None:
        return frozenset()
    if venv_commands(SYNAPSE_VENV, context.settings, facts.commands[SYNAPSE_VENV.read], written):
        return frozenset(service.unit for service in synapse_services(context.settings))
    return frozenset(parse_processes(facts.commands["processes"]).stale())


def old_venvs(listing: str, version: str) -> list[str]:
    """The venvs to remove from `ls -1t`'s listing: all but the pinned version's and the newest other."""
    return [name for name in listing.split() if name != version][1:]


def retire_and_prune(context: Context, facts: HostFacts | None, written: frozenset[str]) -> list[Command]:
    """After the units: workers the settings no longer name are stopped, disabled and their configs removed; once
    every process runs the pinned venv, old venvs go (the newest other kept, to roll back to)."""
    if facts is None:
        return []
    running = parse_processes(facts.commands["processes"])
    retired = sorted(running.configs - {w.name for w in workers(context.settings)})
    commands = []
    if retired:
        units = " ".join(shlex.quote(worker_unit(name)) for name in retired)
        paths = " ".join(shlex.quote(f"{WORKERS_DIR}/{name}.yaml") for name in retired)
        commands.append(
            Command(
                f"systemctl disable --now -- {units} && rm -f -- {paths}",
                f"retired workers {', '.join(retired)}: stopped, disabled, configs removed",
                f"workers {', '.join(retired)} retired",
                "look at 'journalctl -u <unit> -n 50' on the host for why the unit did not stop",
            )
        )
    if MAIN_UNIT_FILE in written or running.stale():
        commands += prune(facts.commands["venvs"])
    return commands


def prune(listing: str) -> list[Command]:
    """Remove the venvs of old versions (from `ls -1t`'s `listing`), keeping the pinned one and the newest other
    (to roll back to)."""
    victims = old_venvs(listing, pinned_release())
    if not victims:
        return []
    paths = " ".join(shlex.quote(f"{VENVS}/{name}") for name in victims)
    return [Command(f"rm -rf -- {paths}", f"old venvs removed: {', '.join(victims)}", "old venvs removed")]


# Staging a new version for `maintenance.py update`: the venv and the units pointing at it,
# nothing restarted (tasks/rolling.py then restarts one process at a time).
SYNAPSE_STAGE = Component(
    "synapse-stage",
    groups=("synapse",),
    summary="the pinned Synapse version installed in its own venv, the units pointed at it; nothing restarts",
    users=(USER,),
    venvs=(SYNAPSE_VENV,),
    files=UNIT_FILES,
    handlers=(
        Handler("systemctl daemon-reload", after=(MAIN_UNIT_FILE, WORKER_UNIT_FILE), expect="unit files reloaded"),
    ),
    applies=native,
)


@dataclass(frozen=True)
class Processes:
    """A Synapse host's worker configs and, per running Synapse unit, the venv its process started from."""

    configs: frozenset[str]
    venvs: dict[str, str]

    def stale(self) -> list[str]:
        """Running units whose process runs another venv than the pinned version's, main process first."""
        pinned = pinned_venv()
        return sorted((u for u, v in self.venvs.items() if v != pinned), key=lambda u: (u != UNIT, u))


# One command: the worker configs, then each running unit with its process's argv[0]
# (<venv>/bin/python): the units' files may already name a newer venv than it runs. One
# `systemctl show` for all units (a blank line after each), argv[0] read by the shell itself:
# a `systemctl` per unit cost a ten-worker host 60-70 ms of CPU on every run, this one 10 ms.
PROCESSES = rf"""ls -1 {WORKERS_DIR} 2>/dev/null | sed -n 's/^\(.*\)\.yaml$/config \1/p'
running() {{
  if [ "$state" = running ]; then
    argv0=; IFS= read -r -d '' argv0 2>/dev/null < "/proc/$pid/cmdline"
    printf 'process %s %s\n' "$unit" "$argv0"
  fi
  state=
}}
systemctl show -p Id -p MainPID -p SubState -- {UNIT} 'synapse-worker@*.service' | {{
  while IFS='=' read -r key value; do
    case $key in Id) unit=$value ;; MainPID) pid=$value ;; SubState) state=$value ;; '') running ;; esac
  done
  running
}}"""


def parse_processes(stdout: str) -> Processes:
    configs, venvs = set(), {}
    for line in stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "config" and rest:
            configs.add(rest)
        elif kind == "process" and rest:
            unit, _, argv0 = rest.partition(" ")
            venvs[unit] = argv0.removesuffix("/bin/python")
    return Processes(frozenset(configs), venvs)


def health_urls(settings: Settings, ip: str) -> dict[str, str]:
    """Each Synapse unit's /health (a worker with a replication listener answers on loopback), main process first."""
    urls = {UNIT: f"http://{ip}:{HTTP_PORT}/health"}
    for w in workers(settings):
        urls[worker_unit(w.name)] = f"http://{LOOPBACK if w.replication else ip}:{w.http_port}/health"
    return urls


def synapse_healthy(task: Task, settings: Settings) -> Result:
    """Health gate: /health of the main process and of every worker, then the client API via the VIP.

    The main process's first start creates the schema; workers that started alongside
    it answer once it is there.
    """
    # And as clients see it, through the VIP: HAProxy has marked Synapse up (rise 2 × inter 2s).
    urls = list(health_urls(settings, settings.hosts[task.host.name].private_ip).values())
    urls.append(f"https://{settings.config.homeserver_fqdn}/_matrix/client/versions")
    return wait_for_urls(task, urls, timeout=300)


# Registers the admin with the shared secret on the local listener; an existing user is
# left alone. Secret and password arrive on stdin.
REGISTER_ADMIN = r"""
import hashlib, hmac, json, sys, urllib.error, urllib.request
secret, password = sys.stdin.readline().strip(), sys.stdin.readline().strip()
base, user = sys.argv[1], sys.argv[2]
nonce = json.load(urllib.request.urlopen(base + "/_synapse/admin/v1/register", timeout=30))["nonce"]
fields = [nonce, user, password, "admin"]
mac = hmac.new(secret.encode(), "\0".join(fields).encode(), hashlib.sha1).hexdigest()
body = {"nonce": nonce, "username": user, "password": password, "admin": True, "mac": mac}
request = urllib.request.Request(base + "/_synapse/admin/v1/register", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
try:
    urllib.request.urlopen(request, timeout=30)
    print("created")
except urllib.error.HTTPError as error:
    if json.load(error).get("errcode") != "M_USER_IN_USE":
        raise
    print("exists")
"""


# The admin the deploy registered (or found), so a re-run need not ask again; remove it to
# have the next deploy register synapse.admin_user again (e.g. after emptying the database).
REGISTERED = f"{DATA}/.admin-user"


def register_admin(context: Context, _facts: HostFacts | None, _written: frozenset[str]) -> list[Command]:
    """Register synapse.admin_user with the shared secret unless this host recorded it already; an existing
    user is left alone (and recorded)."""
    settings = context.settings
    user = settings.config.synapse.admin_user
    if context.reads is not None and context.reads["registered"].strip() == user:
        return []
    base = f"http://{context.host.private_ip}:{HTTP_PORT}"
    secrets = settings.secrets
    register = f"python3 -c {shlex.quote(REGISTER_ADMIN)} {shlex.quote(base)} {shlex.quote(user)}"
    who = f"@{user}:{settings.config.domain}"
    return [
        Command(
            f'answer=$({register}) && echo "$answer" && echo {shlex.quote(user)} > {REGISTERED}',
            f"{who} created",
            f"{who} registered or already there",
            f"journalctl -u {UNIT} on the host",
            marker="created",
            pending=f"{who} registered unless it exists",
            name=f"register {who} with the shared secret",
            stdin=f"{secrets['synapse_registration_shared_secret']}\n{secrets['synapse_admin_password']}\n",
        )
    ]


ADMIN_USER = Component(
    "admin-user",
    groups=("synapse",),
    summary="the first admin user (synapse.admin_user), created once",
    after=("synapse",),
    reads={"registered": f"cat {REGISTERED} 2>/dev/null || true"},
    behaviour=register_admin,
    applies=native,
)


def listeners(config: Config) -> list[PortUse]:
    """Synapse's listeners, in either mode (in playbook mode its containers publish them), and native mode's
    workers."""
    processes = ("synapse", "python3", "python", "docker-proxy", "traefik")
    uses = [
        tcp("synapse-client", HTTP_PORT, processes, ("haproxy",)),
        tcp("synapse-replication", REPLICATION_PORT, processes, ()),  # on loopback
        tcp(
            "synapse-metrics",
            config.synapse.metrics_port,
            processes,
            ("monitoring",),
            "config.yaml synapse.metrics_port",
        ),
    ]
    if config.synapse.mode == "native":
        counts = "config.yaml synapse.workers (or the scale)"
        ranges = port_ranges(workers_for(config))
        uses += [
            PortUse(label, first, last, "tcp", processes, counts, clients=who) for label, first, last, who in ranges
        ]
    return uses


def synapse_targets(settings: Settings) -> list[Job]:
    """The main process and every worker with a metrics listener: ours in native mode, the playbook's otherwise."""
    config = settings.config
    host = settings.members("synapse")[0]
    if config.synapse.mode == "native":
        processes = plan(workers_for(config))
    else:
        processes = playbook_plan(workers_for(config), config.synapse.federation)
    main = Target(f"{host.private_ip}:{config.synapse.metrics_port}", labels(host, worker="main"))
    workers = [
        Target(f"{host.private_ip}:{w.metrics_port}", labels(host, worker=w.name, worker_type=w.kind))
        for w in processes
    ]
    return [Job("synapse", [main, *workers])]


SYNAPSE = Component(
    "synapse",
    groups=("synapse",),
    summary="Synapse (native mode: pinned wheels in a venv, systemd); answers /health",
    after=("pgbouncer", "minio-bucket", "keepalived"),
    packages=("python3-venv", "python3-psycopg2"),
    autostart=True,
    users=(USER,),
    venvs=(SYNAPSE_VENV,),
    files=synapse_files,
    services=synapse_services,
    reads={"processes": PROCESSES, "venvs": VENVS_LISTING},
    behaviour=retire_and_prune,
    restarts=process_restarts,
    parts=(SYNAPSE_PGBOUNCER, SYNAPSE_REDIS),
    check=synapse_healthy,
    applies=native,
    inventory=(GroupRule("synapse", fewest=1, most=1, reboot_rank=7),),
    secrets={
        # Its database account (PgBouncer's userlist and the role read them too).
        "synapse_db_password": token,
        "synapse_db_scram_salt": token,
        "synapse_registration_shared_secret": token,
        "synapse_macaroon_secret_key": token,
        "synapse_form_secret": token,
        "synapse_replication_secret": token,
        "synapse_admin_password": token,
        "synapse_signing_key": signing_key,
        # Playbook mode: the playbook's generic secret (its Synapse derives its own keys from it).
        "playbook_generic_secret_key": token,
    },
    ports=listeners,
    scrape=synapse_targets,
)
