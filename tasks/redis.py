"""Private Redis instances (Debian's redis-server@<name> template unit), one per purpose.

The LiveKit mesh and Synapse's worker replication each get their own instance with
its own password and address, so neither can evict or read the other's keys. The
password is only in the 0640 config file and reaches clients on stdin, never on a
command line.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from nornir.core.task import Result, Task

from tasks.facts import read_ahead
from tasks.files import FileSpec, put_files, render
from tasks.packages import packages
from tasks.remote import Expectation, Mode, known, mode, run
from tasks.systemd import UNIT_DIR, Wanted, services
from tasks.waits import wait_for_port

EXPORTER_TEMPLATE = "redis-exporter@.service"


@dataclass(frozen=True)
class RedisInstance:
    name: str  # the systemd instance: redis-server@<name>
    purpose: str  # the config file's first comment says what it serves
    address: str
    port: int
    exporter_port: int  # its Prometheus exporter, on the host's private address
    maxmemory: str = "256mb"

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
    def limits(self) -> str:
        # Debian's template unit asks for 65535 open files; a container host may allow
        # fewer, and a handful of platform clients need far less.
        return f"{UNIT_DIR}/{self.unit}.d/limits.conf"


PACKAGES = ["redis-server", "redis-tools", "prometheus-redis-exporter"]
DEBIAN_UNITS = ("redis-server.service", "prometheus-redis-exporter.service")  # kept off: each purpose has its own


def instance_units(instance: RedisInstance) -> list[str]:
    return [*DEBIAN_UNITS, instance.unit, instance.exporter_unit]


def instance_files(instance: RedisInstance) -> list[str]:
    """The files `redis_instance` converges, in its order."""
    return [instance.limits, f"{UNIT_DIR}/{EXPORTER_TEMPLATE}", instance.config, instance.exporter_env]


def redis_instance(task: Task, instance: RedisInstance, password: str, exporter_ip: str) -> Result:
    """Install Redis and its exporter, converge one instance and its exporter; restart only on change."""
    text = render(
        task,
        "redis/instance.conf.j2",
        instance=instance.name,
        purpose=instance.purpose,
        host_name=task.host.name,
        ip=instance.address,
        port=instance.port,
        password=password,
        maxmemory=instance.maxmemory,
    )
    exporter_env = render(
        task,
        "redis/exporter.env.j2",
        address=f"redis://{instance.address}:{instance.port}",
        password=password,
        listen=f"{exporter_ip}:{instance.exporter_port}",
    )
    paths = instance_files(instance)
    units = paths[:2]
    specs = [
        FileSpec(paths[0], "[Service]\nLimitNOFILE=16384\n"),
        FileSpec(paths[1], render(task, "redis/redis-exporter@.service.j2")),
        FileSpec(paths[2], text, group="redis", mode=0o640),
        FileSpec(paths[3], exporter_env, group="prometheus", mode=0o640, secret=True),
    ]
    if known(task, "file", paths) is None:  # Synapse's step reads them ahead with its own
        read_ahead(task, packages=PACKAGES, files=paths, units=instance_units(instance))
    task.run(task=packages, names=PACKAGES, autostart=False, severity_level=10)
    result = task.run(task=put_files, specs=specs, severity_level=10)[0]
    written = set(result.result or [])
    wanted = {unit: Wanted(running=False, enabled=False) for unit in DEBIAN_UNITS}
    wanted[instance.unit] = Wanted(restart=bool(written & {instance.limits, instance.config}))
    exporter = {instance.exporter_unit: Wanted(restart=bool(written - {instance.limits, instance.config}))}
    started = services(task, wanted, exporter, daemon_reload=bool(written & set(units)))
    if started.changed:
        task.run(task=wait_for_port, port=instance.port, address=instance.address, severity_level=10)
    return Result(host=task.host, changed=result.changed, diff=result.diff)


def ping_script(address: str, port: int) -> str:
    """PING with the password from stdin (REDISCLI_AUTH), never on the command line."""
    return (
        "IFS= read -r REDISCLI_AUTH; export REDISCLI_AUTH; "
        f"redis-cli --no-auth-warning -h {shlex.quote(address)} -p {port} ping"
    )


def redis_pong(task: Task, instance: RedisInstance, password: str) -> Result:
    """Health check: the instance answers PONG to an authenticated client."""
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, result="not checked in this mode")
    out = run(
        task,
        ping_script(instance.address, instance.port),
        stdin=password + "\n",
        what=Expectation("PONG", f"journalctl -u {instance.unit} on the host"),
    )
    return Result(host=task.host, result=out.stdout.strip())
