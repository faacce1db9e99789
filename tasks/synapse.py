"""Deployment step 11, native mode: Synapse and its workers from the pinned wheel set, run by systemd.

The lab (and sites that want no containers) run Synapse this way; production's default
is the playbook (matrix-docker-ansible-deploy). Wheels come from the artifact cache and
are installed without an index; psycopg2 comes from Debian. The database is reached
through every PgBouncer host (libpq tries them in order), the signing key comes from
the secrets file, and nothing in homeserver.yaml needs the internet (no trusted key
servers, no stats reporting).

Workers (core/workers.py, counts from the sizing) run from one template unit,
`synapse-worker@<name>`, each with its config in /etc/synapse/workers/; a private Redis
on the host carries replication. Only the processes whose inputs changed restart: the
shared config, the venv or the signing key restart all of them (adding an event
persister must restart every worker), a worker's own file restarts that worker.
"""

from __future__ import annotations

import shlex

from nornir.core.task import Result, Task

from core import artifacts
from core.ports import SYNAPSE_REDIS_EXPORTER_PORT
from core.settings import Settings
from core.sizing import workers_for
from core.workers import LOOPBACK, REDIS_PORT, REPLICATION_PORT, Worker, of_kind, plan
from tasks.coturn import turn_uris
from tasks.files import ArtifactSpec, FileSpec, put_artifacts, put_files, render
from tasks.packages import packages
from tasks.redis import RedisInstance, redis_instance
from tasks.remote import Expectation, Mode, mode, run
from tasks.systemd import UNIT_DIR, Wanted, service_user, services
from tasks.waits import wait_for_http, wait_for_urls

VENV = "/opt/synapse/venv"
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
REDIS = RedisInstance(
    "synapse", "Synapse's worker replication streams", LOOPBACK, REDIS_PORT, SYNAPSE_REDIS_EXPORTER_PORT
)


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
        "db_hosts": ",".join(h.private_ip for h in settings.members("pgbouncer")),
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
    }


def install_synapse(task: Task, settings: Settings) -> Result:
    """Push the wheel set; (re)install into the venv when the installed version is not the pinned one."""
    artifact = artifacts.manifest()["synapse"]
    specs = [ArtifactSpec(f"{WHEELS}/{p.name}", p, mode=0o644) for p in artifacts.deliverables(artifact)]
    pushed = task.run(task=put_artifacts, specs=specs, severity_level=10)[0]
    if mode(task) is Mode.PLAN:
        return Result(host=task.host, changed=True, diff=f"synapse {artifact.version} in {VENV}")
    probe = f"{VENV}/bin/python -c 'import synapse; print(synapse.__version__)' 2>/dev/null; true"
    installed = run(task, probe).stdout.strip()
    if installed == artifact.version and not pushed.changed:
        return Result(host=task.host, result=installed)
    if mode(task) is Mode.APPLY:
        run(
            task,
            f"set -e; install -d -o {USER} -g {USER} -m 0750 {DATA} {DATA}/media; "
            f"[ -x {VENV}/bin/pip ] || python3 -m venv --system-site-packages {VENV}; "
            f"{VENV}/bin/pip install --quiet --no-index --find-links {WHEELS} "
            f"{shlex.quote(f'matrix-synapse[redis]=={artifact.version}')}",
            timeout=900,
            what=Expectation(
                f"matrix-synapse {artifact.version} installed in {VENV}",
                f"pip's message above names the missing wheel; check {WHEELS} and python3-venv on the host",
            ),
        )
    return Result(host=task.host, changed=True, diff=f"synapse {installed or 'none'} → {artifact.version}")


def synapse(task: Task, settings: Settings) -> Result:
    """Native Synapse: packages, venv, Redis, configs, units; restart only the processes whose inputs changed."""
    host = settings.hosts[task.host.name]
    processes = workers(settings)
    task.run(task=packages, names=["python3-venv", "python3-psycopg2"], severity_level=10)
    service_user(task, USER)
    installed = task.run(task=install_synapse, settings=settings, severity_level=10)[0].changed
    if processes:
        redis_instance(task, REDIS, settings.secrets["synapse_redis_password"], host.private_ip)
    context = {"venv": VENV, "config": CONFIG, "data": DATA, "user": USER, "workers_dir": WORKERS_DIR}
    shared = [
        FileSpec(
            CONFIG,
            render(task, "synapse/homeserver.yaml.j2", **homeserver_config(settings, host.private_ip)),
            group=USER,
            mode=0o640,
        ),
        FileSpec(LOG_CONFIG, render(task, "synapse/log.yaml.j2")),
        FileSpec(SIGNING_KEY, settings.secrets["synapse_signing_key"] + "\n", USER, USER, 0o640, secret=True),
    ]
    units = [
        FileSpec(f"{UNIT_DIR}/{UNIT}", render(task, "synapse/synapse.service.j2", **context)),
        FileSpec(f"{UNIT_DIR}/{WORKER_UNIT}", render(task, "synapse/synapse-worker@.service.j2", **context)),
    ]
    per_worker = {
        w.name: FileSpec(
            f"{WORKERS_DIR}/{w.name}.yaml",
            render(
                task, "synapse/worker.yaml.j2", worker=w, ip=host.private_ip, loopback=LOOPBACK, log_config=LOG_CONFIG
            ),
            group=USER,
            mode=0o640,
        )
        for w in processes
    }
    files = task.run(task=put_files, specs=[*shared, *units, *per_worker.values()], severity_level=10)[0]
    written = set(files.result or [])
    all_restart = installed or any(spec.path in written for spec in shared)
    main_unit_changed = units[0].path in written
    worker_unit_changed = units[1].path in written
    main = {UNIT: Wanted(restart=all_restart or main_unit_changed)}
    peers = {
        worker_unit(name): Wanted(restart=all_restart or worker_unit_changed or spec.path in written)
        for name, spec in per_worker.items()
    }
    retired = retired_workers(task, set(per_worker))
    peers |= {worker_unit(name): Wanted(running=False, enabled=False) for name in retired}
    # The main process first (its first start creates the schema), then every worker at once.
    started = services(task, main, peers, daemon_reload=main_unit_changed or worker_unit_changed)
    if retired and mode(task) is Mode.APPLY:
        paths = " ".join(shlex.quote(f"{WORKERS_DIR}/{name}.yaml") for name in retired)
        run(task, f"rm -f -- {paths}", what=Expectation(f"configs of retired workers {', '.join(retired)} removed"))
    changed = files.changed or installed or started.changed or bool(retired)
    diff = "\n".join(d for d in (files.diff, started.diff) if d)
    return Result(host=task.host, changed=changed, diff=diff)


def retired_workers(task: Task, current: set[str]) -> list[str]:
    """Workers with a config on the host that the sizing no longer has (the worker count went down)."""
    if mode(task) is Mode.PLAN:
        return []
    out = run(
        task,
        f"ls -1 {WORKERS_DIR} 2>/dev/null || true",
        what=Expectation(f"the worker configs in {WORKERS_DIR}"),
    )
    found = {line[: -len(".yaml")] for line in out.stdout.split() if line.endswith(".yaml")}
    return sorted(found - current)


def synapse_healthy(task: Task, settings: Settings) -> Result:
    """Health gate: /health of the main process and of every worker, then the client API via the VIP.

    The main process's first start creates the schema; workers that started alongside
    it answer once it is there.
    """
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, result="not checked in this mode")
    ip = settings.hosts[task.host.name].private_ip
    urls = [f"http://{ip}:{HTTP_PORT}/health"]
    urls += [f"http://{LOOPBACK if w.replication else ip}:{w.http_port}/health" for w in workers(settings)]
    wait_for_urls(task, urls, timeout=300)
    # Then as clients see it: HAProxy has marked Synapse up again (rise 2 × inter 2s).
    url = f"https://{settings.config.homeserver_fqdn}/_matrix/client/versions"
    return wait_for_http(task, url, timeout=60)


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


def admin_user(task: Task, settings: Settings) -> Result:
    """Deployment step 15: the first admin user, created once (its password is in the secrets file)."""
    user = settings.config.synapse.admin_user
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, result=f"would make sure @{user}:{settings.config.domain} exists")
    base = f"http://{settings.hosts[task.host.name].private_ip}:{HTTP_PORT}"
    secrets = settings.secrets
    out = run(
        task,
        f"python3 -c {shlex.quote(REGISTER_ADMIN)} {shlex.quote(base)} {shlex.quote(user)}",
        stdin=f"{secrets['synapse_registration_shared_secret']}\n{secrets['synapse_admin_password']}\n",
        what=Expectation(f"@{user} registered or already there", f"journalctl -u {UNIT} on the host"),
    )
    created = out.stdout.strip() == "created"
    return Result(host=task.host, changed=created, diff=f"@{user}:{settings.config.domain} created" if created else "")
