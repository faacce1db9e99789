"""Redis Sentinel for a replicated Redis instance (Debian's redis-sentinel@<name> template unit).

Three sentinels watch the master; when a quorum of them finds it silent they promote a
replica, point the other servers at it and turn the old master into a replica when it
returns. They speak TLS only (to clients, to the servers and to each other) with the
instance's password, on the hosts `Replication.sentinels` names. Sentinel rewrites its
config file all the time (the sentinels and replicas it knows, epochs), so it runs from a
runtime copy (tasks/redis.py `Started`) and the managed file stays as deployed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from nornir.core.task import Result, Task

from core.config import Config
from core.errors import HostError
from core.pki import ServerCertificate, trusted_ca
from core.ports import PortUse, tcp
from core.settings import HostInfo, Settings
from tasks.component import Component
from tasks.declaration import Context, File, Port, Service, template
from tasks.redis import RedisInstance, Replication, Started, cli_script
from tasks.remote import Expectation, run

PACKAGES = ("redis-sentinel", "redis-tools")
DISCOVERY = 20  # seconds a sentinel may take to find the others
DEBIAN_UNIT = "redis-sentinel.service"  # Debian's stock sentinel (watching nothing) stays off


def sentinel_unit(instance: RedisInstance) -> str:
    return f"redis-sentinel@{instance.name}.service"


def tls_files(instance: RedisInstance) -> dict[str, str]:
    folder = f"/etc/redis/tls-sentinel-{instance.name}"
    return {"ca": f"{folder}/ca.crt", "cert": f"{folder}/server.crt", "key": f"{folder}/server.key"}


def certificate(instance: RedisInstance, settings: Settings, host: HostInfo) -> ServerCertificate:
    return settings.certificate(
        f"redis-sentinel-{instance.name}-{host.name}", [settings.service_name(host), host.private_ip], client=True
    )


def started(instance: RedisInstance) -> Started:
    managed = f"/etc/redis/sentinel-{instance.name}.conf"
    runtime = f"/run/sentinel-{instance.name}/sentinel.conf"
    command = f"/usr/bin/redis-sentinel {runtime} --supervised systemd --daemonize no"
    return Started("Sentinel", sentinel_unit(instance), managed, runtime, command)


def myid(instance: RedisInstance, host: HostInfo) -> str:
    """A sentinel's id, the same at every start: the others know it again after a restart."""
    return hashlib.sha1(f"sentinel {instance.name} {host.name}".encode()).hexdigest()


def sentinel_component(
    instance: RedisInstance,
    replication: Replication,
    summary: str,
    groups: tuple[str, ...],
    *,
    clients: tuple[str, ...],
    absent: Callable[[Settings, HostInfo], str],
    after: tuple[str, ...],
    listens: Callable[[Config], bool],
) -> Component:
    """The sentinels of `instance` on the hosts of `groups` that `absent` does not exclude; `listens`: whether the
    settings use them at all (their port on every host of `groups`)."""
    start = started(instance)
    tls = tls_files(instance)

    def config(context: Context) -> dict[str, object]:
        settings, host = context.settings, context.host
        return {
            "name": instance.name,
            "purpose": instance.purpose,
            "host_name": host.name,
            "start": start.script,
            "ip": host.private_ip,
            "port": replication.port,
            "tls": tls,
            "password": settings.secrets[instance.password],
            "myid": myid(instance, host),
            "first": replication.servers(settings)[0].private_ip,
            "server_port": instance.port,
            "quorum": replication.quorum,
            "down_after": replication.down_after_ms,
            "failover_timeout": replication.failover_timeout_ms,
        }

    def ports(config: Config) -> list[PortUse]:
        if not listens(config):
            return []
        return [tcp(f"{instance.name}-sentinel", replication.port, ("redis-sentinel",), clients)]

    def check(task: Task, settings: Settings) -> Result:
        """Health check: this sentinel knows the master and finds enough sentinels for a quorum and a failover."""
        if absent(settings, settings.hosts[task.host.name]):
            return Result(host=task.host, result="not checked here")
        host = settings.hosts[task.host.name]
        # A new sentinel finds the others through the master within a few of their 2 s hellos.
        ask = f"$cli --raw sentinel ckquorum {instance.name}"
        wait = (
            f"for _ in $(seq {DISCOVERY * 2}); do out=$({ask}); case $out in OK*) break ;; esac; sleep 0.5; done; "
            'echo "$out"'
        )
        out = run(
            task,
            cli_script(host.private_ip, replication.port, trusted_ca(settings.site), wait),
            stdin=settings.secrets[instance.password] + "\n",
            what=Expectation("OK: enough usable sentinels", f"journalctl -u {start.unit} on the host"),
            reads_only=True,
        )
        if not out.stdout.startswith("OK"):
            raise HostError(f"{task.host.name}: sentinel ckquorum {instance.name}: {out.stdout.strip()}")
        return Result(host=task.host, result=out.stdout.strip())

    key = File(
        tls["key"], lambda c: certificate(instance, c.settings, c.host).key_pem, "redis", "redis", 0o600, secret=True
    )
    return Component(
        f"{instance.name}-sentinel",
        groups=groups,
        summary=summary,
        packages=PACKAGES,
        files=(
            File(tls["ca"], lambda c: c.settings.ca.ca_pem(), "redis", "redis"),
            File(tls["cert"], lambda c: certificate(instance, c.settings, c.host).cert_pem, "redis", "redis"),
            key,
            *start.files(instance, replication, tls["ca"], lambda c: c.host.private_ip),
            File(start.managed, template("redis/sentinel.conf.j2", config), group="redis", mode=0o640),
        ),
        services=(
            Service(DEBIAN_UNIT, running=False),
            Service(start.unit, restart_on=(*tls.values(), start.managed, start.script, start.drop_in), rolling=True),
        ),
        ready=(Port(replication.port, private=True, always=False),),
        check=check,
        absent=absent,
        ports=ports,
        after=after,
    )
