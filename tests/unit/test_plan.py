"""Plan mode renders every host's files offline and reports them as pending changes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from core.provenance import commit, settings_digest
from tasks.registry import STEPS
from tests.conftest import Site

Deploy = Callable[..., tuple[int, str]]


def test_plan_writes_hosts_block_for_every_host(deploy: Deploy, site: Site) -> None:
    report = site.root / "report.json"
    code, out = deploy(*site.args("--plan", "--report", str(report)))
    assert code == 0, out
    plan = site.root / "plan" / "production"
    hosts = sorted(p.name for p in plan.iterdir() if p.name != "_controller")  # what the controller writes
    assert len(hosts) == 19 and "patroni1" in hosts and "backup1" in hosts
    assert (plan / "_controller" / "playbook" / "inventory" / "hosts").exists()
    block = (plan / "synapse1" / "etc" / "hosts#hosts").read_text()
    assert "10.0.1.10 chat.z3r0d3v.com" in block
    assert "10.0.2.12 patroni2.internal patroni2" in block
    assert block.startswith("# BEGIN matrix-platform hosts") and block.rstrip().endswith("# END matrix-platform hosts")
    data = json.loads(report.read_text())
    assert data["mode"] == "plan" and data["exit_code"] == 0
    assert data["command"] == f"python runbooks/deploy.py {' '.join(site.args('--plan', '--report', str(report)))}"
    assert datetime.fromisoformat(data["started_at"]).tzinfo is not None
    assert data["commit"] == commit() and len(data["commit"]) == 40  # the tests run in a checkout
    assert data["settings_sha256"] == settings_digest(site.config, site.inventory)
    site.edit("inventory/hosts.yaml", "hostname: 10.0.2.12", "hostname: 10.0.2.13")
    assert settings_digest(site.config, site.inventory) != data["settings_sha256"]
    names = [s["name"] for s in data["steps"]]
    assert names == [step.name for step in STEPS]  # every step reported, in the deploy's order
    skipped = {s["name"]: s["note"] for s in data["steps"] if s["status"] == "skipped"}
    # Synapse itself (and its state compressor) comes from the playbook in production; preflight reads the
    # hosts, which plan mode never contacts. Components whose vendor binaries are not pinned yet are planned
    # all the same.
    assert set(skipped) == {"preflight", "synapse", "admin-user", "state-compressor"}
    assert skipped["preflight"] == "not run in plan mode: it reads the running platform"
    vendor = {s["name"]: s for s in data["steps"] if s["name"] in ("minio", "livekit", "livekit-jwt", "grafana")}
    assert all(
        s["status"] == "changed" and s["note"].startswith("configuration only: artifact") for s in vendor.values()
    )
    assert "no sha256 pinned" in vendor["livekit"]["note"]
    assert "rtc:" in (plan / "livekit2" / "etc" / "livekit" / "livekit.yaml").read_text()
    assert (plan / "minio1" / "etc" / "default" / "minio").exists()
    assert (plan / "monitoring1" / "etc" / "grafana" / "grafana.ini").exists()
    assert skipped["synapse"].startswith("used in native mode only")
    playbook = next(s for s in data["steps"] if s["name"] == "synapse-playbook")
    assert "setup-all,ensure-matrix-users-created,start" in json.dumps(playbook)
    assert "not a matrix-docker-ansible-deploy checkout" in out  # warned, not refused, in plan mode
    patroni = (plan / "patroni2" / "etc" / "patroni" / "patroni.yml").read_text()
    assert "synchronous_mode: true" in patroni and "max_connections: 350" in patroni
    assert "<secret:postgres_superuser_password>" in patroni
    # etcd and the REST API over TLS with the member's certificate; changing requests need one of the site.
    assert "protocol: https" in patroni and "verify_client: optional" in patroni
    # PostgreSQL over the network: the other members and PgBouncer's hosts only, as in the firewall.
    assert "hostssl all all 10.0.1.11/32 scram-sha-256 clientcert=verify-ca" in patroni
    assert "10.0.5.51/32" not in patroni and "    - host " not in patroni  # TLS on every TCP line
    assert "certfile: /etc/patroni/tls/member.crt" in patroni
    etcd = (plan / "patroni2" / "etc" / "default" / "etcd").read_text()
    assert 'ETCD_CLIENT_CERT_AUTH="true"' in etcd and 'ETCD_PEER_CLIENT_CERT_AUTH="true"' in etcd
    assert "http://" not in etcd.replace('ETCD_LISTEN_METRICS_URLS="http://', "")  # only the metrics listener
    assert 'archive_command: "pgbackrest --stanza=matrix archive-push %p"' in patroni  # WAL follows the primary
    repo = (plan / "backup1" / "etc" / "pgbackrest" / "pgbackrest.conf").read_text()
    assert "backup-standby=y" in repo and "repo1-cipher-pass=<secret:pgbackrest_cipher_pass>" in repo
    assert "tls-server-auth=patroni3.internal=matrix" in repo and "pg3-host=patroni3.internal" in repo
    pgbouncer = (plan / "haproxy1" / "etc" / "pgbouncer" / "pgbouncer.ini").read_text()
    assert "pool_mode = transaction" in pgbouncer and "port=5434" in pgbouncer
    # Its route, an HAProxy of its own, asks Patroni over HTTPS, verified against the site CA for the member's name.
    route = (plan / "haproxy1" / "etc" / "haproxy" / "postgres.cfg").read_text()
    assert "bind 127.0.0.1:5434" in route and "stats socket /run/haproxy-postgres/admin.sock" in route
    assert "check port 8008 check-ssl verify required ca-file /usr/local/share/ca-certificates/" in route
    assert "verifyhost patroni1.internal" in route
    assert data["commands"] == {}  # no host was contacted


def test_plan_of_the_edge(deploy: Deploy, site: Site) -> None:
    """HAProxy, Keepalived and firewall files as the edge hosts would get them, without key or password."""
    code, out = deploy(*site.args("--plan", "--step", "firewall", "--step", "haproxy", "--step", "keepalived"))
    assert code == 0, out
    plan = site.root / "plan" / "production"
    haproxy = (plan / "haproxy1" / "etc" / "haproxy" / "haproxy.cfg").read_text()
    assert "bind 10.0.1.11:8404" in haproxy  # stats on the private address only
    assert "acl admin_network src 10.0.0.0/8" in haproxy
    assert "http-request set-header X-Forwarded-For %[src]" in haproxy and "option forwardfor" not in haproxy
    assert "postgres_primary" not in haproxy  # the database's route is not the edge's (issue 24)
    assert "server synapse1 10.0.5.51:81 check" in haproxy  # playbook mode: Traefik's web entrypoint
    assert "server synapse1 10.0.5.51:8449 check" in haproxy
    assert "<secret:haproxy_stats_password>" in haproxy
    assert "http-request replace-path /livekit/jwt/?(.*) /\\1" in haproxy  # Element Call's token service
    bundle = (plan / "haproxy1" / "etc" / "haproxy" / "certs" / "chat.z3r0d3v.com.pem").read_text()
    assert (
        bundle.startswith("-----BEGIN CERTIFICATE-----")
        and bundle.endswith("<private key>\n")
        and "PRIVATE" not in bundle
    )
    keepalived = (plan / "haproxy2" / "etc" / "keepalived" / "keepalived.conf").read_text()
    assert "priority 140" in keepalived and "auth_pass <secret:keepalived_auth_pass>" in keepalived
    coturn = (plan / "coturn1" / "etc" / "matrix-platform" / "firewall.nft").read_text()
    assert "udp dport { 3478, 5349, 49152-49172 } accept" in coturn
    # A private port only from the hosts whose groups use it: node-exporter from the monitoring host.
    assert "ip saddr { 10.0.6.61 } tcp dport { 9101 } accept" in coturn
    assert "6432" not in coturn and "protocol 112" not in coturn and "10.0.0.0/16" not in coturn
    synapse = (plan / "synapse1" / "etc" / "matrix-platform" / "firewall.nft").read_text()
    assert "ip saddr { 10.0.1.11, 10.0.1.12 } tcp dport { 8008 } accept" in synapse  # the admin API behind HAProxy
    assert "9093" not in synapse  # replication stays on the host


def test_second_plan_shows_the_difference_to_the_previous_one(deploy: Deploy, site: Site) -> None:
    assert deploy(*site.args("--plan"))[0] == 0
    site.edit("inventory/defaults.yaml", "vip: 10.0.1.10", "vip: 10.0.1.20")
    code, out = deploy(*site.args("--plan"))
    assert code == 0
    assert "-10.0.1.10 chat.z3r0d3v.com" in out and "+10.0.1.20 chat.z3r0d3v.com" in out


def test_help_lists_steps_in_order() -> None:
    from tests.conftest import load_runbook

    text = load_runbook("deploy").RUNBOOK.parser().format_help()
    assert text.index("1. preflight") < text.index("3. firewall") < text.index("5. hosts-file") < text.index("7. etcd")
    assert "after: etcd\n" in text  # patroni's: the firewall etcd waits for is not repeated


def test_step_selection(deploy: Deploy, site: Site) -> None:
    code, out = deploy(*site.args("--plan", "--step", "hosts-file", "--limit", "patroni1,haproxy2"))
    assert code == 0
    assert "preflight" not in out.split("Summary")[0]
    assert sorted(p.name for p in (site.root / "plan" / "production").iterdir()) == ["haproxy2", "patroni1"]


def test_plan_output_is_stable_and_says_what_it_compares(deploy: Deploy, site: Site) -> None:
    """Hosts in the inventory's order, run after run; a changed plan is compared with the previous plan."""
    code, first = deploy(*site.args("--plan", "--step", "hosts-file", "--step", "etcd"))
    assert code == 0, first
    shown = [line.split()[1] for line in first.splitlines() if line.startswith("  changed ")]
    inventory = [line[:-1] for line in (site.inventory / "hosts.yaml").read_text().splitlines() if line[:1].isalnum()]
    assert shown == [*inventory, "patroni1", "patroni2", "patroni3"]
    assert "etcd.service: would be running, restarted where its files differ on the host" in first
    site.edit("config.yaml", "domain: z3r0d3v.com", "domain: example.org")
    code, second = deploy(*site.args("--plan", "--step", "hosts-file"))
    assert code == 0 and "differs from the previous plan" in second
    assert "(previous plan)" in second and "(this plan)" in second and "(now)" not in second
