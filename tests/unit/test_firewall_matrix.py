"""The firewall matrix as data: who may open what, the rules written from it, and the audit's verdicts."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

from core.errors import HostError
from core.settings import Settings
from tasks.files import jinja
from tasks.firewall import ruleset
from tasks.firewall_audit import PROBE, Mismatch, compare, expected, matrix, on_each, reachable_ports, targets


def test_a_private_port_is_open_only_to_the_groups_that_use_it(lab_settings: Settings) -> None:
    hosts = lab_settings.hosts
    assert expected(lab_settings, hosts["haproxy1"], hosts["synapse1"], 8008) == "synapse-client"
    assert expected(lab_settings, hosts["monitoring1"], hosts["synapse1"], 8008) is None  # the admin API too
    assert expected(lab_settings, hosts["monitoring1"], hosts["synapse1"], 9100) == "synapse-metrics"
    assert expected(lab_settings, hosts["synapse1"], hosts["patroni1"], 8008) == "patroni-rest"  # the drills
    assert expected(lab_settings, hosts["coturn1"], hosts["patroni1"], 8008) is None
    assert expected(lab_settings, hosts["coturn1"], hosts["patroni1"], 2379) is None  # etcd: Patroni only
    assert expected(lab_settings, hosts["monitoring1"], hosts["patroni1"], 2379) is None
    assert expected(lab_settings, hosts["monitoring1"], hosts["patroni1"], 2381) == "etcd-metrics"
    assert expected(lab_settings, hosts["patroni2"], hosts["patroni1"], 2380) == "etcd-peer"
    assert expected(lab_settings, hosts["backup1"], hosts["patroni1"], 5432) is None  # pgBackRest has its own port
    assert expected(lab_settings, hosts["patroni1"], hosts["backup1"], 8432) == "pgbackrest-server"
    assert expected(lab_settings, hosts["coturn1"], hosts["backup1"], 22) == "ssh"
    assert expected(lab_settings, hosts["backup1"], hosts["coturn1"], 49160) == "turn-relay"  # public
    assert expected(lab_settings, hosts["haproxy1"], hosts["monitoring1"], 3000) is None  # Grafana: SSH tunnel
    assert expected(lab_settings, hosts["monitoring1"], hosts["coturn1"], 8999) is None  # declared by nobody


def test_the_matrix_lists_every_port_once_per_kind_of_server(lab_settings: Settings) -> None:
    rows = matrix(lab_settings)
    synapse = {row.service: row.open_to for row in rows if row.hosts == "synapse1 [synapse]"}
    assert synapse["ssh"] == "anyone"
    assert synapse["synapse-client"] == "haproxy: haproxy1, haproxy2"
    assert synapse["synapse-replication"] == "this host only"
    minio = {row.service: row.open_to for row in rows if row.hosts.startswith("minio1, minio2")}
    assert minio["minio-api"] == "minio, monitoring: minio1, minio2, minio3, minio4, monitoring1"  # native mode


def rule_opens(rules: str, source: str, port: int) -> bool:
    """Whether a rendered nftables input chain accepts a new TCP connection from `source` to `port`."""
    for line in rules.splitlines():
        found = re.fullmatch(
            r"\s*(?:ip6? saddr \{ (?P<sources>[^}]*) \} )?tcp dport (?P<ports>\{[^}]*\}|\d+) accept", line
        )
        if not found:
            continue
        if found["sources"] and source not in [s.strip() for s in found["sources"].split(",")]:
            continue
        for span in found["ports"].strip("{} ").split(","):
            first, _, last = span.strip().partition("-")
            if int(first) <= port <= int(last or first):
                return True
    return False


def test_the_rules_written_to_each_server_open_exactly_the_matrix(lab_settings: Settings) -> None:
    """Every declared TCP port of every lab host, from every other host: the rules agree with the matrix."""
    checked = 0
    for dest in lab_settings.hosts.values():
        rules = (
            jinja()
            .get_template("firewall/rules.nft.j2")
            .render(host_name=dest.name, **ruleset(lab_settings, dest.name))
        )
        ports = {
            port
            for use in lab_settings.catalog.host_ports(lab_settings.config, dest.groups, dest.port)
            if use.proto == "tcp"
            for port in (use.start, use.end)
        }
        for source in lab_settings.hosts.values():
            if source.name == dest.name:
                continue
            for port in ports | {8999}:
                wanted = expected(lab_settings, source, dest, port) is not None
                assert rule_opens(rules, source.private_ip, port) == wanted, (source.name, dest.name, port)
                checked += 1
    assert checked > 1000


SS = """LISTEN 0 4096 198.18.1.61:8008 0.0.0.0:*
LISTEN 0 4096 127.0.0.1:9093 0.0.0.0:*
LISTEN 0 128 0.0.0.0:22 0.0.0.0:*
LISTEN 0 128 [::]:22 [::]:*
LISTEN 0 4096 127.0.0.53%lo:53 0.0.0.0:*
LISTEN 0 4096 198.18.0.10:443 0.0.0.0:*
LISTEN 0 4096 *:9101 *:*
"""


def test_only_ports_another_host_could_reach_are_probed(lab_settings: Settings) -> None:
    assert reachable_ports(SS, lab_settings.hosts["synapse1"]) == {8008, 22, 9101}  # not loopback, not the VIP


def test_the_audit_names_a_hole_and_a_port_the_matrix_opens_but_the_server_drops(lab_settings: Settings) -> None:
    listening = {"synapse1": {22, 8008}, "haproxy1": {22, 8404}, "monitoring1": {22}}
    haproxy1, monitoring1 = lab_settings.hosts["haproxy1"], lab_settings.hosts["monitoring1"]
    assert [(d.name, p) for d, p in targets(lab_settings, haproxy1, listening)] == [
        ("monitoring1", 22),
        ("synapse1", 22),
        ("synapse1", 8008),
    ]
    answers = {
        "haproxy1": ["open", "open", "timeout"],  # Synapse's listener dropped for HAProxy: broken
        # The stats page as the matrix says; Synapse's 8008 refused by the host, so let in by its firewall: a hole.
        "monitoring1": ["open", "open", "open", "refused"],
        "synapse1": ["open", "timeout", "open"],  # haproxy1's stats dropped for synapse1, as the matrix says
    }
    assert [(d.name, p) for d, p in targets(lab_settings, monitoring1, listening)] == [
        ("haproxy1", 22),
        ("haproxy1", 8404),
        ("synapse1", 22),
        ("synapse1", 8008),
    ]
    probed, opened, mismatches = compare(lab_settings, listening, answers)
    assert probed == 10 and opened == 7
    assert mismatches == [
        Mismatch("haproxy1", "synapse1", 8008, "timeout", "synapse-client"),
        Mismatch("monitoring1", "synapse1", 8008, "refused", None),
    ]
    assert str(mismatches[1]) == "monitoring1 → synapse1:8008: refused, but the matrix closes it (a hole)"


def test_the_probe_tells_an_answering_port_from_a_refusing_one() -> None:
    """The probe's own Python, run for real against loopback."""
    with socket.socket() as listening, socket.socket() as unused:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        unused.bind(("127.0.0.1", 0))  # bound, never listening: the kernel refuses
        targets = [["127.0.0.1", listening.getsockname()[1]], ["127.0.0.1", unused.getsockname()[1]]]
        done = subprocess.run(
            [sys.executable, "-c", PROBE, "2"], input=json.dumps(targets), capture_output=True, text=True, check=True
        )
    assert json.loads(done.stdout) == ["open", "refused"]


def test_a_host_that_cannot_be_read_is_named_not_fatal() -> None:
    def work(name: str) -> int:
        if name == "lost":
            raise HostError("lost (198.18.1.99): no route to host\n  what to do: bring it back")
        if name == "garbled":
            return json.loads("not json")
        return len(name)

    done, failed = on_each(["coturn1", "lost", "garbled"], work)
    assert done == {"coturn1": 7}
    assert failed == [
        "lost: lost (198.18.1.99): no route to host",
        "garbled: Expecting value: line 1 column 1 (char 0)",
    ]
