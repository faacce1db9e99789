"""Private Redis instances (Debian's redis-server@<name> template unit), one per purpose.

The LiveKit mesh and Synapse's worker replication each get their own instance with
its own password and address, so neither can evict or read the other's keys. The
password is only in the 0640 config file and reaches clients on stdin, never on a
command line. An instance reached over the network (LiveKit's) speaks TLS only, with a
certificate of the site CA; a renewed one is loaded without a restart.

A replicated instance (a master and its replicas under Redis Sentinel, tasks/sentinel.py)
never has its role in the managed file: Redis and Sentinel rewrite their config at
runtime as roles change, and a deploy that wrote the inventory's roles back would undo a
failover. Each such process starts from a runtime copy of the managed file that a
script (`Started`) writes before every start with the master the cluster has now.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

from nornir.core.task import Result, Task

from core.config import Config
from core.pki import ServerCertificate, trusted_ca
from core.ports import PortUse, comm, tcp
from core.secrets import token
from core.settings import HostInfo, Settings
from core.targets import Job, Target, labels
from core.workers import LOOPBACK
from tasks.component import Component
from tasks.declaration import Context, File, Handler, HealthCheck, Port, Service, Stage, template
from tasks.remote import Expectation, run
from tasks.systemd import UNIT_DIR

EXPORTER_TEMPLATE = "redis-exporter@.service"
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class Replication:
    """A master and its replicas watched by Redis Sentinel: which hosts serve, which watch, how many must agree."""

    servers: Callable[[Settings], list[HostInfo]]  # the first is the master a new cluster starts with
    sentinels: Callable[[Settings], list[HostInfo]]
    quorum: int = 2
    port: int = SENTINEL_PORT
    down_after_ms: int = 3000  # a master silent this long is down for a sentinel
    failover_timeout_ms: int = 20000


@dataclass(frozen=True)
class Started:
    """A Redis process (a server or a sentinel) started from a runtime copy of its managed config: a script run
    before every start (with full privileges: the unit's sandbox forbids executing it) writes the copy with the
    master the sentinels, else the other servers, name now; a new cluster starts with the first server."""

    process: str  # "Redis" or "Sentinel": whose rewrites the copy takes
    unit: str
    managed: str
    runtime: str  # in the unit's runtime directory, which it may write
    command: str  # the unit's ExecStart with the runtime copy

    @property
    def script(self) -> str:
        return f"/usr/local/sbin/matrix-{self.unit.removesuffix('.service').replace('@', '-')}-start"

    @property
    def drop_in(self) -> str:
        return f"{UNIT_DIR}/{self.unit}.d/start.conf"

    def files(
        self, instance: RedisInstance, replication: Replication, ca: str, own: Callable[[Context], str]
    ) -> tuple[File, File]:
        """The start script and the unit's drop-in that runs it; `own`: this host's address in the cluster."""

        def data(context: Context) -> dict[str, object]:
            settings = context.settings
            servers = [h.private_ip for h in replication.servers(settings)]
            return {
                "unit": self.unit,
                "process": self.process,
                "host_name": context.host.name,
                "managed": self.managed,
                "runtime": self.runtime,
                "ca": ca,
                "name": instance.name,
                "sentinels": [h.private_ip for h in replication.sentinels(settings)],
                "sentinel_port": replication.port,
                "servers": servers,
                "port": instance.port,
                "own": own(context),
                "first": servers[0],
            }

        drop_in = (
            "[Service]\n# Its runtime config: the managed one with the cluster's current master (matrix-platform).\n"
            f"ExecStartPre=+{self.script}\nExecStart=\nExecStart={self.command}\n"
        )
        return File(self.script, template("redis/start.sh.j2", data), mode=0o755), File(self.drop_in, lambda _: drop_in)


@dataclass(frozen=True)
class RedisInstance:
    name: str  # the systemd instance: redis-server@<name>
    purpose: str  # the config file's first comment says what it serves
    password: str  # the name of its secret
    port: int
    exporter_port: int  # its Prometheus exporter, on the host's private address
    private: bool = False  # listens on the host's private address (reached over the network), else loopback
    maxmemory: str = "256mb"
    replication: Replication | None = None  # a master and replicas under Sentinel (private instances only)

    def address(self, host: HostInfo) -> str:
        return host.private_ip if self.private else LOOPBACK

    @property
    def unit(self) -> str:
        return f"redis-server@{self.name}.service"

    @property
    def config(self) -> str:
        return f"/etc/redis/redis-{self.name}.conf"

    @property
    def exporter_unit(self) -> str:
        return f"redis-exporter@{self.name}.service"

    @property
    def exporter_env(self) -> str:
        return f"/etc/default/redis-exporter-{self.name}"

    @property
    def tls(self) -> dict[str, str]:
        """Its TLS files (used when it is private: reached over the network)."""
        folder = f"/etc/redis/tls-{self.name}"
        return {"ca": f"{folder}/ca.crt", "cert": f"{folder}/server.crt", "key": f"{folder}/server.key"}

    def certificate(self, settings: Settings, host: HostInfo) -> ServerCertificate:
        # Also a client's: a replica shows it to its master, and the master's sentinels theirs to it.
        return settings.certificate(
            f"redis-{self.name}-{host.name}", [settings.service_name(host), host.private_ip], client=True
        )

    @property
    def started(self) -> Started:
        """How a replicated instance starts: from a runtime copy naming the current master."""
        runtime = f"/run/redis-{self.name}/redis.conf"
        command = f"/usr/bin/redis-server {runtime} --supervised systemd --daemonize no"
        return Started("Redis", self.unit, self.config, runtime, command)

    @property
    def limits(self) -> str:
        # Debian's template unit asks for 65535 open files; a container host may allow
        # fewer, and a handful of platform clients need far less.
        return f"{UNIT_DIR}/{self.unit}.d/limits.conf"


PACKAGES = ("redis-server", "redis-tools", "prometheus-redis-exporter")
DEBIAN_UNITS = ("redis-server.service", "prometheus-redis-exporter.service")  # kept off: each purpose has its own
EXPORTER_UNIT_FILE = f"{UNIT_DIR}/{EXPORTER_TEMPLATE}"


def redis_component(
    instance: RedisInstance,
    summary: str,
    groups: tuple[str, ...],
    *,
    clients: tuple[str, ...],
    absent: Callable[[Settings, HostInfo], str] | None = None,
    check: HealthCheck | None = None,
    listens: Callable[[Config], bool] = lambda _: True,
) -> Component:
    """One Redis instance and its exporter: the server restarts when its config or limits change, the exporter
    when its own files do; Debian's stock units stay off. `listens`: whether the settings use it at all (its
    ports on every host of `groups`); the exporter is scraped where the instance runs."""

    def ports(config: Config) -> list[PortUse]:
        if not listens(config):
            return []
        return [
            tcp(f"{instance.name}-redis", instance.port, ("redis-server",), clients),
            tcp(
                f"{instance.name}-redis-exporter",
                instance.exporter_port,
                (comm("prometheus-redis-exporter"),),
                ("monitoring",),
            ),
        ]

    def scrape(settings: Settings) -> list[Job]:
        hosts = [h for g in groups for h in settings.members(g) if not absent or not absent(settings, h)]
        return [
            Job(
                f"{instance.name}-redis", [Target(f"{h.private_ip}:{instance.exporter_port}", labels(h)) for h in hosts]
            )
        ]

    def config(context: Context) -> dict[str, object]:
        return {
            "instance": instance.name,
            "purpose": instance.purpose,
            "host_name": context.host.name,
            "ip": instance.address(context.host),
            "port": instance.port,
            "password": context.settings.secrets[instance.password],
            "maxmemory": instance.maxmemory,
            "tls": instance.tls if instance.private else None,
            "replicated": {"start": instance.started.script} if instance.replication else None,
        }

    def exporter(context: Context) -> dict[str, object]:
        scheme = "rediss" if instance.private else "redis"  # verified against the trust store (the site CA)
        return {
            "address": f"{scheme}://{instance.address(context.host)}:{instance.port}",
            "password": context.settings.secrets[instance.password],
            "listen": f"{context.host.private_ip}:{instance.exporter_port}",
        }

    tls = instance.tls
    tls_files = (
        (
            File(tls["ca"], lambda c: c.settings.ca.ca_pem(), "redis", "redis"),
            File(tls["cert"], lambda c: instance.certificate(c.settings, c.host).cert_pem, "redis", "redis"),
            File(
                tls["key"],
                lambda c: instance.certificate(c.settings, c.host).key_pem,
                "redis",
                "redis",
                0o600,
                secret=True,
            ),
        )
        if instance.private
        else ()
    )
    # A renewed certificate is loaded by setting its file again (Redis then reads the TLS files anew): clients
    # keep their connections. The password comes from the config file, not a command line.
    setting = f"awk '$1 == \"{{key}}\" {{{{print $2}}}}' {instance.config}"
    reload_tls = Handler(
        f"! systemctl is-active -q {instance.unit} || REDISCLI_AUTH=$({setting.format(key='requirepass')}) "
        f'redis-cli --no-auth-warning --tls --cacert {tls["ca"]} -h "$({setting.format(key="bind")})" '
        f"-p {instance.port} config set tls-cert-file {tls['cert']} tls-key-file {tls['key']}",
        after=(tls["cert"], tls["key"]),
        expect="Redis reads its renewed certificate",
        stage=Stage.AFTER_UNITS,  # after a restart the new config is the one asked
    )
    replication = instance.replication
    started = (
        instance.started.files(instance, replication, tls["ca"], lambda c: instance.address(c.host))
        if replication
        else ()
    )
    return Component(
        f"{instance.name}-redis",
        groups=groups,
        summary=summary,
        packages=PACKAGES,
        files=(
            *tls_files,
            File(instance.limits, lambda _: "[Service]\nLimitNOFILE=16384\n"),
            *started,
            File(EXPORTER_UNIT_FILE, template("redis/redis-exporter@.service.j2", lambda _: {})),
            File(instance.config, template("redis/instance.conf.j2", config), group="redis", mode=0o640),
            File(
                instance.exporter_env,
                template("redis/exporter.env.j2", exporter),
                group="prometheus",
                mode=0o640,
                secret=True,
            ),
        ),
        handlers=(reload_tls,) if instance.private else (),
        services=(
            *(Service(unit, running=False) for unit in DEBIAN_UNITS),
            Service(
                instance.unit, restart_on=(instance.limits, instance.config, *(f.path for f in started)), rolling=True
            ),
            Service(instance.exporter_unit, restart_on=(EXPORTER_UNIT_FILE, instance.exporter_env), wave=1),
        ),
        ready=(Port(instance.port, private=instance.private, always=False),),
        check=check,
        absent=absent,
        ports=ports,
        scrape=scrape,
        secrets={instance.password: token},
    )


def cli_script(address: str, port: int, ca: str | None, command: str = "ping") -> str:
    """redis-cli `command` (a shell word list; "$cli" in it runs redis-cli) with the password from stdin
    (REDISCLI_AUTH), never on the command line; over TLS when `ca` is given, the server verified against it."""
    tls = f" --tls --cacert {ca}" if ca else ""
    cli = f"redis-cli --no-auth-warning{tls} -h {shlex.quote(address)} -p {port}"
    script = command.replace("$cli", cli) if "$cli" in command else f"{cli} {command}"
    return f"IFS= read -r REDISCLI_AUTH; export REDISCLI_AUTH; {script}"


def redis_pong(task: Task, instance: RedisInstance, settings: Settings) -> Result:
    """Health check: the instance answers PONG to an authenticated client (over TLS when it is private)."""
    ca = trusted_ca(settings.site) if instance.private else None
    out = run(
        task,
        cli_script(instance.address(settings.hosts[task.host.name]), instance.port, ca),
        stdin=settings.secrets[instance.password] + "\n",
        what=Expectation("PONG", f"journalctl -u {instance.unit} on the host"),
        reads_only=True,
    )
    return Result(host=task.host, result=out.stdout.strip())
