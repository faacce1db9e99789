"""The storage report (`maintenance.py storage`): how full each volume is, how fast it fills, and what fills it.

Disk growth is what ends most long-running Synapse installations: media (200-500 GB a day
per 10k users, core/sizing.py) and the database grow until a volume is full. The report
reads, and changes nothing: every server's mounted volumes (df), the growth rate of each
over the metrics Prometheus keeps (its fit over the retention window, so a day's rhythm
does not read as a trend), the Synapse database's largest tables, its transaction-ID age
and dead rows, and the media store by kind. Each volume gets what to do at its threshold;
the command exits 1 when one needs action now, so it can run from a timer as well.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass

from nornir.core.task import AggregatedResult, Result, Task

from core.settings import Settings
from tasks.backup_files import layout
from tasks.monitoring import PROMETHEUS_PORT
from tasks.remote import Expectation, run

# What df shows that holds data: pseudo and memory filesystems left out.
DF = "df -B1 --output=source,fstype,size,used,avail,target -x tmpfs -x devtmpfs -x squashfs -x ramfs -x nsfs"
# The filesystems node-exporter reports that are not data volumes (as the alert rules exclude them).
EXCLUDED = "tmpfs|overlay|squashfs|ramfs"
DAY = 86400
WARN_PERCENT, CRITICAL_PERCENT = 80, 90
PLAN_DAYS, ACT_DAYS = 30, 7


@dataclass(frozen=True)
class Volume:
    host: str
    mountpoint: str
    source: str
    fstype: str
    size: int
    used: int
    avail: int

    @property
    def used_percent(self) -> float:
        """As df counts it: of the space this system may use (blocks reserved for root left out)."""
        usable = self.used + self.avail
        return 100 * self.used / usable if usable else 0.0


@dataclass(frozen=True)
class Growth:
    """How fast a volume's free space shrinks (bytes a day; negative: it grows), over `hours` of metrics."""

    host: str
    mountpoint: str
    per_day: float
    hours: float


def parse_df(host: str, out: str) -> list[Volume]:
    """The volumes of `DF`'s output; a filesystem mounted at several places (bind mounts) is listed once."""
    volumes, seen = [], set()
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 6 or not fields[2].isdigit():
            continue
        source, fstype, size, used, avail, target = fields[0], fields[1], *map(int, fields[2:5]), " ".join(fields[5:])
        if (source, size) in seen or size == 0:
            continue
        seen.add((source, size))
        volumes.append(Volume(host, target, source, fstype, size, used, avail))
    return volumes


def growth_queries(settings: Settings) -> dict[str, str]:
    """PromQL: each volume's shrinking free space a day, and how many hours of samples that fit spans."""
    window = f"{settings.config.monitoring.retention_days}d"
    selector = f'node_filesystem_avail_bytes{{fstype!~"{EXCLUDED}"}}'
    interval = settings.config.monitoring.scrape_interval_seconds
    return {
        "per_day": f"-deriv({selector}[{window}]) * {DAY}",
        "hours": f"count_over_time({selector}[{window}]) * {interval} / 3600",
    }


# On the monitoring host: each query of argv[2:] (name=PromQL) against Prometheus at argv[1]; prints
# {name: [[labels, value], …]} or {"error": why}.
PROMETHEUS_QUERIES = r"""
import json, sys, urllib.parse, urllib.request
out = {}
try:
    for item in sys.argv[2:]:
        name, query = item.split("=", 1)
        url = sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
        answer = json.load(urllib.request.urlopen(url, timeout=30))
        out[name] = [[r["metric"], float(r["value"][1])] for r in answer["data"]["result"]]
except OSError as error:
    out = {"error": str(error)}
print(json.dumps(out))
"""


def parse_growth(answers: dict) -> list[Growth]:
    """Growth per (host, mountpoint) from PROMETHEUS_QUERIES' answer to `growth_queries`."""

    def key(labels: dict) -> tuple[str, str]:
        return labels.get("host", ""), labels.get("mountpoint", "")

    hours = {key(labels): value for labels, value in answers.get("hours", [])}
    return [Growth(*key(labels), value, hours.get(key(labels), 0)) for labels, value in answers.get("per_day", [])]


def advice(volume: Volume, growth: Growth | None) -> tuple[float | None, str]:
    """Days until the volume is full at its rate (None: not filling, or not known), and what to do."""
    days = volume.avail / growth.per_day if growth and growth.per_day > 0 else None
    if volume.used_percent >= CRITICAL_PERCENT or (days is not None and days < ACT_DAYS):
        return days, "act now: grow the volume, or shorten media/message retention and purge"
    if volume.used_percent >= WARN_PERCENT or (days is not None and days < PLAN_DAYS):
        return days, "plan: grow the volume within weeks"
    return days, "ok"


def volumes_and_growth(task: Task, settings: Settings) -> Result:
    """Fact: this server's volumes; on the monitoring host also every volume's growth from Prometheus."""
    out = run(task, DF, what=Expectation("df's table of mounted volumes"), reads_only=True).stdout
    found: dict[str, object] = {"volumes": [asdict(v) for v in parse_df(task.host.name, out)]}
    if "monitoring" in settings.hosts[task.host.name].groups:
        base = f"http://{settings.hosts[task.host.name].private_ip}:{PROMETHEUS_PORT}"
        queries = " ".join(shlex.quote(f"{k}={q}") for k, q in growth_queries(settings).items())
        what = Expectation("Prometheus's answers as JSON", "check Prometheus: systemctl status prometheus")
        out = run(task, f"python3 -c {shlex.quote(PROMETHEUS_QUERIES)} {base} {queries}", what=what, reads_only=True)
        answers = json.loads(out.stdout)
        found["growth_error"] = answers.get("error", "")
        found["growth"] = [asdict(g) for g in parse_growth(answers)]
    return Result(host=task.host, result=found)


def gathered(result: AggregatedResult) -> tuple[list[Volume], dict[tuple[str, str], Growth], str]:
    """Every host's volumes, the growth the monitoring host read, and why growth is unknown ("" if it is not)."""
    volumes, growth, error = [], {}, "the monitoring host did not answer"
    for host in result.values():
        found = host[0].result or {}
        volumes += [Volume(**v) for v in found.get("volumes", [])]
        if "growth" in found:
            growth = {(g["host"], g["mountpoint"]): Growth(**g) for g in found["growth"]}
            error = found["growth_error"]
    return volumes, growth, error


def size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def volumes_table(result: AggregatedResult, _settings: Settings) -> str:
    volumes, growth, error = gathered(result)
    lines = [f"  {'server':12} {'volume':24} {'size':>10} {'used':>5} {'free':>10} {'a day':>11} {'full in':>9}  do"]
    for volume in sorted(volumes, key=lambda v: (v.host, v.mountpoint)):
        rate = growth.get((volume.host, volume.mountpoint))
        days, action = advice(volume, rate)
        per_day = "no metrics" if rate is None else ("+" if rate.per_day >= 0 else "-") + size(abs(rate.per_day))
        until = "-" if days is None else f"{days:.0f} days"
        lines.append(
            f"  {volume.host:12} {volume.mountpoint[:24]:24} {size(volume.size):>10} {volume.used_percent:4.0f}%"
            f" {size(volume.avail):>10} {per_day:>11} {until:>9}  {action}"
        )
    spans = sorted({round(g.hours) for g in growth.values()})
    lines.append(
        f"  growth: {error}"
        if error
        else f"  growth: Prometheus's fit over {spans[0]}–{spans[-1]} h of metrics (monitoring.retention_days)"
        if spans
        else "  growth: Prometheus holds no filesystem metrics for these volumes (node-exporter leaves some "
        "filesystem types out); days until full are unknown"
    )
    return "\n".join(lines)


def needing_action(result: AggregatedResult, _settings: Settings) -> list[str]:
    """Gate: the volumes that need action now (full at their rate within a week, or 90 % used)."""
    volumes, growth, _ = gathered(result)
    problems = []
    for volume in volumes:
        days, action = advice(volume, growth.get((volume.host, volume.mountpoint)))
        if action.startswith("act now"):
            when = f", full in {days:.1f} days" if days is not None else ""
            problems.append(f"{volume.host}:{volume.mountpoint} {volume.used_percent:.0f}% used{when}: {action}")
    return problems


# On a Patroni member, as postgres: whether it is the primary and, there, the database's size, the oldest
# transaction ID's age and its largest tables (one JSON object).
DATABASE_SQL = """SELECT json_build_object(
  'primary', NOT pg_is_in_recovery(),
  'bytes', pg_database_size(current_database()),
  'xid_age', (SELECT max(age(datfrozenxid)) FROM pg_database),
  'tables', (SELECT coalesce(json_agg(t), '[]') FROM (
    SELECT relname AS name, pg_total_relation_size(relid) AS total, pg_relation_size(relid) AS heap,
           n_live_tup AS live, n_dead_tup AS dead
    FROM pg_stat_user_tables ORDER BY pg_total_relation_size(relid) DESC LIMIT {limit}) t));
"""
TABLES = 10
# PostgreSQL stops accepting writes at 2^31 - 3 million; autovacuum's emergency freeze starts at 200 million.
XID_WARN = 1_000_000_000


def database_usage(task: Task, settings: Settings) -> Result:
    """Fact, on the primary: the Synapse database's size, its largest tables and the transaction-ID age."""
    psql = f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d {shlex.quote(settings.config.database.name)}"
    what = Expectation("one JSON object from psql", "check PostgreSQL: patronictl list")
    out = run(task, psql, stdin=DATABASE_SQL.format(limit=TABLES), what=what, reads_only=True)
    found = json.loads(out.stdout)
    return Result(host=task.host, result=found if found["primary"] else None)


def database_table(result: AggregatedResult, _settings: Settings) -> str:
    found = next((host[0].result for host in result.values() if host[0].result), None)
    if found is None:
        return "  no member answered as the primary"
    xid = found["xid_age"]
    lines = [
        f"  database {size(found['bytes'])}; oldest transaction ID age {xid:,}"
        + (" (high: check that autovacuum keeps up, VACUUM FREEZE the oldest tables)" if xid > XID_WARN else ""),
    ]
    width = max((len(table["name"]) for table in found["tables"]), default=5)
    lines.append(f"  {'table':{width}} {'total':>10} {'heap':>10} {'live rows':>12} {'dead':>6}")
    for table in found["tables"]:
        dead = table["dead"] / max(table["live"] + table["dead"], 1)
        lines.append(
            f"  {table['name']:{width}} {size(table['total']):>10} {size(table['heap']):>10} {table['live']:>12,}"
            f" {dead:6.0%}"
        )
    lines.append(
        "  events and event_json shrink only with message retention (synapse.retention); state_groups_state "
        "leads in most long-running Synapse databases"
    )
    return "\n".join(lines)


# Synapse's media store, by kind (its own folder names): local uploads and their thumbnails, copies of
# other servers' media, URL previews.
STORE_KINDS = ("local_content", "local_thumbnails", "remote_content", "remote_thumbnail", "url_cache",
               "url_cache_thumbnails")  # fmt: skip
REMOTE_KINDS = STORE_KINDS[2:]  # what Synapse fetches again when asked: copies and previews


def media_command(store: str) -> str:
    """Prints "<kind> <bytes on disk> <files>" for each kind of media under `store` (0 0 when absent)."""
    return "; ".join(
        f'd={shlex.quote(f"{store}/{kind}")}; if [ -d "$d" ]; then echo "{kind} $(du -sB1 "$d" | cut -f1) '
        f'$(find "$d" -type f | wc -l)"; else echo "{kind} 0 0"; fi'
        for kind in STORE_KINDS
    )


def parse_media(out: str) -> dict[str, tuple[int, int]]:
    return {name: (int(used), int(files)) for name, used, files in (line.split() for line in out.splitlines())}


def media_usage(task: Task, settings: Settings) -> Result:
    """Fact: the bytes on disk and the file count of each kind of media (what is absent counts 0)."""
    store = layout(settings).media
    out = run(task, media_command(store), what=Expectation("one line per kind of media"), reads_only=True).stdout
    return Result(host=task.host, result={"store": store, "kinds": parse_media(out)})


def media_table(result: AggregatedResult, settings: Settings) -> str:
    lines = []
    for name, host in result.items():
        found = host[0].result
        if not found:
            continue
        lines.append(f"  {name}: {found['store']}")
        for kind, (used, files) in found["kinds"].items():
            lines.append(f"    {kind:22} {size(used):>10} {files:>10,} files")
        remote = sum(found["kinds"][kind][0] for kind in REMOTE_KINDS)
        if remote:
            lines.append(f"    copies of other servers' media and URL previews: {size(remote)}, purged by Synapse's "
                         "media retention (remote_media_lifetime)")  # fmt: skip
    if settings.config.minio.enabled:
        lines.append("  with MinIO, uploads also go to its bucket: its size is on the MinIO console or `mc du`")
    return "\n".join(lines) or "  no Synapse host answered"
