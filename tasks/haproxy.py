"""HAProxy: one config per host, composed of the sections its groups need.

The edge tier (haproxy hosts) has TLS termination on 443/8448, routing to the Synapse
host, the admin allowlist and the stats page; a Coturn host has TURN's TLS. (PgBouncer's
route to the primary is an instance of its own: tasks/postgres_route.py.) The file is checked with `haproxy -c`
on the host before it replaces the running one, then reloaded gracefully: the master
process hands the listening sockets to new workers and old workers finish their
connections.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from core import pki
from core.catalog import GroupRule
from core.config import Config
from core.errors import InputError, InputProblem
from core.pki import ServerCertificate
from core.ports import PortUse, public_tcp, tcp
from core.secrets import token
from core.settings import HostInfo, Settings
from core.targets import HAPROXY_PASSWORD_FILE, Job, per_host
from core.turn_service import PORT, TLS_PORT, turn_certificate
from core.workers import CLIENT_PATHS, FEDERATION_PATHS, MEDIA_PATHS, SYNC_PATHS, of_kind
from tasks.component import Component
from tasks.declaration import Behaviour, Command, Context, File, Service, Stage, template
from tasks.facts import HostFacts
from tasks.livekit import HTTP_PORT as LIVEKIT_HTTP_PORT
from tasks.livekit import JWT_PATH, JWT_PORT, SFU_PATH
from tasks.synapse import workers
from tasks.systemd import ServiceFact
from tasks.waits import command_script

# Sends each line of stdin to the HAProxy socket argv[1] as one command and prints the
# answers; exit status 3 when HAProxy is not running (no socket to connect to). The
# half-close ends the session: the master's CLI would otherwise wait for more commands.
ADMIN_PROGRAM = """
import socket, sys
for command in sys.stdin.read().splitlines():
    try:
        admin = socket.socket(socket.AF_UNIX)
        admin.connect(sys.argv[1])
    except OSError:
        raise SystemExit(3)
    admin.sendall(command.encode() + b"\\n")
    admin.shutdown(socket.SHUT_WR)
    sys.stdout.write(b"".join(iter(lambda: admin.recv(65536), b"")).decode())
"""


def cli(socket: str) -> str:
    """The command that sends each line of its stdin to the HAProxy socket `socket`."""
    return f"python3 -c {shlex.quote(ADMIN_PROGRAM)} {socket}"


@dataclass(frozen=True)
class Instance:
    """One HAProxy process: its unit and config, its admin socket, its master's CLI (-S, which lists the
    workers) and the files a graceful reload keeps the servers' states and the old workers in."""

    unit: str
    config: str
    admin_socket: str
    master_socket: str
    state_file: str
    workers_file: str

    @property
    def admin(self) -> str:
        return cli(self.admin_socket)

    @property
    def save_state(self) -> str:
        """`show servers state` from the running HAProxy into its state file; nothing when it is not running."""
        return (
            f"echo 'show servers state' | {self.admin} > {self.state_file}.new && "
            f"mv {self.state_file}.new {self.state_file} || rm -f {self.state_file}.new"
        )

    @property
    def workers(self) -> str:
        """The PIDs of the current workers (`show proc` lists them under "# workers", the ones finishing their
        connections after a reload under "# old workers"); nothing when stopped."""
        return (
            f"echo 'show proc' | {cli(self.master_socket)} | "
            "awk '/^# workers/ {w = 1; next} /^#/ {w = 0} w && $1 ~ /^[0-9]+$/ {print $1}'"
        )


# The edge: Debian's unit, which starts HAProxy with its master's CLI on /run/haproxy-master.sock.
EDGE = Instance(
    "haproxy.service",
    "/etc/haproxy/haproxy.cfg",
    "/run/haproxy/admin.sock",
    "/run/haproxy-master.sock",
    "/var/lib/haproxy/server-state",
    "/run/matrix-platform/haproxy.workers",
)
CONFIG, UNIT = EDGE.config, EDGE.unit
ADMIN = EDGE.admin
CERT_DIR = "/etc/haproxy/certs"
STATS_PORT = 8404
STATS_USER = "stats"
# Where the Synapse host answers HTTP behind HAProxy. Playbook mode: Traefik's web
# entrypoint and its federation entrypoint, bound to the private address (the
# playbook's vars.yml sets them); native mode: Synapse's own listener, which serves the
# client and federation resources.
TRAEFIK_WEB_PORT = 81
TRAEFIK_FEDERATION_PORT = 8449
SYNAPSE_HTTP_PORT = 8008
# Paths that belong to Synapse's clients and federation even when the admin UI is at "/".
MATRIX_PATHS = ("/_matrix/", "/_synapse/client/", "/.well-known/")


@dataclass(frozen=True)
class Backend:
    """A pool of servers for one kind of traffic, with the request that proves it serves."""

    name: str
    servers: list[dict[str, object]]
    check_path: str
    balance: str = "roundrobin"
    strip_authorization: bool = False  # static files never need the user's access token
    prefix: str = ""  # a public path prefix routed here and removed before forwarding
    paths: tuple[str, ...] = ()  # path regexes routed here (Synapse workers), before every other rule


EDGE_CERTIFICATE = f"{CERT_DIR}/{{fqdn}}.pem"
TURNS_CERTIFICATE = f"{CERT_DIR}/turn.pem"


def turns(settings: Settings, host: HostInfo) -> dict | None:
    """On a Coturn host: TURN's TLS ends here (TLS 1.2 and 1.3, an alert for anything older; Debian's Coturn
    4.6.1 offers 1.2 only and leaves an older hello unanswered) and the stream goes on to Coturn's TCP listener."""
    if "coturn" not in host.groups:
        return None
    return {"address": host.private_ip, "port": TLS_PORT, "turn_port": PORT, "certificate": TURNS_CERTIFICATE}


def certificate_path(settings: Settings) -> str:
    return EDGE_CERTIFICATE.format(fqdn=settings.config.homeserver_fqdn)


def backends(settings: Settings) -> dict[str, Backend]:
    """The edge's backends by role: client API, federation API, static files (admin UI, well-known)."""
    synapse = settings.members("synapse")
    playbook = settings.config.synapse.mode == "playbook"
    web = TRAEFIK_WEB_PORT if playbook else SYNAPSE_HTTP_PORT
    federation = TRAEFIK_FEDERATION_PORT if playbook else SYNAPSE_HTTP_PORT

    def servers(port: int) -> list[dict[str, object]]:
        return [{"name": h.name, "ip": h.private_ip, "port": port} for h in synapse]

    found = {
        "client": Backend("synapse_client", servers(web), "/_matrix/client/versions"),
        "federation": Backend("synapse_federation", servers(federation), "/_matrix/federation/v1/version"),
        "static": Backend("static_files", servers(web), "/_matrix/client/versions", strip_authorization=True),
    }
    found.update(worker_backends(settings))
    if settings.config.livekit.enabled:

        def livekit(name: str, port: int, check: str, prefix: str) -> Backend:
            nodes = [{"name": h.name, "ip": h.private_ip, "port": port} for h in settings.members("livekit")]
            return Backend(name, nodes, check, balance="leastconn", prefix=prefix)

        found["sfu"] = livekit("livekit_sfu", LIVEKIT_HTTP_PORT, "/", SFU_PATH)
        found["jwt"] = livekit("livekit_jwt", JWT_PORT, "/healthz", JWT_PATH)
    return found


def worker_backends(settings: Settings) -> dict[str, Backend]:
    """Native mode: the worker pools and the paths Synapse's workers documentation routes to them.

    A user's sync requests stay on one sync worker (hashed on the access token, consistent
    so a worker more or less moves few users); inbound federation is balanced by the
    sending server's address; the rest round robin. The main process, which serves every
    one of these requests too, is the sync and generic pools' backup: it answers while
    the pool's only worker restarts (not for media: with a media worker the main process
    has no media repository). Playbook mode routes inside the Synapse host (its
    Traefik), so there it is empty.
    """
    processes = workers(settings)
    if not processes:
        return {}
    host = settings.members("synapse")[0]
    ip = host.private_ip
    main = {"name": host.name, "ip": ip, "port": SYNAPSE_HTTP_PORT, "backup": True}

    def pool(kind: str) -> list[dict[str, object]]:
        return [{"name": w.name, "ip": ip, "port": w.http_port} for w in of_kind(processes, kind)]

    def with_main(kind: str) -> list[dict[str, object]]:
        return [*pool(kind), main]

    found = {}
    if pool("sync"):
        found["sync"] = Backend(
            "synapse_sync", with_main("sync"), "/health", balance="hdr(Authorization)", paths=SYNC_PATHS
        )
    if pool("generic"):
        found["workers"] = Backend("synapse_workers", with_main("generic"), "/health", paths=CLIENT_PATHS)
        if settings.config.synapse.federation:
            found["federation_workers"] = Backend(
                "synapse_federation_workers", with_main("generic"), "/health", balance="source", paths=FEDERATION_PATHS
            )
    if pool("media"):
        found["media"] = Backend("synapse_media", pool("media"), "/health", paths=MEDIA_PATHS)
    return found


def delegation(settings: Settings) -> dict[str, str]:
    """The /.well-known/matrix/ documents that point clients and servers at the homeserver name, by kind.

    Synapse's own server document names the base domain (`<server_name>:443`), which in an
    air-gapped site resolves nowhere else; these delegate to the homeserver name instead.
    """
    fqdn = settings.config.homeserver_fqdn
    return {
        "server": json.dumps({"m.server": f"{fqdn}:443"}),
        "client": json.dumps({"m.homeserver": {"base_url": f"https://{fqdn}"}}),
    }


def well_known(settings: Settings) -> dict[str, str] | None:
    """Native mode: the delegation documents the edge answers itself, for any name on the VIP. In playbook
    mode the playbook's static-files service answers them (base domain included)."""
    return delegation(settings) if settings.config.synapse.mode == "native" else None


def edge(settings: Settings, host: HostInfo) -> dict | None:
    """Template data of the public frontends, for hosts of the haproxy group."""
    if "haproxy" not in host.groups:
        return None
    synapse = settings.config.synapse
    path = synapse.admin_path
    admin_ui = ["path_beg /"] if path == "/" else [f"path {path}", f"path_beg {path}/"]
    return {
        "fqdn": settings.config.homeserver_fqdn,
        "well_known": well_known(settings),
        "certificate": certificate_path(settings),
        "federation": synapse.federation,
        "admin_ui": admin_ui,
        "matrix_paths": " ".join(MATRIX_PATHS),
        "admin_allowlist": [str(n) for n in synapse.admin_allowlist],
        "backends": backends(settings),
        "stats": {"bind": f"{host.private_ip}:{STATS_PORT}", "user": STATS_USER},
    }


def config(context: Context) -> dict[str, object]:
    """Template data of haproxy.cfg: the sections this host's groups need."""
    settings, host = context.settings, context.host
    return {
        "host_name": host.name,
        "turns": turns(settings, host),
        "edge": edge(settings, host),
        "stats_password": settings.secrets["haproxy_stats_password"],
        "admin_socket": EDGE.admin_socket,
        "server_state_file": EDGE.state_file,
    }


def reload_in_order(instance: Instance) -> Behaviour:
    """Around a reload of a running HAProxy `instance`: its servers' states saved first (the new workers start
    from them), then a wait for the new workers — the unit's reload only signals the master, which re-reads
    the config, binds and starts them — so what follows sees the new config."""

    def commands(context: Context, facts: HostFacts | None, written: frozenset[str]) -> list[Command]:
        if facts is None or not written or not facts.units.get(instance.unit, ServiceFact("", "", "")).active:
            return []
        old = instance.workers_file
        save = Command(
            f"mkdir -p {Path(old).parent}; {instance.save_state}; {instance.workers} > {old}",
            "",
            "the servers' states saved for the reload",
            stage=Stage.BEFORE_UNITS,
            name=f"save the servers' states to {instance.state_file}, the workers' PIDs to {old}",
        )
        changed = f'w=$({instance.workers}) && [ -n "$w" ] && [ "$(echo $w)" != "$(echo $(cat {old}))" ]'
        wait = Command(
            f"[ ! -s {old} ] || {command_script(changed, 30)}",
            "",
            "HAProxy's new workers running the new config within 30 s",
            f"run '{instance.workers}' on the host and read its output",
            timeout=60,
            name=f"wait until HAProxy's workers are others than those in {old}",
        )
        return [save, wait]

    return commands


def import_dir(settings: Settings) -> Path:
    return settings.config_path.parent / (settings.config.certificates.import_dir or "")


def import_problems(settings: Settings) -> list[InputProblem]:
    """With certificates.source 'import': what is wrong with the imported set (checked before any host)."""
    certificates = settings.config.certificates
    if certificates.source != "import":
        return []
    label = str(settings.config_path)
    if not certificates.import_dir:
        return [
            InputProblem(
                label, "certificates.import_dir", "not set", "name the folder with fullchain.pem and privkey.pem"
            )
        ]
    _, problems = pki.imported(import_dir(settings), [settings.config.homeserver_fqdn])
    fix = (
        "import a certificate set for the homeserver name that is valid and whose key matches (certbot's live/<name>/)"
    )
    return [InputProblem(label, "certificates.import_dir", problem, fix) for problem in problems]


def edge_certificate(settings: Settings) -> ServerCertificate:
    """The certificate HAProxy serves: imported (ACME), or the site CA's for the homeserver and server names."""
    config = settings.config
    if config.certificates.source == "import":
        certificate, _ = pki.imported(import_dir(settings), [config.homeserver_fqdn])
        if certificate is None:  # refused before any host was touched (import_problems)
            raise InputError(import_problems(settings))
        return certificate
    names = list(dict.fromkeys([config.homeserver_fqdn, config.domain]))
    return settings.certificate("edge", names)


def edge_ports(config: Config) -> list[PortUse]:
    """HTTP (redirect and ACME), HTTPS, federation where it is on; the stats page from the private networks."""
    public = (80, 443, 8448) if config.synapse.federation else (80, 443)
    return [
        *(public_tcp(f"haproxy-{port}", port, ("haproxy",)) for port in public),
        tcp("haproxy-stats", STATS_PORT, ("haproxy",), ("monitoring",)),
    ]


HAPROXY = Component(
    "haproxy",
    groups=("haproxy",),
    summary="HAProxy: TLS on 443/8448, routing to Synapse, admin allowlist, stats on 8404",
    packages=("haproxy",),
    files=(
        File(
            EDGE_CERTIFICATE,
            lambda c: edge_certificate(c.settings).haproxy_bundle,
            mode=0o600,
            secret=True,
            when=lambda _, host: "haproxy" in host.groups,
        ),
        File(
            TURNS_CERTIFICATE,
            lambda c: turn_certificate(c.settings, c.host).haproxy_bundle,
            mode=0o600,
            secret=True,
            when=lambda _, host: "coturn" in host.groups,
        ),
        # The stats password is in the file: readable by HAProxy's group, not by everyone.
        File(
            CONFIG,
            template("haproxy/haproxy.cfg.j2", config),
            group="haproxy",
            mode=0o640,
            check="haproxy -c -f {path}",
        ),
    ),
    services=(Service(UNIT, reload=True),),
    behaviour=reload_in_order(EDGE),
    requires=import_problems,
    inventory=(GroupRule("haproxy", fewest=2, reboot_rank=5),),
    secrets={"haproxy_stats_password": token},
    ports=edge_ports,
    scrape=lambda settings: [
        Job("haproxy", per_host(settings, "haproxy", STATS_PORT), basic_auth=(STATS_USER, HAPROXY_PASSWORD_FILE))
    ],
)
