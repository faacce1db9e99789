"""Deployment step 9: the LiveKit SFU mesh and its own Redis.

The mesh is coordinated through a dedicated Redis (not the playbook's Valkey) on the
first livekit host, bound to its private address, with a password. Every livekit host
runs livekit-server with its node IP set explicitly: in an air-gapped network there is
no STUN server to discover an external address. Each room lives on one node (a LiveKit
limitation): capacity grows by adding nodes.

livekit-server is not in Debian: it comes from the artifact cache, and without it the
server step is skipped (the Redis step still runs).
"""

from __future__ import annotations

from nornir.core.task import Result, Task

from core.catalog import GroupRule
from core.config import Config
from core.ports import PortUse, public_tcp, tcp
from core.secrets import access_key, token
from core.settings import HostInfo, Settings
from core.targets import Job, deployed, per_host
from tasks.component import Component
from tasks.declaration import Binary, Context, File, Service, Url, template
from tasks.redis import RedisInstance, redis_component, redis_pong
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
# livekit/protocol redis/redis.go: redis.use_tls, TLS verified against the system's roots).
DOCUMENTED_KEYS = frozenset(
    {
        "port",
        "bind_addresses",
        "prometheus_port",
        "redis.address",
        "redis.password",
        "redis.use_tls",
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


def redis_host(settings: Settings) -> HostInfo:
    """The livekit host that runs the mesh's Redis: the first of the group."""
    return settings.members("livekit")[0]


def livekit_off(settings: Settings, _host: HostInfo) -> str:
    return "" if settings.config.livekit.enabled else "livekit.enabled is false in config.yaml"


def redis_absent(settings: Settings, host: HostInfo) -> str:
    """Why a livekit host runs no mesh Redis: LiveKit is off, or another host (the group's first) runs it."""
    if not settings.config.livekit.enabled:
        return livekit_off(settings, host)
    if host.name != redis_host(settings).name:
        return f"the mesh's Redis runs on {redis_host(settings).name}"
    return ""


def redis_answers(task: Task, settings: Settings) -> Result:
    """Health check: the mesh's Redis answers PONG to an authenticated client."""
    if redis_absent(settings, settings.hosts[task.host.name]):
        return Result(host=task.host, result="not checked here")
    return redis_pong(task, MESH_REDIS, settings)


MESH_REDIS = RedisInstance(
    "livekit",
    "the LiveKit mesh's room and node state",
    "livekit_redis_password",
    REDIS_PORT,
    REDIS_EXPORTER_PORT,
    private=True,
)
LIVEKIT_REDIS = redis_component(
    MESH_REDIS,
    "the LiveKit mesh's own Redis (TLS and a password, on the private address)",
    ("livekit",),
    clients=("livekit",),  # every SFU and JWT service
    absent=redis_absent,
    check=redis_answers,
)


def livekit_config(settings: Settings, host: HostInfo) -> dict[str, object]:
    """Template data of one node's livekit.yaml."""
    lk = settings.config.livekit
    secrets = settings.secrets
    return {
        "ip": host.private_ip,
        "port": HTTP_PORT,
        "prometheus_port": PROMETHEUS_PORT,
        "redis": f"{redis_host(settings).private_ip}:{REDIS_PORT}",
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
    after=("livekit-redis",),
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
    """Element Call's JWT service: its public URL, its own address, the mesh's Redis and the API key."""
    settings, host, secrets = context.settings, context.host, context.settings.secrets
    return {
        "host_name": host.name,
        "url": f"wss://{settings.config.homeserver_fqdn}{SFU_PATH}",
        "bind": f"{host.private_ip}:{JWT_PORT}",
        "homeserver": settings.config.domain,
        "redis": f"redis://{redis_host(settings).private_ip}:{REDIS_PORT}",
        "redis_password": secrets["livekit_redis_password"],
        "api_key": secrets["livekit_api_key"],
        "api_secret": secrets["livekit_api_secret"],
    }


JWT_SERVICE = Binary("lk-jwt-service")
LIVEKIT_JWT = Component(
    "livekit-jwt",
    groups=("livekit",),
    summary="Element Call's JWT service beside every SFU, its state in the mesh's Redis",
    after=("livekit-redis",),
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
