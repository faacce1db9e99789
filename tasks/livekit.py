"""Deployment step 9: the LiveKit SFU mesh and its own Redis under Redis Sentinel.

The mesh is coordinated through a dedicated Redis (not the playbook's Valkey): a master
and a replica on the first two livekit hosts, bound to their private addresses, TLS and a
password. Three sentinels watch them and promote the replica when the master is lost;
LiveKit finds the master through them. The sentinels run on the first three livekit hosts
or, with two, on both and the monitoring host: a third failure domain that is neither
Redis server, so that losing either server's host leaves two sentinels to agree.
Every livekit host
runs livekit-server with its node IP set explicitly: in an air-gapped network there is
no STUN server to discover an external address. Each room lives on one node (a LiveKit
limitation): capacity grows by adding nodes.

livekit-server is not in Debian: it comes from the artifact cache, and without it the
server step is skipped (the Redis step still runs).
"""

from __future__ import annotations

from collections.abc import Callable

from nornir.core.task import Result, Task

from core.catalog import GroupRule
from core.config import Config
from core.ports import PortUse, public_tcp, tcp
from core.secrets import access_key, token
from core.settings import HostInfo, Settings
from core.targets import Job, deployed, per_host
from tasks.component import Component
from tasks.declaration import Binary, Context, File, Service, Url, template
from tasks.redis import SENTINEL_PORT, RedisInstance, Replication, redis_component, redis_pong
from tasks.sentinel import sentinel_component
from tasks.systemd import UNIT_DIR

REDIS_PORT = 6379
REDIS_EXPORTER_PORT = 9121
CONFIG = "/etc/livekit/livekit.yaml"
UNIT = "livekit-server.service"
HTTP_PORT = 7880
RTC_TCP_PORT = 7881
PROMETHEUS_PORT = 6789
JWT_PORT = 8080
JWT_ENV = "/etc/livekit/jwt.env"
JWT_UNIT = "livekit-jwt.service"
# Public paths on the homeserver name (HAProxy strips the prefix): the SFU's WebSocket
# signalling and the JWT service Element Call asks for a LiveKit token.
SFU_PATH = "/livekit/sfu"
JWT_PATH = "/livekit/jwt"
# The keys the rendered livekit.yaml may use: LiveKit's config-sample.yaml and its
# config structs (livekit/livekit 1.9 pkg/config/config.go: bind_addresses, rtc.node_ip;
# livekit/protocol redis/redis.go: redis.use_tls, TLS verified against the system's roots, for
# the sentinels too; sentinel_master_name/sentinel_addresses/sentinel_password).
DOCUMENTED_KEYS = frozenset(
    {
        "port",
        "bind_addresses",
        "prometheus_port",
        "redis.password",
        "redis.use_tls",
        "redis.sentinel_master_name",
        "redis.sentinel_addresses",
        "redis.sentinel_password",
        "rtc.tcp_port",
        "rtc.port_range_start",
        "rtc.port_range_end",
        "rtc.use_external_ip",
        "rtc.node_ip",
        "room.auto_create",
        "webhook.api_key",
        "webhook.urls",
        "keys",
        "logging.level",
        "logging.json",
    }
)


def redis_servers(settings: Settings) -> list[HostInfo]:
    """The livekit hosts that run the mesh's Redis: the first two (the first starts as the master)."""
    return settings.members("livekit")[:2]


def sentinel_hosts(settings: Settings) -> list[HostInfo]:
    """Three sentinels: on the first three livekit hosts, or on two and the monitoring host."""
    livekit = settings.members("livekit")
    return livekit[:3] if len(livekit) >= 3 else [*livekit, *settings.members("monitoring")][:3]


def livekit_off(settings: Settings, _host: HostInfo) -> str:
    return "" if settings.config.livekit.enabled else "livekit.enabled is false in config.yaml"


def only_on(hosts: Callable[[Settings], list[HostInfo]], runs: str) -> Callable[[Settings, HostInfo], str]:
    """Why a host of the groups has none of it: LiveKit is off, or `hosts` (chosen from the inventory) leave it
    out. `runs`: what runs there, as the message says it ("the mesh's Redis runs")."""

    def absent(settings: Settings, host: HostInfo) -> str:
        if not settings.config.livekit.enabled:
            return livekit_off(settings, host)
        chosen = [h.name for h in hosts(settings)]
        return "" if host.name in chosen else f"{runs} on {', '.join(chosen)}"

    return absent


redis_absent = only_on(redis_servers, "the mesh's Redis runs")
sentinel_absent = only_on(sentinel_hosts, "the mesh's sentinels run")


def redis_answers(task: Task, settings: Settings) -> Result:
    """Health check: the mesh's Redis answers PONG to an authenticated client."""
    if redis_absent(settings, settings.hosts[task.host.name]):
        return Result(host=task.host, result="not checked here")
    return redis_pong(task, MESH_REDIS, settings)


MESH_REPLICATION = Replication(redis_servers, sentinel_hosts)
MESH_REDIS = RedisInstance(
    "livekit",
    "the LiveKit mesh's room and node state",
    "livekit_redis_password",
    REDIS_PORT,
    REDIS_EXPORTER_PORT,
    private=True,
    replication=MESH_REPLICATION,
)
LIVEKIT_REDIS = redis_component(
    MESH_REDIS,
    "the LiveKit mesh's own Redis: a master and a replica (TLS and a password, on the private address)",
    ("livekit",),
    clients=("livekit", "monitoring"),  # every SFU, the other server and the sentinels
    absent=redis_absent,
    check=redis_answers,
)
LIVEKIT_SENTINEL = sentinel_component(
    MESH_REDIS,
    MESH_REPLICATION,
    "three Redis sentinels promote the mesh Redis's replica when its master is lost",
    ("livekit", "monitoring"),
    clients=("livekit", "monitoring"),  # LiveKit asks them for the master; they talk to each other
    absent=sentinel_absent,
    after=("livekit-redis",),
    listens=lambda config: config.livekit.enabled,
)


def livekit_config(settings: Settings, host: HostInfo) -> dict[str, object]:
    """Template data of one node's livekit.yaml."""
    lk = settings.config.livekit
    secrets = settings.secrets
    return {
        "ip": host.private_ip,
        "port": HTTP_PORT,
        "prometheus_port": PROMETHEUS_PORT,
        "sentinels": [f"{h.private_ip}:{SENTINEL_PORT}" for h in sentinel_hosts(settings)],
        "master_name": MESH_REDIS.name,
        "redis_password": secrets["livekit_redis_password"],
        "rtc_min_port": lk.rtc_min_port,
        "rtc_max_port": lk.rtc_max_port,
        "api_key": secrets["livekit_api_key"],
        "api_secret": secrets["livekit_api_secret"],
        "webhook": f"http://{host.private_ip}:{JWT_PORT}/sfu_webhook",
    }


SERVER = Binary("livekit-server")


def sfu_ports(config: Config) -> list[PortUse]:
    """Signalling (through HAProxy), ICE over TCP and the media range (public), its metrics."""
    server = ("livekit-server",)
    media = "config.yaml livekit.rtc_min_port/rtc_max_port"
    return [
        tcp("livekit-http", HTTP_PORT, server, ("haproxy",)),
        public_tcp("livekit-rtc-tcp", RTC_TCP_PORT, server),
        # No 7882/udp: the single-port UDP mux would disable the media range below.
        tcp("livekit-metrics", PROMETHEUS_PORT, server, ("monitoring",)),
        PortUse("livekit-media", config.livekit.rtc_min_port, config.livekit.rtc_max_port, "udp", server, media, True),
    ]


LIVEKIT = Component(
    "livekit",
    groups=("livekit",),
    summary="livekit-server on every livekit host, meshed through its Redis",
    after=("livekit-sentinel",),
    users=("livekit",),
    binaries=(SERVER,),
    files=(
        File(
            f"{UNIT_DIR}/{UNIT}",
            template("livekit/livekit-server.service.j2", lambda _: {"binary": SERVER.path, "config": CONFIG}),
        ),
        File(
            CONFIG,
            template(
                "livekit/livekit.yaml.j2", lambda c: {"host_name": c.host.name, **livekit_config(c.settings, c.host)}
            ),
            group="livekit",
            mode=0o640,
        ),
    ),
    services=(Service(UNIT),),
    ready=(Url(lambda c: f"http://{c.host.private_ip}:{HTTP_PORT}/"),),
    absent=livekit_off,
    inventory=(GroupRule("livekit", fewest=2, switch="livekit.enabled", reboot_rank=3),),
    secrets={"livekit_api_key": lambda: "API" + access_key()[:12], "livekit_api_secret": token},
    ports=sfu_ports,
    scrape=lambda settings: (
        [Job("livekit", per_host(settings, "livekit", PROMETHEUS_PORT))] if deployed("livekit-server") else []
    ),
)


def jwt_environment(context: Context) -> dict[str, object]:
    """Element Call's JWT service: its public URL, its own address and the API key. No Redis: the service takes
    one Redis URL (LIVEKIT_REDIS_URL), which cannot follow Sentinel to a new master; a URL pinned to one server
    would fail at the first failover, so each instance keeps its delayed-leave jobs in memory."""
    settings, host, secrets = context.settings, context.host, context.settings.secrets
    return {
        "host_name": host.name,
        "url": f"wss://{settings.config.homeserver_fqdn}{SFU_PATH}",
        "bind": f"{host.private_ip}:{JWT_PORT}",
        "homeserver": settings.config.domain,
        "api_key": secrets["livekit_api_key"],
        "api_secret": secrets["livekit_api_secret"],
    }


JWT_SERVICE = Binary("lk-jwt-service")
LIVEKIT_JWT = Component(
    "livekit-jwt",
    groups=("livekit",),
    summary="Element Call's JWT service beside every SFU",
    after=("livekit",),
    users=("livekit",),
    binaries=(JWT_SERVICE,),
    files=(
        File(
            f"{UNIT_DIR}/{JWT_UNIT}",
            template("livekit/livekit-jwt.service.j2", lambda _: {"binary": JWT_SERVICE.path, "env_file": JWT_ENV}),
        ),
        File(JWT_ENV, template("livekit/jwt.env.j2", jwt_environment), group="livekit", mode=0o640),
    ),
    services=(Service(JWT_UNIT),),
    ready=(Url(lambda c: f"http://{c.host.private_ip}:{JWT_PORT}/healthz"),),
    absent=livekit_off,
    ports=(tcp("livekit-jwt", JWT_PORT, ("lk-jwt-service",), ("haproxy",)),),
)
