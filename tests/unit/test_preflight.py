"""Preflight: the fact script's output and the decision on each kind of unfit host."""

from __future__ import annotations

import subprocess

from core.ports import PortUse
from tasks.preflight import FACTS_SCRIPT, HostFacts, parse_facts, problems

SAMPLE = """hostname=patroni1
os=debian 12
time=1700000000.5
ntp=yes
disk_free_kb=52428800
listen=tcp 0.0.0.0:22 users:(("sshd",pid=1,fd=3))
listen=tcp 0.0.0.0:5432 users:(("nginx",pid=9,fd=3))
listen=udp 0.0.0.0:49160 users:(("turnserver",pid=5,fd=7))
"""

PORTS = [
    PortUse("ssh", 22, 22, "tcp", ("sshd",), "inventory port"),
    PortUse("postgresql", 5432, 5432, "tcp", ("postgres",), "fixed"),
    PortUse("turn-relay", 49152, 49172, "udp", ("turnserver",), "config.yaml turn"),
]


def test_parse_sample() -> None:
    facts = parse_facts(SAMPLE)
    assert facts.hostname == "patroni1" and facts.os == ("debian", "12")
    assert round(facts.disk_free_gb) == 50
    assert ("tcp", 5432, ("nginx",)) in facts.listening


def test_foreign_process_on_a_needed_port_is_reported() -> None:
    found = problems(parse_facts(SAMPLE), ports=PORTS, skew=0.1, min_free_gb=5, max_skew=2)
    assert found == [
        "port 5432/tcp, needed by postgresql, is held by nginx: stop that service or move postgresql (fixed)"
    ]


def test_os_skew_and_disk() -> None:
    facts = HostFacts(os=("centos", "7"), disk_free_gb=1.0)
    found = problems(facts, ports=[], skew=-7.5, min_free_gb=5, max_skew=2)
    assert len(found) == 3
    assert found[0].startswith("OS is 'centos 7'")
    assert "clock differs from the controller's by -7.5 s" in found[1]
    assert "only 1.0 GB free" in found[2]


def test_fact_script_runs_on_this_debian_machine() -> None:
    out = subprocess.run(["bash", "-c", FACTS_SCRIPT], capture_output=True, text=True, timeout=30)
    facts = parse_facts(out.stdout)
    assert out.returncode == 0
    assert facts.os[0] in ("debian", "ubuntu") and facts.hostname and facts.time > 1.6e9
    assert facts.disk_free_gb > 0
