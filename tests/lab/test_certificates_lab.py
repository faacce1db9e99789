"""certificates.py against the lab: served chains verify from another host, a re-run reloads
nothing, renewing one certificate restarts exactly its consumer, renewing the internal ones
keeps the database path writing, and check fails on a certificate about to expire."""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nornir.core import Nornir

from core.probe import HttpsProbe
from core.settings import Settings
from lab import LAB_CONFIG
from lab.lab import Lab
from tasks import drill_probes
from tests.conftest import REPO, load_runbook
from tests.lab.conftest import ssh

Run = Callable[..., tuple[int, str]]

# From a host that serves none of them: the chain of each endpoint verifies for its name.
VERIFY = r"""
import socket, ssl, sys
for address, port, name in (a.split(",") for a in sys.argv[1:]):
    with socket.create_connection((address, int(port)), timeout=5) as raw:
        with ssl.create_default_context().wrap_socket(raw, server_hostname=name) as tls:
            print(address, port, tls.getpeercert()["serialNumber"])
"""


@pytest.fixture
def certificates(lab: Lab, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `python runbooks/certificates.py [ARGS] --lab` in-process; returns (exit code, output)."""
    module = load_runbook("certificates")

    def run(*argv: str) -> tuple[int, str]:
        chosen, rest = module.runbook([*argv, "--lab"])
        code = chosen.main(rest)
        out, err = capsys.readouterr()
        return code, out + err

    return run


def serials(lab: Lab) -> dict[str, str]:
    targets = ["198.18.0.10,443,chat.lab.example", "198.18.1.41,5349,198.18.1.41", "198.18.1.42,5349,198.18.1.42"]
    out = ssh(lab, "patroni1", f"python3 -c {shlex.quote(VERIFY)} {' '.join(targets)}").stdout
    return {f"{a}:{p}": serial for a, p, serial in (line.split() for line in out.splitlines())}


def pids(lab: Lab) -> dict[str, str]:
    units = {"haproxy1": "haproxy", "haproxy2": "haproxy", "coturn1": "coturn", "coturn2": "coturn"}
    return {h: ssh(lab, h, f"systemctl show -p MainPID --value {u}").stdout.strip() for h, u in units.items()}


def test_distribution_verifies_and_a_rerun_reloads_nothing(deployed: None, lab: Lab, certificates: Run) -> None:
    code, out = certificates()
    assert code == 0, out
    assert "chat.lab.example:443 (VIP)" in out and "coturn2:5349" in out  # the table of served certificates
    before_pids, before_serials = pids(lab), serials(lab)  # verified from patroni1, which serves none of them
    code, out = certificates()
    assert code == 0 and "certificates: no changes" in out, out
    assert pids(lab) == before_pids and serials(lab) == before_serials


def test_renewing_one_certificate_restarts_exactly_its_consumer(deployed: None, lab: Lab, certificates: Run) -> None:
    assert certificates()[0] == 0
    before_pids, before_serials = pids(lab), serials(lab)
    code, out = certificates("renew", "--name", "turn-coturn1")
    assert code == 0, out
    after_pids, after_serials = pids(lab), serials(lab)
    assert after_serials["198.18.1.41:5349"] != before_serials["198.18.1.41:5349"]
    assert {k: v for k, v in after_serials.items() if k != "198.18.1.41:5349"} == {
        k: v for k, v in before_serials.items() if k != "198.18.1.41:5349"
    }
    assert after_pids["coturn1"] != before_pids["coturn1"]
    assert {h: after_pids[h] for h in ("haproxy1", "haproxy2", "coturn2")} == {
        h: before_pids[h] for h in ("haproxy1", "haproxy2", "coturn2")
    }


def test_check_reports_every_endpoint_and_fails_on_an_expiring_certificate(
    deployed: None, lab: Lab, certificates: Run, tmp_path: Path
) -> None:
    code, out = certificates("check")
    assert code == 0, out
    print("\n" + out.split("▶ 1/1 expiry")[1].split("Summary")[0])  # the table, for the record
    for label in ("chat.lab.example:8448 (VIP)", "haproxy2:443", "coturn1:5349"):
        assert label in out
    metric = ssh(lab, "monitoring1", "cat /var/lib/prometheus/node-exporter/certificates.prom").stdout
    assert 'matrix_platform_certificate_verified{endpoint="coturn2:5349"} 1' in metric
    # A site whose CA issues 5-day certificates (same secrets and CA, copied), checked against 14 days.
    shutil.copytree(REPO / ".secrets", tmp_path / ".secrets")
    short = tmp_path / "config.yaml"
    short.write_text(
        LAB_CONFIG.read_text() + "certificates:\n  lifetime_days: 5\n  renew_before_days: 0\n  min_days_left: 14\n"
    )
    try:
        code, out = certificates("renew", "--name", "turn-coturn2", "--config", str(short))
        assert code == 0, out
        code, out = certificates("check", "--config", str(short))
        assert code == 1, out
        assert "coturn2:5349: 5.0 days left" in out or "coturn2:5349: 4.9 days left" in out, out
    finally:
        assert certificates()[0] == 0  # the lab's own certificate back on coturn2
    assert certificates("check")[0] == 0


PATRONI = ("patroni1", "patroni2", "patroni3")
VIP, FQDN = "198.18.0.10", "chat.lab.example"

# The serial each internal TLS endpoint serves, asked from a host its firewall lets in (etcd with a
# member's certificate: it answers no one else; PostgreSQL and PgBouncer after their SSLRequest).
INTERNAL = {
    "patroni1": [f"198.18.1.1{i}:2379 -cert /etc/etcd/tls/member.crt -key /etc/etcd/tls/member.key" for i in (1, 2, 3)],
    "haproxy1": [
        f"198.18.1.1{i}:{port}{tls}" for i in (1, 2, 3) for port, tls in ((5432, " -starttls postgres"), (8008, ""))
    ],
    "synapse1": [f"198.18.1.2{i}:6432 -starttls postgres" for i in (1, 2)],
}
SERIAL = "echo {target} $(openssl s_client -connect {options} </dev/null 2>/dev/null | openssl x509 -noout -serial)"


def internal_serials(lab: Lab) -> dict[str, str]:
    serials = {}
    for host, targets in INTERNAL.items():
        script = "; ".join(SERIAL.format(target=t.split()[0], options=t) for t in targets)
        for line in ssh(lab, host, f"sudo sh -c {shlex.quote(script)}").stdout.splitlines():
            target, _, serial = line.partition(" ")
            serials[target] = serial
    return serials


def database_path_pids(lab: Lab) -> dict[str, str]:
    """etcd, Patroni and PostgreSQL's postmaster on the members, PgBouncer on its hosts."""
    started = "systemctl show -p MainPID --value {units}; head -n1 /var/lib/postgresql/15/main/postmaster.pid"
    pids = {h: ssh(lab, h, f"sudo sh -c {shlex.quote(started.format(units='etcd patroni'))}").stdout for h in PATRONI}
    pids |= {h: ssh(lab, h, "systemctl show -p MainPID --value pgbouncer").stdout for h in ("haproxy1", "haproxy2")}
    return pids


def test_renewing_the_internal_certificates_keeps_the_database_path_writing(
    deployed: None, lab: Lab, lab_settings: Settings, certificates: Run, nornir: Callable[..., Nornir]
) -> None:
    """New certificates for etcd, Patroni/PostgreSQL and PgBouncer while a probe writes through PgBouncer (TLS all
    the way) and Synapse is asked through the VIP: each endpoint serves its new one, no process restarts, no
    write fails or is lost, Synapse answers throughout."""
    before_serials, before_pids = internal_serials(lab), database_path_pids(lab)
    assert all(before_serials.values()), before_serials
    names = [f"{kind}-{host}" for kind in ("etcd", "patroni") for host in PATRONI]
    names += ["pgbouncer-haproxy1", "pgbouncer-haproxy2"]
    probe, run_id = nornir(hosts=("synapse1",)), f"renew-{int(time.time())}"

    def on_probe(step: Callable[..., object], **arguments: object) -> object:
        result = probe.run(task=step, **arguments)["synapse1"]
        assert not result.failed, result[0].exception
        return result[0].result

    on_probe(lambda task: drill_probes.start(task, lab_settings, run_id))
    try:
        with HttpsProbe(VIP, FQDN, lab_settings.ca.cert_path) as synapse:  # Synapse, through the VIP
            time.sleep(3)
            code, out = certificates("renew", *(option for name in names for option in ("--name", name)))
            assert code == 0, out
            time.sleep(2)
        log = on_probe(lambda task: drill_probes.stop(task))
        stored = on_probe(lambda task: drill_probes.stored(task, run_id))
    finally:
        probe.run(task=drill_probes.cleanup)
    assert isinstance(log, drill_probes.WriteLog) and isinstance(stored, set)
    failed = [a.detail for a in log.attempts if not a.ok]
    outage = log.outage()
    gap = outage[1] - outage[0] if outage else float("inf")
    print(
        f"internal certificates renewed under writes: {len(log.acknowledged)} acknowledged, {len(failed)} failed, "
        f"longest gap {gap:.2f}s, lost {len(set(log.acknowledged) - stored)}; Synapse through the VIP: "
        f"{len(synapse.samples)} requests, {len(synapse.failures())} failed, slowest {synapse.slowest():.2f}s"
    )
    assert set(log.acknowledged) <= stored and len(log.acknowledged) > 20
    assert failed == [], failed[:5]
    assert synapse.failures() == [] and len(synapse.samples) > 10
    after = internal_serials(lab)
    assert [t for t in after if after[t] == before_serials[t]] == []  # every endpoint serves its new certificate
    assert database_path_pids(lab) == before_pids  # reloaded, not restarted
