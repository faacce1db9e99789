"""HAProxy: one config per host, composed of the sections its groups need.

The database tier adds the local `postgres_primary` listener on PgBouncer hosts; the
edge tier adds the public frontends on haproxy hosts. The file is checked with
`haproxy -c` on the host before it replaces the running one, then reloaded gracefully.
"""

from __future__ import annotations

from nornir.core.task import Result, Task

from core.settings import Settings
from tasks.files import FileSpec, put_files, render
from tasks.packages import packages
from tasks.systemd import service

CONFIG = "/etc/haproxy/haproxy.cfg"
POSTGRES_PRIMARY_PORT = 5433


def postgres_primary(settings: Settings, groups: tuple[str, ...]) -> dict | None:
    if "pgbouncer" not in groups:
        return None
    servers = [{"name": h.name, "ip": h.private_ip} for h in settings.members("patroni")]
    return {"port": POSTGRES_PRIMARY_PORT, "servers": servers}


def haproxy(task: Task, settings: Settings) -> Result:
    """Install HAProxy and converge its config; reload only when the config changed."""
    task.run(task=packages, names=["haproxy"], autostart=False, severity_level=10)
    host = settings.hosts[task.host.name]
    text = render(
        task, "haproxy/haproxy.cfg.j2", host_name=host.name, postgres_primary=postgres_primary(settings, host.groups)
    )
    spec = FileSpec(CONFIG, text, check="haproxy -c -q -f {path}")
    result = task.run(task=put_files, specs=[spec], severity_level=10)[0]
    task.run(task=service, unit="haproxy.service", restart=result.changed, reload=True, severity_level=10)
    return Result(host=task.host, changed=result.changed, diff=result.diff)
