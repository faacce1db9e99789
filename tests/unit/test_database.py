"""Database tier decisions: Patroni cluster health, dynamic config drift, the SQL to converge."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.errors import HostError
from core.pki import InternalCA
from core.settings import Settings
from tasks.database import PSQL, ROLE_SETTINGS, SYNAPSE_DATABASE, digest, statements
from tasks.declaration import Command
from tasks.facts import HostFacts
from tasks.patroni import PATRONI, Memory, cluster_problems, config_patch, pending_restart, rest_gets_command
from tasks.pooler import synapse_verifier
from tasks.systemd import ServiceFact

HEALTHY = {
    "members": [
        {"name": "patroni1", "role": "leader", "state": "running"},
        {"name": "patroni2", "role": "sync_standby", "state": "streaming"},
        {"name": "patroni3", "role": "replica", "state": "streaming"},
    ]
}
NAMES = ["patroni1", "patroni2", "patroni3"]


def test_healthy_cluster() -> None:
    assert cluster_problems(HEALTHY, NAMES, synchronous=True) == []


def test_unhealthy_clusters_are_described() -> None:
    members = [dict(m) for m in HEALTHY["members"]]
    members[1]["role"], members[2]["state"] = "replica", "starting"
    found = cluster_problems({"members": members[:3]}, [*NAMES, "patroni4"], synchronous=True)
    assert found == ["patroni3 is starting, not streaming", "patroni4 is not in the cluster", "no synchronous standby"]
    assert cluster_problems({"members": []}, [], synchronous=False) == ["0 leaders (none)"]


def test_dynamic_config_patch_holds_only_the_drift() -> None:
    desired = {
        "ttl": 20,
        "synchronous_mode": True,
        "postgresql": {"parameters": {"max_connections": 350, "wal_log_hints": "on"}},
    }
    current = {
        "ttl": 20,
        "synchronous_mode": False,
        "postgresql": {"parameters": {"max_connections": 350, "wal_log_hints": "on"}},
        "extra": 1,
    }
    assert config_patch(desired, current) == {"synchronous_mode": True}
    assert config_patch(desired, desired) == {}


def test_memory_tuning_from_ram() -> None:
    memory = Memory(total_mb=16384, max_connections=350)
    assert (memory.shared_buffers_mb, memory.effective_cache_size_mb) == (4096, 12288)
    assert memory.work_mem_mb == 11 and memory.maintenance_work_mem_mb == 1024


FRESH = {"role": False, "password_current": False, "database": None, "settings": None, "monitor": False}


def test_fresh_server_gets_role_password_database_and_settings() -> None:
    sql, changes = statements(FRESH, "synapse", "synapse", "SCRAM-SHA-256$4096:x$y:z")
    assert sql[0] == 'CREATE ROLE "synapse" LOGIN'
    assert "TEMPLATE template0" in sql[2] and "LC_COLLATE 'C'" in sql[2]
    assert sql[-1] == 'GRANT pg_monitor TO "prometheus"'  # postgres-exporter's read-only role
    assert len(sql) == 3 + len(ROLE_SETTINGS) + 2 and len(changes) == len(sql) - 1


def test_converged_server_needs_nothing() -> None:
    facts = {
        "role": True,
        "password_current": True,
        "database": {"encoding": "UTF8", "collate": "C", "ctype": "C", "owner": "synapse"},
        "settings": [f"{k}={v}" for k, v in ROLE_SETTINGS.items()],
        "monitor": True,
    }
    assert statements(facts, "synapse", "synapse", "v") == ([], [])


def test_wrong_collation_is_refused_not_recreated() -> None:
    facts = {
        **FRESH,
        "role": True,
        "password_current": True,
        "database": {"encoding": "UTF8", "collate": "en_US.UTF-8", "ctype": "en_US.UTF-8", "owner": "x"},
    }
    try:
        statements(facts, "synapse", "synapse", "v")
    except Exception as exc:
        assert "needs UTF8 with C collation" in str(exc)
    else:
        raise AssertionError("a database with the wrong collation must be refused")


def test_patroni_refuses_a_host_of_another_cluster(lab_settings: Settings) -> None:
    """A host whose patroni.yml names another scope is another site's database: nothing is changed on it."""
    facts = HostFacts(commands={"patroni version": "4.1.5\n", "scope": "scope: matrix-elsewhere\n", "memory": "512\n"})
    context = PATRONI.context(lab_settings, "patroni1", facts)
    with pytest.raises(HostError, match="already belongs to the Patroni cluster 'matrix-elsewhere'"):
        PATRONI.decide(context, facts)


def test_a_new_patroni_on_a_running_member_is_reported_as_a_pending_restart(lab_settings: Settings) -> None:
    facts = HostFacts(
        packages=dict.fromkeys(PATRONI.package_names(lab_settings), True),
        units={"patroni.service": ServiceFact("loaded", "active", "enabled")},
        commands={"patroni version": "4.1.4\n", "scope": "scope: matrix-lab\n", "memory": "512\n"},
    )
    context = PATRONI.context(lab_settings, "patroni1", facts)
    message, notice = pending_restart(context, PATRONI.decide(context, facts))
    assert message.startswith("patroni 4.1.5; patroni.service runs the old binary")
    assert notice == "patroni.service: restart pending (new binary or unit)"
    assert pending_restart(context, PATRONI.decide(context, None)) == ("patroni 4.1.5", "")  # plan: nothing read


def test_the_read_compares_a_digest_of_the_verifier_and_never_carries_a_secret(lab_settings: Settings) -> None:
    host = lab_settings.hosts["patroni1"]
    read = SYNAPSE_DATABASE.reading(lab_settings, host).script
    verifier = synapse_verifier(lab_settings)
    assert digest(verifier) in read
    assert verifier not in read and lab_settings.secrets["synapse_db_password"] not in read


def test_the_sql_reaches_psql_on_stdin(lab_settings: Settings) -> None:
    fresh = {**FRESH, "primary": True}
    facts = HostFacts(commands={"database": json.dumps(fresh)})
    [command] = SYNAPSE_DATABASE.decide(SYNAPSE_DATABASE.context(lab_settings, "patroni1", facts), facts)
    assert isinstance(command, Command) and command.script == PSQL
    assert command.stdin and synapse_verifier(lab_settings) in command.stdin  # the password, on stdin only
    assert synapse_verifier(lab_settings) not in repr(command) + str(command)


def test_the_rest_read_says_whether_the_api_serves_the_certificate_on_disk(tmp_path: Path) -> None:
    """REST_GETS, run as on a member against a TLS server: "served" holds for the certificate the server shows and
    not for another (a reload Patroni has yet to apply), nor when nothing answers."""
    ca = InternalCA(tmp_path / "ca", "test")
    shown, other = (ca.server(name, ["127.0.0.1"], 30, 7) for name in ("shown", "other"))
    for certificate in (shown, other):
        (tmp_path / f"{certificate.name}.crt").write_text(certificate.cert_pem)
        (tmp_path / f"{certificate.name}.key").write_text(certificate.key_pem)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "shown.crt", tmp_path / "shown.key")
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def served(certificate: str, port: int) -> bool:
        command = rest_gets_command(f"https://127.0.0.1:{port}", [], str(tmp_path / certificate))
        return json.loads(subprocess.run(command, shell=True, capture_output=True, check=True, text=True).stdout)[
            "served"
        ]

    try:
        assert served("shown.crt", server.server_port)
        assert not served("other.crt", server.server_port)
    finally:
        server.shutdown()
        server.server_close()
    assert not served("shown.crt", server.server_port)
