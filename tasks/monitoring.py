"""Deployment step 12: node-exporter everywhere, postgres-exporter on the database nodes,
and Prometheus, Alertmanager and the blackbox exporter on the monitoring host.

The scrape targets come from the components (`Component.scrape`: the inventory plus what
the deploy runs), so a new worker or host is scraped after the next deploy without editing
anything.
Every file is checked on the host before it is installed (promtool, amtool, the
blackbox exporter's own check). Prometheus and Alertmanager reload on a changed config;
the step's gate waits until Prometheus reports every expected target UP.

Redis exporters live with their Redis instances (tasks/redis.py).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Collection
from pathlib import Path

from nornir.core.task import Result, Task

from core import artifacts
from core.catalog import GroupRule
from core.config import Config
from core.dashboards import DASHBOARDS, DATASOURCE_UID
from core.dashboards import render as dashboard_json
from core.errors import HostError
from core.ports import PortUse, comm, tcp
from core.secrets import token
from core.settings import Settings
from core.targets import HAPROXY_PASSWORD_FILE, Job, Target, labels, per_host
from tasks.component import Component
from tasks.database import MONITOR_ROLE
from tasks.declaration import Binary, Command, Content, Context, File, Service, Stage, Url, template
from tasks.facts import HostFacts
from tasks.remote import Expectation, lost_hosts, run
from tasks.systemd import UNIT_DIR

TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"  # Debian's built-in default, stated explicitly
RULES_SOURCE = Path(__file__).resolve().parent.parent / "templates" / "monitoring" / "platform.rules.yml"
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"
RULES = "/etc/prometheus/rules/platform.rules.yml"
ALERTMANAGER_CONFIG = "/etc/prometheus/alertmanager.yml"
BLACKBOX_CONFIG = "/etc/prometheus/blackbox.yml"
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
BLACKBOX_PORT = 9115
GRAFANA_PORT = 3000
POSTGRES_EXPORTER_PORT = 9187
PROMETHEUS_UNIT = "prometheus.service"
ALERTMANAGER_UNIT = "prometheus-alertmanager.service"
BLACKBOX_UNIT = "prometheus-blackbox-exporter.service"
GRAFANA_UNIT = "grafana.service"
GRAFANA_USER = "grafana"
GRAFANA_INI = "/etc/grafana/grafana.ini"
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
GRAFANA_DASHBOARDS = "/var/lib/grafana/dashboards"


def defaults_file(args: str, extra: str = "") -> str:
    """A Debian /etc/default/prometheus-* file: the daemon's arguments (and environment)."""
    return f"# Managed by matrix-platform.\n{extra}ARGS={shlex.quote(args)}\n"


def node_exporter_defaults(context: Context) -> str:
    port = context.settings.config.monitoring.node_exporter_port
    return defaults_file(
        f"--web.listen-address={context.host.private_ip}:{port} --collector.textfile.directory={TEXTFILE_DIR}"
    )


def node_exporter_port(config: Config) -> list[PortUse]:
    processes = (comm("prometheus-node-exporter"), "node_exporter")
    setting = "config.yaml monitoring.node_exporter_port"
    return [tcp("node-exporter", config.monitoring.node_exporter_port, processes, ("monitoring",), setting)]


def every_node(settings: Settings) -> list[Job]:
    port = settings.config.monitoring.node_exporter_port
    return [Job("node", [Target(f"{h.private_ip}:{port}", labels(h)) for h in settings.hosts.values()])]


NODE_EXPORTER = Component(
    "node-exporter",
    groups=None,
    summary="node-exporter on every server's private address, with the textfile collector",
    packages=("prometheus-node-exporter",),
    files=(File("/etc/default/prometheus-node-exporter", node_exporter_defaults),),
    services=(Service("prometheus-node-exporter.service"),),
    ports=node_exporter_port,
    scrape=every_node,
)


POSTGRES_QUERIES = "/etc/prometheus-postgres-exporter/queries.yaml"
POSTGRES_QUERIES_SOURCE = Path(__file__).resolve().parent.parent / "templates" / "monitoring" / "postgres-queries.yaml"


def postgres_exporter_defaults(context: Context) -> str:
    """Logging in over the socket as the read-only pg_monitor role (no password to keep), to the Synapse database:
    the platform's queries read its tables' sizes and vacuum state (the server-wide metrics are the same from any)."""
    database = context.settings.config.database.name
    dsn = f"host=/var/run/postgresql user={MONITOR_ROLE} dbname={database} sslmode=disable"
    address = f"{context.host.private_ip}:{POSTGRES_EXPORTER_PORT}"
    args = f"--web.listen-address={address} --extend.query-path={POSTGRES_QUERIES}"
    return defaults_file(args, f"DATA_SOURCE_NAME={shlex.quote(dsn)}\n")


POSTGRES_EXPORTER = Component(
    "postgres-exporter",
    groups=("patroni",),
    summary="postgres-exporter beside each PostgreSQL, as the read-only pg_monitor role",
    after=("synapse-database",),
    packages=("prometheus-postgres-exporter",),
    files=(
        File(POSTGRES_QUERIES, lambda _: POSTGRES_QUERIES_SOURCE.read_text()),
        File("/etc/default/prometheus-postgres-exporter", postgres_exporter_defaults),
    ),
    services=(Service("prometheus-postgres-exporter.service"),),
    ports=(tcp("postgres-exporter", POSTGRES_EXPORTER_PORT, (comm("prometheus-postgres-exporter"),), ("monitoring",)),),
    scrape=lambda settings: [Job("postgres", per_host(settings, "patroni", POSTGRES_EXPORTER_PORT))],
)


def scrape_context(settings: Settings, rules: str = RULES) -> dict[str, object]:
    """Template data of prometheus.yml."""
    monitoring = settings.members("monitoring")[0]
    return {
        "site": settings.site,
        "interval": settings.config.monitoring.scrape_interval_seconds,
        "alertmanager": f"{monitoring.private_ip}:{ALERTMANAGER_PORT}",
        "blackbox": f"{monitoring.private_ip}:{BLACKBOX_PORT}",
        "rules": rules,
        "jobs": settings.catalog.scrape(settings),
    }


def prometheus_defaults(context: Context) -> str:
    monitoring = context.settings.config.monitoring
    return defaults_file(
        f"--web.listen-address={context.host.private_ip}:{PROMETHEUS_PORT} "
        f"--storage.tsdb.retention.time={monitoring.retention_days}d"
    )


def alertmanager_defaults(context: Context) -> str:
    address = f"{context.host.private_ip}:{ALERTMANAGER_PORT}"
    return defaults_file(
        f"--web.listen-address={address} --cluster.listen-address= --web.external-url=http://{address}/"
    )


def blackbox_defaults(context: Context) -> str:
    return defaults_file(
        f"--web.listen-address={context.host.private_ip}:{BLACKBOX_PORT} --config.file={BLACKBOX_CONFIG}"
    )


def alerting(context: Context) -> dict[str, object]:
    monitoring = context.settings.config.monitoring
    return {"interval": monitoring.scrape_interval_seconds, "webhook": monitoring.alert_webhook}


# Polls Prometheus until every expected (job, instance) from stdin is up. Prometheus has
# argv[2] seconds to answer at all; from its first answer the targets have argv[3] seconds
# (a few scrape intervals). Prints [job, instance, health, last error] of every active target.
TARGETS = r"""
import json, sys, time, urllib.request
base, window = sys.argv[1], float(sys.argv[3])
deadline, answered = time.monotonic() + float(sys.argv[2]), False
expected = {tuple(pair) for pair in json.load(sys.stdin)}
while True:
    try:
        data = json.load(urllib.request.urlopen(base + "/api/v1/targets?state=active", timeout=10))
        targets = [[t["labels"]["job"], t["labels"]["instance"], t["health"], t.get("lastError", "")]
                   for t in data["data"]["activeTargets"]]
        if not answered:
            deadline, answered = time.monotonic() + window, True
    except OSError as error:
        targets = [["prometheus", base, "down", str(error)]]
    if expected <= {(j, i) for j, i, health, _ in targets if health == "up"} or time.monotonic() > deadline:
        break
    time.sleep(1)
print(json.dumps(targets))
"""


def expected_targets(settings: Settings, without: Collection[str] = ()) -> set[tuple[str, str]]:
    """(job, instance) of every target the platform should have, less those of the hosts `without`."""
    return {
        (job.name, target.address)
        for job in settings.catalog.scrape(settings)
        for target in job.targets
        if target.labels["host"] not in without
    }


def targets_up(task: Task, settings: Settings) -> Result:
    """Gate: Prometheus is ready and reports every expected target UP (waits a few scrape intervals)."""
    base = f"http://{settings.hosts[task.host.name].private_ip}:{PROMETHEUS_PORT}"
    lost = sorted(lost_hosts(task))  # they cannot be up: the run already reports them
    expected = expected_targets(settings, lost)
    # A minute for a (re)started Prometheus to answer, then a few scrape intervals.
    answer_within, window = 60, max(30, 4 * settings.config.monitoring.scrape_interval_seconds)
    out = run(
        task,
        f"python3 -c {shlex.quote(TARGETS)} {base} {answer_within} {window}",
        stdin=json.dumps(sorted(expected)),
        timeout=answer_within + window + 30,
        what=Expectation("Prometheus's targets as JSON"),
        reads_only=True,
    )
    health = json.loads(out.stdout)
    if [job for job, *_ in health] == ["prometheus"] and health[0][1] == base:
        raise HostError(
            f"{task.host.name}: Prometheus at {base} did not answer within {answer_within} s ({health[0][3]}): "
            "read 'journalctl -u prometheus -n 50' on the host"
        )
    up = {(job, instance) for job, instance, state, _ in health if state == "up"}
    down = sorted(expected - up)
    if down:
        errors = {(job, instance): error for job, instance, _, error in health}
        raise HostError(
            f"{task.host.name}: Prometheus reports {len(down)} of {len(expected)} targets not up: "
            + "; ".join(f"{j} {i} ({errors.get((j, i)) or 'not scraped yet'})" for j, i in down)
            + ". Check the exporter on that host (systemctl status, journalctl) and the firewall"
        )
    unchecked = f" (not checked: the targets of {', '.join(lost)}, which dropped out)" if lost else ""
    return Result(host=task.host, result=f"{len(expected)} targets up{unchecked}")


def grafana_home(settings: Settings) -> str:
    return f"/opt/grafana-{artifacts.manifest()['grafana'].version}"


def grafana_ini(context: Context) -> dict[str, object]:
    return {
        "ip": context.host.private_ip,
        "port": GRAFANA_PORT,
        "provisioning": GRAFANA_PROVISIONING,
        "admin_password": context.settings.secrets["grafana_admin_password"],
    }


def datasource(context: Context) -> dict[str, object]:
    monitoring = context.settings.members("monitoring")[0]
    return {"uid": DATASOURCE_UID, "url": f"http://{monitoring.private_ip}:{PROMETHEUS_PORT}"}


def unpacked(context: Context, facts: HostFacts | None, _written: frozenset[str]) -> list[Command]:
    """A version is unpacked once, into a directory of its own (the unit switches to it)."""
    home = grafana_home(context.settings)
    if facts is None or facts.commands["unpacked"].strip() == "yes":
        return []
    staged = GRAFANA_ARCHIVE.path
    return [
        Command(
            f"rm -rf {home}.new && mkdir -p {home}.new && tar -xzf {staged} -C {home}.new --strip-components=1 && "
            f"mv {home}.new {home}",
            f"Grafana unpacked in {home}",
            f"Grafana unpacked in {home}",
            f"check {staged} on the host (tar -tzf)",
            stage=Stage.BEFORE_UNITS,
        )
    ]


GRAFANA_ARCHIVE = Binary("grafana", mode=0o644, to="/opt/grafana-archives/{name}")


def grafana_file(path: str, content: Content, secret: bool = False) -> File:
    """A file Grafana's account reads and nobody else."""
    return File(path, content, group=GRAFANA_USER, mode=0o640, secret=secret)


# Grafana is not in the reachable package repositories: its standalone archive is pushed,
# unpacked once per version, and started on the private address with the Prometheus
# datasource and the platform's dashboards as files. Nothing is fetched at run time.
GRAFANA = Component(
    "grafana",
    groups=("monitoring",),
    summary="Grafana from the artifact cache, its datasource and the platform's dashboards provisioned from files",
    after=("monitoring",),
    users=(GRAFANA_USER,),
    binaries=(GRAFANA_ARCHIVE,),
    files=(
        grafana_file(GRAFANA_INI, template("monitoring/grafana.ini.j2", grafana_ini), secret=True),
        grafana_file(
            f"{GRAFANA_PROVISIONING}/datasources/platform.yml",
            template("monitoring/grafana-datasource.yml.j2", datasource),
        ),
        grafana_file(
            f"{GRAFANA_PROVISIONING}/dashboards/platform.yml",
            template("monitoring/grafana-dashboards.yml.j2", lambda _: {"path": GRAFANA_DASHBOARDS}),
        ),
        *(grafana_file(f"{GRAFANA_DASHBOARDS}/{d.uid}.json", lambda _, d=d: dashboard_json(d)) for d in DASHBOARDS),
        File(
            f"{UNIT_DIR}/{GRAFANA_UNIT}",
            template(
                "monitoring/grafana.service.j2",
                lambda c: {"home": grafana_home(c.settings), "config": GRAFANA_INI, "user": GRAFANA_USER},
            ),
        ),
    ),
    services=(Service(GRAFANA_UNIT),),
    reads={"unpacked": lambda settings, _host: f"test -x {grafana_home(settings)}/bin/grafana && echo yes"},
    behaviour=unpacked,
    ready=(Url(lambda c: f"http://{c.host.private_ip}:{GRAFANA_PORT}/api/health", timeout=120),),
    ports=(tcp("grafana", GRAFANA_PORT, ("grafana", "grafana-server"), ()),),
    secrets={"grafana_admin_password": token},
)


PROMETHEUS_DEFAULTS = "/etc/default/prometheus"
ALERTMANAGER_DEFAULTS = "/etc/default/prometheus-alertmanager"
BLACKBOX_DEFAULTS = "/etc/default/prometheus-blackbox-exporter"
# Arguments change only with a restart; configs and rules reload (the blackbox exporter restarts).
PROMETHEUS_RELOADS = (RULES, HAPROXY_PASSWORD_FILE, PROMETHEUS_CONFIG)
MONITORING = Component(
    "monitoring",
    groups=("monitoring",),
    summary="Prometheus (targets from the inventory, alert rules), Alertmanager, blackbox probes; every target UP",
    # In playbook mode Synapse's metrics come from the playbook's step; the registry adds every
    # component that declares a scrape job (only then can every target be UP).
    after=("synapse-playbook",),
    packages=("prometheus", "prometheus-alertmanager", "prometheus-blackbox-exporter"),
    files=(
        File(RULES, lambda _: RULES_SOURCE.read_text(), check="promtool check rules {path}"),
        File(
            HAPROXY_PASSWORD_FILE,
            lambda c: c.settings.secrets["haproxy_stats_password"],
            group="prometheus",
            mode=0o640,
            secret=True,
        ),
        File(
            PROMETHEUS_CONFIG,
            template("monitoring/prometheus.yml.j2", lambda c: scrape_context(c.settings)),
            group="prometheus",
            mode=0o640,
            check="promtool check config {path}",
        ),
        File(PROMETHEUS_DEFAULTS, prometheus_defaults),
        File(
            ALERTMANAGER_CONFIG,
            template("monitoring/alertmanager.yml.j2", alerting),
            group="prometheus",
            mode=0o640,
            check="amtool check-config {path}",
        ),
        File(ALERTMANAGER_DEFAULTS, alertmanager_defaults),
        File(
            BLACKBOX_CONFIG,
            template("monitoring/blackbox.yml.j2", lambda _: {}),
            check="prometheus-blackbox-exporter --config.check --config.file={path}",
        ),
        File(BLACKBOX_DEFAULTS, blackbox_defaults),
    ),
    services=(
        Service(PROMETHEUS_UNIT, restart_on=(*PROMETHEUS_RELOADS, PROMETHEUS_DEFAULTS), reload_on=PROMETHEUS_RELOADS),
        Service(
            ALERTMANAGER_UNIT, restart_on=(ALERTMANAGER_CONFIG, ALERTMANAGER_DEFAULTS), reload_on=(ALERTMANAGER_CONFIG,)
        ),
        Service(BLACKBOX_UNIT, restart_on=(BLACKBOX_CONFIG, BLACKBOX_DEFAULTS)),
    ),
    check=targets_up,
    inventory=(GroupRule("monitoring", fewest=1, most=1, reboot_rank=0),),
    ports=(
        tcp("prometheus", PROMETHEUS_PORT, ("prometheus",), ()),
        tcp("alertmanager", ALERTMANAGER_PORT, (comm("prometheus-alertmanager"), "alertmanager"), ()),
        tcp("blackbox-exporter", BLACKBOX_PORT, (comm("prometheus-blackbox-exporter"),), ()),
    ),
    scrape=lambda settings: [
        Job(name, per_host(settings, "monitoring", port))
        for name, port in (
            ("prometheus", PROMETHEUS_PORT),
            ("alertmanager", ALERTMANAGER_PORT),
            ("blackbox", BLACKBOX_PORT),
        )
    ],
)
