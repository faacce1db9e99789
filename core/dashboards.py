"""Grafana dashboards of the platform, built from panel lists rather than hand-edited JSON.

Four dashboards (Synapse, PostgreSQL/Patroni, hosts, HAProxy) on the provisioned
Prometheus datasource, with the metric names the alert rules use. Grafana provisions
them from files at start, so nothing is fetched at run time. Every expression is
checked with promtool by the unit tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

DATASOURCE_UID = "platform-prometheus"


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    panels: tuple[Panel, ...]


DASHBOARDS = (
    Dashboard(
        "platform-synapse",
        "Synapse",
        (
            Panel("Sync p95 (syncs answered within 10 s)", (("synapse:sync_response_seconds:p95", "p95"),), "s"),
            Panel(
                "Requests per second by process",
                (("sum by (worker) (rate(synapse_http_server_response_count_total[5m]))", "{{worker}}"),),
                "reqps",
            ),
            Panel("Event persistence, average", (("synapse:persist_events_seconds:avg", "persist_events"),), "s"),
            Panel(
                "Events persisted per second",
                (("sum(rate(synapse_storage_events_persisted_events_total[5m]))", "events"),),
                "ops",
            ),
            Panel(
                "Database pool use by process",
                (
                    (
                        'synapse_threadpool_working_threads{name="database-master"}'
                        ' / synapse_threadpool_max_threads{name="database-master"}',
                        "{{worker}}",
                    ),
                ),
                "percentunit",
            ),
            Panel(
                "Waiting for a database connection, p95",
                (
                    (
                        "histogram_quantile(0.95,"
                        " sum by (le, worker) (rate(synapse_storage_schedule_time_bucket[5m])))",
                        "{{worker}}",
                    ),
                ),
                "s",
            ),
            Panel(
                "Resident memory by process", (('process_resident_memory_bytes{job="synapse"}', "{{worker}}"),), "bytes"
            ),
            Panel(
                "CPU by process",
                (('rate(process_cpu_seconds_total{job="synapse"}[5m])', "{{worker}}"),),
                "percentunit",
            ),
        ),
    ),
    Dashboard(
        "platform-postgresql",
        "PostgreSQL and Patroni",
        (
            Panel("Primary", (("patroni_primary", "{{name}}"),)),
            Panel("Synchronous standby", (("patroni_sync_standby", "{{name}}"),)),
            Panel(
                "Replica replay lag",
                (
                    (
                        "scalar(max(patroni_xlog_location))"
                        " - (patroni_xlog_replayed_location and on(name) patroni_replica == 1)",
                        "{{name}}",
                    ),
                ),
                "bytes",
            ),
            Panel(
                "Cache hit ratio (synapse)",
                (
                    (
                        'sum by (host) (rate(pg_stat_database_blks_hit{datname="synapse"}[10m]))'
                        ' / (sum by (host) (rate(pg_stat_database_blks_hit{datname="synapse"}[10m]))'
                        ' + sum by (host) (rate(pg_stat_database_blks_read{datname="synapse"}[10m])))',
                        "{{host}}",
                    ),
                ),
                "percentunit",
            ),
            Panel(
                "Connections used of max_connections",
                (("sum by (host) (pg_stat_activity_count) / on(host) pg_settings_max_connections", "{{host}}"),),
                "percentunit",
            ),
            Panel("Database size", (('pg_database_size_bytes{datname="synapse"}', "{{host}}"),), "bytes"),
            Panel("etcd has a leader", (("etcd_server_has_leader", "{{host}}"),)),
            Panel("etcd leader changes", (("increase(etcd_server_leader_changes_seen_total[1h])", "{{host}}"),)),
        ),
    ),
    Dashboard(
        "platform-hosts",
        "Hosts",
        (
            Panel(
                "CPU used",
                (('1 - avg by (host) (rate(node_cpu_seconds_total{mode="idle"}[5m]))', "{{host}}"),),
                "percentunit",
            ),
            Panel(
                "Memory used",
                (("1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes", "{{host}}"),),
                "percentunit",
            ),
            Panel(
                "Disk free",
                (
                    (
                        'node_filesystem_avail_bytes{fstype!~"tmpfs|overlay|squashfs|ramfs"}'
                        ' / node_filesystem_size_bytes{fstype!~"tmpfs|overlay|squashfs|ramfs"}',
                        "{{host}} {{mountpoint}}",
                    ),
                ),
                "percentunit",
            ),
            Panel(
                "Network received",
                (('sum by (host) (rate(node_network_receive_bytes_total{device!="lo"}[5m]))', "{{host}}"),),
                "Bps",
            ),
            Panel("Targets down", (("sum by (job) (1 - up)", "{{job}}"),)),
            Panel(
                "Days until a certificate expires",
                (
                    ("(probe_ssl_earliest_cert_expiry - time()) / 86400", "{{job}} {{instance}}"),
                    ("(matrix_platform_certificate_expiry_timestamp_seconds - time()) / 86400", "{{endpoint}}"),
                ),
            ),
        ),
    ),
    Dashboard(
        "platform-haproxy",
        "HAProxy",
        (
            Panel("Backend up", (('haproxy_backend_status{state="UP"}', "{{host}} {{proxy}}"),)),
            Panel("Servers down", (('sum by (proxy) (haproxy_server_status{state="DOWN"})', "{{proxy}}"),)),
            Panel(
                "Requests per second by backend",
                (("sum by (proxy) (rate(haproxy_backend_http_requests_total[5m]))", "{{proxy}}"),),
                "reqps",
            ),
            Panel(
                "5xx responses per second by backend",
                (('sum by (proxy) (rate(haproxy_backend_http_responses_total{code="5xx"}[5m]))', "{{proxy}}"),),
                "reqps",
            ),
            Panel(
                "Current sessions by frontend", (("sum by (proxy) (haproxy_frontend_current_sessions)", "{{proxy}}"),)
            ),
        ),
    ),
)


def expressions() -> list[str]:
    return [expr for dashboard in DASHBOARDS for panel in dashboard.panels for expr, _ in panel.exprs]


def render(dashboard: Dashboard) -> str:
    """Grafana dashboard JSON: time-series panels, two per row."""
    panels = []
    for index, panel in enumerate(dashboard.panels):
        panels.append(
            {
                "id": index + 1,
                "type": "timeseries",
                "title": panel.title,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
                "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "targets": [
                    {
                        "refId": chr(ord("A") + number),
                        "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
                        "expr": expr,
                        "legendFormat": legend,
                    }
                    for number, (expr, legend) in enumerate(panel.exprs)
                ],
            }
        )
    document = {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "tags": ["matrix-platform"],
        "schemaVersion": 39,
        "editable": False,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "1m",
        "panels": panels,
    }
    return json.dumps(document, indent=1) + "\n"
