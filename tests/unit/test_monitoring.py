"""Monitoring without servers: the scrape targets from the inventory, and Prometheus's own
checks (promtool check config / check rules / test rules, amtool check-config) on what
the deploy installs."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from core.dashboards import DASHBOARDS, DATASOURCE_UID, expressions
from core.dashboards import render as render_dashboard
from core.settings import Settings, load_settings
from tasks.files import jinja
from tasks.monitoring import HAPROXY_PASSWORD_FILE, RULES_SOURCE, TARGETS, expected_targets, scrape_context
from tasks.registry import CATALOG
from tests.conftest import REPO, Site

TOOLS = REPO / ".tools"


def tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool/amtool (setup.sh puts them in .tools/)."""
    return subprocess.run([str(TOOLS / name), *args], capture_output=True, text=True, timeout=60)


def test_alert_rules_pass_promtool_check() -> None:
    checked = tool("promtool", "check", "rules", str(RULES_SOURCE))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_rules_unit_tests_pass() -> None:
    """Each critical alert fires on synthetic series and stays quiet below its threshold."""
    tested = tool("promtool", "test", "rules", str(REPO / "tests" / "promtool" / "platform.rules.test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_broken_rule_test_fails(tmp_path: Path) -> None:
    """The rule tests can fail: the same test against a rule with a changed threshold does."""
    rules = tmp_path / "rules.yml"
    limit = "group_left matrix_platform_backup_max_age_seconds"
    source = RULES_SOURCE.read_text()
    assert limit in source
    rules.write_text(source.replace(limit, f"group_left ({limit.split()[1]} + 7200)"))  # 2 h more allowed
    test = (REPO / "tests" / "promtool" / "platform.rules.test.yml").read_text()
    (tmp_path / "test.yml").write_text(test.replace("../../templates/monitoring/platform.rules.yml", str(rules)))
    assert tool("promtool", "test", "rules", str(tmp_path / "test.yml")).returncode != 0


@pytest.mark.parametrize("which", ["lab", "production"])
def test_prometheus_config_passes_promtool(which: str, lab_settings: Settings, site: Site, tmp_path: Path) -> None:
    if which == "lab":
        settings = lab_settings
    else:
        settings = load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)[0]
    context = scrape_context(settings, str(RULES_SOURCE))
    config = tmp_path / "prometheus.yml"
    config.write_text(jinja().get_template("monitoring/prometheus.yml.j2").render(**context))
    checked = tool("promtool", "check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("webhook", [None, "http://10.0.6.5:8065/hooks/platform"])
def test_alertmanager_config_passes_amtool(webhook: str | None, tmp_path: Path) -> None:
    config = tmp_path / "alertmanager.yml"
    config.write_text(jinja().get_template("monitoring/alertmanager.yml.j2").render(interval=30, webhook=webhook))
    checked = tool("amtool", "check-config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_lab_targets_follow_the_inventory(lab_settings: Settings) -> None:
    by_job = {job.name: job for job in lab_settings.catalog.scrape(lab_settings)}
    assert len(by_job["node"].targets) == len(lab_settings.hosts) == 16
    assert {t.address for t in by_job["node"].targets} >= {"198.18.1.11:9101", "198.18.1.71:9101"}
    assert [len(by_job[name].targets) for name in ("etcd", "patroni", "postgres", "haproxy")] == [3, 3, 3, 2]
    # Synapse: the main process and each of the lab's seven workers, each with its own port and label.
    synapse = {t.labels["worker"]: t.address for t in by_job["synapse"].targets}
    assert synapse["main"] == "198.18.1.61:9100" and synapse["sync2"] == "198.18.1.61:29212"
    assert len(synapse) == 8 and len(set(synapse.values())) == 8
    assert by_job["coturn"].module == "tcp_connect" and by_job["coturn-tls"].module == "tls_connect"
    assert by_job["coturn"].path == "/probe" and by_job["node"].path == "/metrics"  # probes: the exporter's /probe
    assert by_job["haproxy"].basic_auth == ("stats", HAPROXY_PASSWORD_FILE)
    # LiveKit and MinIO binaries are not in the cache here: their tiers are not deployed, not scraped.
    assert "livekit" not in by_job and "minio" not in by_job and "livekit-redis" in by_job
    assert len(expected_targets(lab_settings)) == sum(len(job.targets) for job in by_job.values())


def test_playbook_mode_scrapes_the_playbooks_workers(site: Site) -> None:
    settings = load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)[0]
    synapse = next(job for job in settings.catalog.scrape(settings) if job.name == "synapse")
    ports = {t.labels["worker"]: t.address.rsplit(":", 1)[1] for t in synapse.targets}
    # Large: 8 sync workers from 29211, 2 event writers first among the stream writers (19211+).
    assert ports["main"] == "9100" and ports["sync-worker-0"] == "29211" and ports["sync-worker-7"] == "29218"
    assert ports["stream-writer-0-events"] == "19211" and ports["stream-writer-2-typing"] == "19213"
    assert ports["media-repository-0"] == "19551" and len(set(ports.values())) == len(ports)
    assert "synapse-redis" not in {job.name for job in settings.catalog.scrape(settings)}  # the playbook's Valkey


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query passes promtool (checked as recording rules)."""
    queries = expressions()
    rules = {
        "groups": [{"name": "dashboards", "rules": [{"record": f"q:{i}", "expr": q} for i, q in enumerate(queries)]}]
    }
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = tool("promtool", "check", "rules", str(path))
    assert checked.returncode == 0 and f"{len(queries)} rules found" in checked.stdout, checked.stdout + checked.stderr


def test_dashboards_are_grafana_json_on_the_provisioned_datasource() -> None:
    titles = set()
    for dashboard in DASHBOARDS:
        document = json.loads(render_dashboard(dashboard))
        titles.add(document["title"])
        assert document["uid"] == dashboard.uid and document["panels"]
        for panel in document["panels"]:
            assert panel["datasource"]["uid"] == DATASOURCE_UID and panel["targets"][0]["expr"]
    assert titles == {"Synapse", "PostgreSQL and Patroni", "Hosts", "HAProxy"}
    datasource = jinja().get_template("monitoring/grafana-datasource.yml.j2").render(uid=DATASOURCE_UID, url="http://x")
    assert yaml.safe_load(datasource)["datasources"][0]["uid"] == DATASOURCE_UID


class FakeTargets(BaseHTTPRequestHandler):
    """Prometheus's /api/v1/targets on loopback: etcd up on patroni1, down on patroni2."""

    def do_GET(self) -> None:
        targets = [
            {"labels": {"job": "etcd", "instance": name}, "health": health, "lastError": error}
            for name, health, error in (("patroni1", "up", ""), ("patroni2", "down", "connection refused"))
        ]
        body = json.dumps({"data": {"activeTargets": targets}}).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTargets)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def poll_targets(base: str, expected: list[list[str]]) -> list[list[str]]:
    """TARGETS with 60 s for Prometheus to answer and a 1 s scrape window from its first answer."""
    out = subprocess.run(
        ["python3", "-c", TARGETS, base, "60", "1"],
        input=json.dumps(expected),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_targets_poll_ends_when_every_expected_target_is_up(prometheus: str) -> None:
    assert ["etcd", "patroni1", "up", ""] in poll_targets(prometheus, [["etcd", "patroni1"]])


def test_a_down_target_is_reported_one_window_after_prometheus_answers(prometheus: str) -> None:
    """Not after the minute allowed for Prometheus to answer at all (the run's timeout is 30 s)."""
    targets = poll_targets(prometheus, [["etcd", "patroni1"], ["etcd", "patroni2"]])
    assert ["etcd", "patroni2", "down", "connection refused"] in targets
