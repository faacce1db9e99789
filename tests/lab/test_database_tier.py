"""The database tier in the lab: etcd, Patroni, PgBouncer and the synapse database, for real."""

from __future__ import annotations

import itertools
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from core.pki import trusted_ca
from core.settings import Settings
from lab import LAB_CONFIG
from lab.faults import run_runbook, when_step_starts
from lab.lab import Lab
from tests.conftest import load_runbook
from tests.lab.conftest import OTHER_CA, REPO, patroni_cluster, ssh

Deploy = Callable[..., tuple[int, str]]
PATRONI = ("patroni1", "patroni2", "patroni3")
DSN = "host=127.0.0.1 port=6432 dbname=synapse user=synapse"


def sql(lab: Lab, host: str, query: str, *, dsn: str = "", password: str = "") -> str:
    """Run SQL on a lab host: as postgres over the local socket, or with a DSN and password."""
    if dsn:  # the password goes over stdin, never on a command line
        command = f"IFS= read -r PGPASSWORD; export PGPASSWORD; psql -XAtq '{dsn}' -c \"{query}\""
        return ssh(lab, host, command, input=password + "\n").stdout.strip()
    return ssh(lab, host, f'sudo -u postgres psql -XAtq -c "{query}"').stdout.strip()


MEMBER_TLS = "--cacert=/etc/etcd/tls/ca.crt --cert=/etc/etcd/tls/member.crt --key=/etc/etcd/tls/member.key"


def keys(lab: Lab, endpoint: str, tls: str) -> subprocess.CompletedProcess[str]:
    """Patroni's keys in etcd, asked from patroni2 with the client options `tls`."""
    etcdctl = f"sudo ETCDCTL_API=3 etcdctl --endpoints={endpoint} --command-timeout=3s {tls}"
    return ssh(lab, "patroni2", f"{etcdctl} get /service --prefix --keys-only", check=False)


def test_etcd_members_all_healthy(deployed: None, lab: Lab) -> None:
    endpoints = ",".join(f"https://198.18.1.1{i}:2379" for i in (1, 2, 3))
    out = ssh(lab, "patroni2", f"sudo etcdctl --endpoints={endpoints} {MEMBER_TLS} endpoint health 2>&1").stdout
    assert out.count("is healthy") == 3, out
    members = ssh(lab, "patroni3", f"sudo etcdctl --endpoints=https://127.0.0.1:2379 {MEMBER_TLS} member list").stdout
    assert all(name in members for name in PATRONI) and "http://" not in members  # peers speak TLS too


def test_etcd_answers_only_clients_with_a_certificate_of_the_site(deployed: None, lab: Lab) -> None:
    allowed = keys(lab, "https://198.18.1.11:2379", MEMBER_TLS)
    assert allowed.returncode == 0 and "/service/" in allowed.stdout, allowed.stderr
    assert keys(lab, "http://198.18.1.11:2379", "").returncode != 0  # plaintext
    anonymous = keys(lab, "https://198.18.1.11:2379", "--cacert=/etc/etcd/tls/ca.crt")
    assert anonymous.returncode != 0 and "/service/" not in anonymous.stdout  # TLS without a certificate
    ssh(lab, "patroni2", OTHER_CA)
    other = keys(
        lab, "https://198.18.1.11:2379", "--cacert=/etc/etcd/tls/ca.crt --cert=/tmp/other.crt --key=/tmp/other.key"
    )
    assert other.returncode != 0 and "/service/" not in other.stdout  # a certificate of another CA


def test_one_leader_two_streaming_replicas_and_a_sync_standby(deployed: None, lab: Lab) -> None:
    members = patroni_cluster(lab)["members"]
    roles = sorted(m["role"] for m in members)
    assert roles == ["leader", "replica", "sync_standby"], members
    assert all(m["state"] in ("running", "streaming") for m in members)
    assert sum(1 for m in members if m["state"] == "streaming") == 2


def test_row_written_through_pgbouncer_is_read_on_both_replicas(deployed: None, lab: Lab, lab_settings) -> None:  # type: ignore[no-untyped-def]
    password = lab_settings.secrets["synapse_db_password"]
    sql(
        lab,
        "haproxy1",
        "CREATE TABLE IF NOT EXISTS mha_probe (id serial primary key, note text)",
        dsn=DSN,
        password=password,
    )
    marker = sql(
        lab,
        "haproxy2",
        "INSERT INTO mha_probe (note) VALUES ('through pgbouncer') RETURNING id",
        dsn=DSN,
        password=password,
    )
    members = patroni_cluster(lab)["members"]
    replicas = [m["name"] for m in members if m["role"] != "leader"]
    assert len(replicas) == 2
    for replica in replicas:
        # Synchronous replication: the sync standby has it at commit; the other catches up.
        for _ in range(20):
            found = sql(
                lab,
                replica,
                f"SELECT note FROM mha_probe WHERE id = {marker}",
                dsn="host=/var/run/postgresql dbname=synapse user=synapse",  # local: no TCP line but TLS
                password=password,
            )
            if found:
                break
            ssh(lab, replica, "sleep 0.5")
        assert found == "through pgbouncer", replica
        assert sql(lab, replica, "SELECT pg_is_in_recovery()") == "t"


def test_database_collation_and_role_settings(deployed: None, lab: Lab) -> None:
    leader = next(m["name"] for m in patroni_cluster(lab)["members"] if m["role"] == "leader")
    row = sql(
        lab,
        leader,
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = 'synapse'",
    )
    assert row == "UTF8|C|C"
    settings = sql(
        lab,
        leader,
        "SELECT setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = 'synapse'",
    )
    for expected in ("statement_timeout=10min", "bytea_output=hex", "default_transaction_isolation=repeatable read"):
        assert expected in settings, settings


def test_pgbouncer_runs_transaction_pooling(deployed: None, lab: Lab, lab_settings) -> None:  # type: ignore[no-untyped-def]
    password = lab_settings.secrets["pgbouncer_admin_password"]
    config = sql(
        lab,
        "haproxy1",
        "SHOW CONFIG",
        dsn="host=127.0.0.1 port=6432 dbname=pgbouncer user=pgbouncer_admin",
        password=password,
    )
    settings = {line.split("|")[0]: line.split("|")[1] for line in config.splitlines()}
    assert settings["pool_mode"] == "transaction"
    assert settings["default_pool_size"] == "50" and settings["max_client_conn"] == "1000"
    assert settings["auth_type"] == "scram-sha-256"


def test_hand_edited_cluster_config_is_put_back(deployed: None, lab: Lab, deploy_lab: Deploy) -> None:
    leader = next(m["name"] for m in patroni_cluster(lab)["members"] if m["role"] == "leader")
    patronictl = "sudo /opt/patroni/venv/bin/patronictl -c /etc/patroni/patroni.yml"
    ssh(lab, leader, f"{patronictl} edit-config --force -s retry_timeout=6 -s maximum_lag_on_failover=999")
    code, out = deploy_lab("--step", "patroni-config", "--verbose")
    assert code == 0, out
    assert '"maximum_lag_on_failover": 1048576' in out and '"retry_timeout": 4' in out
    shown = ssh(lab, leader, f"{patronictl} show-config").stdout
    assert "retry_timeout: 4" in shown and "maximum_lag_on_failover: 1048576" in shown
    code, out = deploy_lab("--step", "patroni-config")
    assert code == 0 and "deploy: no changes" in out


def test_rerun_changes_nothing_and_restarts_nothing(deployed: None, lab: Lab, deploy_lab: Deploy) -> None:
    def pids() -> dict[str, str]:
        out = {}
        for host in (*PATRONI, "haproxy1", "haproxy2"):
            units = "etcd patroni" if host.startswith("patroni") else "haproxy pgbouncer"
            out[host] = ssh(
                lab,
                host,
                f"for u in {units}; do systemctl show -p MainPID --value $u; done; "
                "sudo -u postgres psql -XAtqc 'select pg_postmaster_start_time()' "
                "2>/dev/null || true",
            ).stdout
        return out

    before = pids()
    code, out = deploy_lab("--skip-step", "hosts-file")
    assert code == 0 and "deploy: no changes" in out, out
    assert pids() == before


def test_changed_etcd_settings_restart_the_members_one_at_a_time(deployed: None, lab: Lab, deploy_lab: Deploy) -> None:
    """Every member's settings differ from the deploy's: each member restarts, each back before the next stops
    (etcd tells systemd when it has rejoined), so two of three always answer and Patroni keeps its leader."""
    leader = next(m["name"] for m in patroni_cluster(lab)["members"] if m["role"] == "leader")
    for host in PATRONI:
        ssh(lab, host, "echo '# edited by hand' | sudo tee -a /etc/default/etcd >/dev/null")
    code, out = deploy_lab("--step", "etcd", "--verbose")
    assert code == 0, out
    assert "etcd.service: running → restart (one host at a time)" in out, out
    down = []  # per member: (stopping began, up again), on the clock the lab's hosts share
    for host in PATRONI:
        shown = ssh(
            lab, host, "systemctl show -p ActiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic etcd.service"
        ).stdout
        times = dict(line.split("=", 1) for line in shown.split())
        down.append((int(times["ActiveExitTimestampMonotonic"]), int(times["ActiveEnterTimestampMonotonic"])))
    down.sort()
    assert all(earlier[0] < earlier[1] <= later[0] for earlier, later in itertools.pairwise(down)), down
    endpoints = ",".join(f"https://198.18.1.1{i}:2379" for i in (1, 2, 3))
    health = ssh(lab, "patroni1", f"sudo etcdctl --endpoints={endpoints} {MEMBER_TLS} endpoint health 2>&1").stdout
    assert health.count("is healthy") == len(PATRONI), health
    assert next(m["name"] for m in patroni_cluster(lab)["members"] if m["role"] == "leader") == leader


def test_restart_needing_change_rolls_through_the_cluster(
    deployed: None, lab: Lab, lab_settings: Settings, tmp_path: Path
) -> None:
    """A larger max_connections (bigger pools): replicas restart one by one, a switchover, then the old leader."""

    def deploy_with(config: Path) -> int:
        return load_runbook("deploy").RUNBOOK.main(["--lab", "--config", str(config), "--step", "patroni-config"])

    # A config whose PgBouncers may open more server connections (2 × (120 + 10) + 20 reserved,
    # × 1.5 → 450), beside the same secrets as the lab's. (The lab's worker counts are
    # explicit, so more users alone would not change the budget.)
    shutil.copytree(REPO / ".secrets", tmp_path / ".secrets")
    bigger = tmp_path / "config.yaml"
    bigger.write_text(LAB_CONFIG.read_text() + "pgbouncer:\n  default_pool_size: 120\n")
    leader_before = next(m["name"] for m in patroni_cluster(lab)["members"] if m["role"] == "leader")
    started = {h: sql(lab, h, "SELECT pg_postmaster_start_time()") for h in PATRONI}
    try:
        assert deploy_with(bigger) == 0
        assert {sql(lab, h, "SHOW max_connections") for h in PATRONI} == {"450"}
        state = patroni_cluster(lab)["members"]
        assert not any(m.get("pending_restart") for m in state)
        assert next(m["name"] for m in state if m["role"] == "leader") != leader_before  # switched over
        assert all(sql(lab, h, "SELECT pg_postmaster_start_time()") != started[h] for h in PATRONI)
    finally:
        assert deploy_with(LAB_CONFIG) == 0
    assert {sql(lab, h, "SHOW max_connections") for h in PATRONI} == {str(lab_settings.sizing.max_connections)}
    assert not any(m.get("pending_restart") for m in patroni_cluster(lab)["members"])


REST_CLIENT = """import ssl, sys, urllib.error, urllib.request
url, method = sys.argv[1], sys.argv[2]
context = ssl.create_default_context()  # the server verified against the trust store (the site CA is in it)
if len(sys.argv) > 3:
    context.load_cert_chain(sys.argv[3], sys.argv[4])
request = urllib.request.Request(url, data=b"{}" if method == "POST" else None, method=method)
try:
    print(urllib.request.urlopen(request, timeout=5, context=context).status)
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode().strip())
except OSError as error:
    print("no answer:", type(error).__name__)
"""


def rest(lab: Lab, url: str, method: str = "GET", *certificate: str) -> str:
    """What Patroni's REST API answers synapse1 (one of its clients in the firewall matrix)."""
    arguments = " ".join(shlex.quote(a) for a in (url, method, *certificate))
    return ssh(lab, "synapse1", f"python3 -c {shlex.quote(REST_CLIENT)} {arguments}").stdout.strip()


def test_patroni_answers_over_https_and_changes_only_for_a_certificate_of_the_site(deployed: None, lab: Lab) -> None:
    api = "https://198.18.1.11:8008"
    assert rest(lab, f"{api}/cluster") == "200"  # its certificate verifies for its address
    assert rest(lab, "http://198.18.1.11:8008/cluster").startswith("no answer")  # plaintext
    # A changing request without a client certificate is refused before the password is even asked.
    assert rest(lab, f"{api}/restart", "POST") == "403 client certificate required"
    ssh(lab, "synapse1", OTHER_CA)
    other = rest(lab, f"{api}/restart", "POST", "/tmp/other.crt", "/tmp/other.key")
    assert other.startswith("no answer"), other  # a certificate of another CA fails the handshake


def login(lab: Lab, host: str, dsn: str, password: str, query: str = "select 1") -> subprocess.CompletedProcess[str]:
    """`query` as a client on `host` with libpq's `dsn` (run as postgres, who may read the host's keys); a client
    left waiting in PgBouncer's queue gives up after 10 s."""
    command = (
        "IFS= read -r PGPASSWORD; export PGPASSWORD; "
        f"timeout 10 sudo -u postgres --preserve-env=PGPASSWORD psql -XAtq {shlex.quote(dsn + ' connect_timeout=5')} "
        f"-c {shlex.quote(query)}"
    )
    return ssh(lab, host, command, check=False, input=password + "\n")


PGBOUNCER_TLS = "/etc/pgbouncer/tls"
OWN_CERTIFICATE = f"sslcert={PGBOUNCER_TLS}/pgbouncer.crt sslkey={PGBOUNCER_TLS}/pgbouncer.key"


def test_postgresql_takes_only_tls_clients_with_a_certificate_of_the_site(
    deployed: None, lab: Lab, lab_settings: Settings
) -> None:
    """From a PgBouncer host (one PostgreSQL lets in): plaintext, no certificate and another CA's are refused."""
    password = lab_settings.secrets["synapse_db_password"]
    leader = next(m for m in patroni_cluster(lab)["members"] if m["role"] == "leader")
    server = f"host={leader['host']} port=5432 dbname=synapse user=synapse"
    verified = f"sslmode=verify-full sslrootcert={PGBOUNCER_TLS}/ca.crt"
    plaintext = login(lab, "haproxy1", f"{server} sslmode=disable", password)
    assert plaintext.returncode != 0 and "no encryption" in plaintext.stderr, plaintext.stderr
    anonymous = login(lab, "haproxy1", f"{server} {verified}", password)
    assert anonymous.returncode != 0 and "certificate" in anonymous.stderr, anonymous.stderr
    ssh(lab, "haproxy1", OTHER_CA.replace("cd /tmp", "cd /tmp && umask 077") + " && sudo chown postgres /tmp/other.*")
    foreign = login(lab, "haproxy1", f"{server} {verified} sslcert=/tmp/other.crt sslkey=/tmp/other.key", password)
    assert foreign.returncode != 0 and "select 1" not in foreign.stdout, foreign.stderr
    ssl = "select ssl, version from pg_stat_ssl where pid = pg_backend_pid()"
    member = login(lab, "haproxy1", f"{server} {verified} {OWN_CERTIFICATE}", password, ssl)
    assert member.returncode == 0 and member.stdout.startswith("t|TLSv1."), member.stderr
    # The members replicate over TLS too.
    streams = "select count(*) from pg_stat_replication r join pg_stat_ssl s using (pid) where s.ssl"
    assert sql(lab, leader["name"], streams) == "2"


def test_pgbouncer_speaks_tls_both_ways(deployed: None, lab: Lab, lab_settings: Settings) -> None:
    """Clients must use TLS and find a certificate of the site CA for its address; its server connections are TLS.
    (Asked on the PgBouncer host itself, which has psql; Synapse's own connections are read from its client list.)"""
    password = lab_settings.secrets["synapse_db_password"]
    pooler = "host=198.18.1.21 port=6432 dbname=synapse user=synapse"
    plaintext = login(lab, "haproxy1", f"{pooler} sslmode=disable", password)
    assert plaintext.returncode != 0 and "SSL required" in plaintext.stderr, plaintext.stderr
    ssh(lab, "haproxy1", OTHER_CA.replace("cd /tmp", "mkdir -p /tmp/pooler && cd /tmp/pooler"))
    foreign_ca = login(lab, "haproxy1", f"{pooler} sslmode=verify-full sslrootcert=/tmp/pooler/other.crt", password)
    assert foreign_ca.returncode != 0 and "certificate verify failed" in foreign_ca.stderr, foreign_ca.stderr
    site = f"sslmode=verify-full sslrootcert={trusted_ca(lab_settings.site)}"
    wrong = login(lab, "haproxy1", f"{pooler} {site}", "not-the-password")
    assert wrong.returncode != 0 and "SASL authentication failed" in wrong.stderr, wrong.stderr  # SCRAM
    server_ssl = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
    through = login(lab, "haproxy1", f"{pooler} {site}", password, server_ssl)
    assert through.returncode == 0 and through.stdout.strip() == "t", through.stderr  # PgBouncer → PostgreSQL
    admin = lab_settings.secrets["pgbouncer_admin_password"]
    clients = sql(
        lab,
        "haproxy1",
        "SHOW CLIENTS",
        dsn="host=127.0.0.1 port=6432 dbname=pgbouncer user=pgbouncer_admin",
        password=admin,
    )
    synapse = [line for line in clients.splitlines() if "|198.18.1.61|" in line]
    assert synapse and all("TLSv1." in line for line in synapse), clients  # Synapse's own connections


def test_the_pgbouncer_gate_waits_until_a_route_that_lost_every_member_forwards_again(
    deployed: None, lab: Lab, lab_settings: Settings
) -> None:
    """haproxy2's way to every Patroni member is barred until PgBouncer there refuses logins ("server login
    has been failing"); the deploy's PgBouncer step starts while it is barred and the way comes back as it
    starts (a host back on the network): the gate waits for the route's `rise` checks and PgBouncer's login
    back-off instead of failing the deploy."""
    members = [host.private_ip for host in lab_settings.members("patroni")]
    site = f"sslmode=verify-full sslrootcert={trusted_ca(lab_settings.site)}"
    pooler = f"host=198.18.1.22 port=6432 dbname=synapse user=synapse {site}"
    password = lab_settings.secrets["synapse_db_password"]

    def routes(verb: str) -> str:
        return "; ".join(f"sudo ip route {verb} prohibit {address}" for address in members)

    barred = [True]

    def lift() -> None:
        ssh(lab, "haproxy2", routes("del"))
        barred.clear()

    try:
        ssh(lab, "haproxy2", routes("add"))
        failing = ""
        for _ in range(20):  # a login waiting in PgBouncer's queue for a server gives up after 10 s
            failing = login(lab, "haproxy2", pooler, password).stderr
            if "server login has been failing" in failing:
                break
            time.sleep(0.5)
        assert "server login has been failing" in failing, failing
        code, lines = run_runbook(
            "deploy", "--lab", "--step", "pgbouncer", "--limit", "haproxy2", on_line=when_step_starts("pgbouncer", lift)
        )
    finally:
        if barred:
            ssh(lab, "haproxy2", routes("del"))
    output = "\n".join(line for _, line in lines)
    assert not barred and code == 0 and "deploy: no changes" in output, output
