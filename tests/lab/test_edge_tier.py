"""The edge tier in the lab: HAProxy + Keepalived on the VIP, TLS, allowlist, stats, firewall."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.probe import HttpsProbe
from core.settings import Settings
from lab import LAB_CONFIG
from lab.lab import Lab
from tasks.firewall import apply_script, live_digest_script
from tests.conftest import load_runbook
from tests.lab.conftest import REPO, ssh, tls_handshake

VIP = "198.18.0.10"
FQDN = "chat.lab.example"
HAPROXY = ("haproxy1", "haproxy2")
# Runs on a lab host: the status of a request through the VIP, verified against the host's trust store.
FETCH = (
    "python3 - {url} <<'EOF'\n"
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    answer = urllib.request.urlopen(sys.argv[1], timeout=5)\n"
    "    print(answer.status, answer.headers.get('Strict-Transport-Security'))\n"
    "except urllib.error.HTTPError as e:\n"
    "    print(e.code, e.headers.get('Strict-Transport-Security'))\n"
    "EOF"
)


def fetch(lab: Lab, host: str, path: str) -> tuple[int, str]:
    status, hsts = ssh(lab, host, FETCH.format(url=f"https://{FQDN}{path}")).stdout.split(maxsplit=1)
    return int(status), hsts.strip()


def vip_holders(lab: Lab) -> list[str]:
    return [h for h in HAPROXY if f"inet {VIP}/" in ssh(lab, h, "ip -o -4 addr show").stdout]


def vip_holder(lab: Lab) -> str:
    holders = vip_holders(lab)
    assert len(holders) == 1, f"VIP held by {holders}"
    return holders[0]


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_vip_serves_the_site_certificate_over_http2(deployed: None, lab: Lab, lab_settings: Settings) -> None:
    version, alpn, served = tls_handshake(lab, "coturn1", VIP, 443, FQDN)  # verified against coturn1's trust store
    assert alpn == "h2" and version in ("TLSv1.2", "TLSv1.3")
    assert served == (lab_settings.ca.folder / "edge.crt").read_text().strip()
    redirect = ssh(
        lab,
        "coturn1",
        f"python3 -c \"import http.client as h; c=h.HTTPConnection('{VIP}', 80); "
        "c.request('GET', '/x', headers={'Host': 'chat.lab.example'}); r=c.getresponse(); "
        "print(r.status, r.getheader('Location'))\"",
    ).stdout.split()
    assert redirect == ["301", f"https://{FQDN}/x"]


def test_admin_paths_answer_only_the_allowlist(deployed: None, lab: Lab) -> None:
    for path in ("/synapse-admin", "/synapse-admin/index.html", "/_synapse/admin/v1/server_version"):
        assert fetch(lab, "patroni1", path)[0] == 403, path
        # monitoring1 is the lab's admin network: HAProxy passes it on (503 until Synapse runs).
        assert fetch(lab, "monitoring1", path)[0] != 403, path
    status, hsts = fetch(lab, "patroni1", "/_matrix/client/versions")
    assert status != 403 and hsts == "max-age=63072000"
    assert fetch(lab, "patroni1", "/synapse-administrator")[0] != 403  # a prefix match is not the admin UI


def test_stats_answer_on_the_private_address_with_a_password_only(
    deployed: None, lab: Lab, lab_settings: Settings
) -> None:
    password = lab_settings.secrets["haproxy_stats_password"]
    program = (
        "import sys, urllib.request, urllib.error\n"
        "password = sys.stdin.readline().strip()\n"
        "def get(url, auth):\n"
        "    handler = urllib.request.HTTPBasicAuthHandler()\n"
        "    if auth: handler.add_password('haproxy-stats', url, 'stats', password)\n"
        "    try: return str(urllib.request.build_opener(handler).open(url, timeout=3).status)\n"
        "    except urllib.error.HTTPError as e: return str(e.code)\n"
        "    except OSError as e: return 'refused'\n"
        "print(get('http://198.18.1.21:8404/stats', True), get('http://198.18.1.21:8404/stats', False),\n"
        "      get('http://198.18.1.21:8404/metrics', True), get('http://198.18.0.10:8404/stats', True))\n"
    )
    done = ssh(lab, "monitoring1", f'python3 -c "{program}"', input=password + "\n")
    assert done.stdout.split() == ["200", "401", "200", "refused"]


def test_haproxy_stop_moves_the_vip_and_its_return_does_not_move_it_back(
    deployed: None, lab: Lab, lab_settings: Settings
) -> None:
    holder = vip_holder(lab)
    peer = next(h for h in HAPROXY if h != holder)
    with HttpsProbe(VIP, FQDN, lab_settings.ca.cert_path) as probe:
        time.sleep(1)
        try:
            ssh(lab, holder, "sudo systemctl stop haproxy")
            wait_for(lambda: vip_holders(lab) == [peer])
            time.sleep(2)
        finally:
            ssh(lab, holder, "sudo systemctl start haproxy")
        returned = time.monotonic()
        time.sleep(6)  # longer than keepalived's rise + a few adverts: a preempting peer would take it now
    assert vip_holder(lab) == peer  # no flapping back
    gap = probe.longest_gap()
    print(f"VIP failover gap (HAProxy stopped on {holder}): {gap:.2f}s over {len(probe.samples)} requests")
    assert 0 < gap < 10
    assert probe.failures(after=returned) == []


def test_config_change_reloads_without_dropping_a_request(
    deployed: None, lab: Lab, lab_settings: Settings, tmp_path: Path
) -> None:
    """A wider admin allowlist reaches HAProxy by a graceful reload; clients see no error."""
    shutil.copytree(REPO / ".secrets", tmp_path / ".secrets")
    wider = tmp_path / "config.yaml"
    wider.write_text(
        LAB_CONFIG.read_text().replace("    - 198.18.1.71/32", "    - 198.18.1.71/32\n    - 198.18.1.11/32")
    )
    deploy = load_runbook("deploy").RUNBOOK
    workers = {h: worker_pids(lab, h) for h in HAPROXY}
    try:
        with HttpsProbe(VIP, FQDN, lab_settings.ca.cert_path, interval=0.02) as probe:
            assert deploy.main(["--lab", "--config", str(wider), "--step", "haproxy"]) == 0
            time.sleep(1)
        print(f"reload under load: {len(probe.samples)} requests, slowest answer {probe.slowest():.2f}s")
        assert probe.failures() == [] and len(probe.samples) > 20
        assert fetch(lab, "patroni1", "/synapse-admin")[0] != 403
        assert all(worker_pids(lab, h) != workers[h] for h in HAPROXY)  # reloaded, not left alone
    finally:
        assert deploy.main(["--lab", "--step", "haproxy"]) == 0
    assert fetch(lab, "patroni1", "/synapse-admin")[0] == 403


def worker_pids(lab: Lab, host: str) -> str:
    return ssh(lab, host, "pgrep -x haproxy | sort").stdout


def test_no_op_rerun_reloads_nothing(deployed: None, lab: Lab, tmp_path: Path) -> None:
    before = {h: (worker_pids(lab, h), ssh(lab, h, "pgrep -x keepalived").stdout) for h in HAPROXY}
    report = tmp_path / "report.json"
    code = load_runbook("deploy").RUNBOOK.main(
        ["--lab", "--step", "firewall", "--step", "haproxy", "--step", "keepalived", "--report", str(report)]
    )
    assert code == 0
    assert all(s["status"] == "ok" for s in json.loads(report.read_text())["steps"])
    assert {h: (worker_pids(lab, h), ssh(lab, h, "pgrep -x keepalived").stdout) for h in HAPROXY} == before


def reachable(address: str, port: int) -> bool:
    """Whether a new TCP connection from the controller gets through (a dropped SYN times out)."""
    try:
        socket.create_connection((address, port), timeout=2).close()
    except OSError:
        return False
    return True


def test_firewall_drops_what_the_port_table_does_not_name(deployed: None, lab: Lab) -> None:
    ssh(lab, "coturn2", "sudo systemd-run --unit=stray-listener python3 -m http.server 8999")
    try:
        wait_for(lambda: "8999" in ssh(lab, "coturn2", "ss -Hltn 'sport = 8999'").stdout)
        assert not reachable("198.18.1.42", 8999)
        assert reachable("198.18.1.42", 22)
        ssh(lab, "coturn2", "sudo systemctl stop matrix-firewall")
        assert reachable("198.18.1.42", 8999)  # the listener was there: the firewall dropped it
    finally:
        ssh(lab, "coturn2", "sudo systemctl stop stray-listener; sudo systemctl start matrix-firewall")
    assert not reachable("198.18.1.42", 8999)


def test_rules_that_cut_ssh_roll_back_by_themselves(deployed: None, lab: Lab) -> None:
    digest = ssh(lab, "backup1", live_digest_script()).stdout.strip()
    locked = "table inet matrix_platform\ndelete table inet matrix_platform\n" + (
        "table inet matrix_platform {\n  chain input {\n    type filter hook input priority filter; policy drop;\n"
        "    ct state established,related accept\n  }\n}\n"
    )
    apply = "cat > /tmp/locked.nft && sudo bash -c " + shlex.quote(apply_script("/tmp/locked.nft", 8))
    ssh(lab, "backup1", apply, input=locked)
    assert not reachable("198.18.1.81", 22)  # a new login is refused now
    wait_for(lambda: reachable("198.18.1.81", 22), timeout=20)
    assert ssh(lab, "backup1", live_digest_script()).stdout.strip() == digest


def test_keepalived_config_test_accepts_ours_and_refuses_a_broken_file(deployed: None, lab: Lab) -> None:
    """The check every staged keepalived.conf must pass before it replaces the running one."""
    assert ssh(lab, "haproxy1", "sudo keepalived --config-test -f /etc/keepalived/keepalived.conf").returncode == 0
    broken = "vrrp_instance matrix_vip {\n    virtual_router_id 999\n    priority banana\n"
    ssh(lab, "haproxy1", "cat > /tmp/broken-keepalived.conf", input=broken)
    assert (
        ssh(lab, "haproxy1", "sudo keepalived --config-test -f /tmp/broken-keepalived.conf", check=False).returncode
        != 0
    )


ADMIN_API = (
    'python3 -c "import urllib.request; '
    "print(urllib.request.urlopen('http://198.18.1.61:8008/_synapse/admin/v1/server_version', timeout=3).status)\""
)


def test_every_server_reaches_exactly_the_ports_the_matrix_opens_to_it(
    deployed: None, lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """From every lab host to every listening TCP port of every other: 0 holes, 0 ports the matrix opens closed."""
    firewall = load_runbook("firewall")
    assert firewall.COMMANDS.main(["matrix", "--lab"]) == 0
    shown = capsys.readouterr().out
    code = firewall.COMMANDS.main(["audit", "--lab"])
    out = capsys.readouterr().out
    print(shown, out)
    assert code == 0, out
    counts = re.search(
        r"(\d+) connections probed .*: (\d+) let through as the matrix says, (\d+) dropped as it says", out
    )
    assert counts and int(counts[2]) > 100 and int(counts[3]) > 100, out  # both verdicts were exercised
    assert "0 not as it says" in out
    # Synapse's admin API answers HAProxy, which keeps the admin allowlist, and nobody else.
    assert ssh(lab, "haproxy1", ADMIN_API).stdout.strip() == "200"
    refused = ssh(lab, "monitoring1", ADMIN_API, check=False)
    assert refused.returncode != 0 and "timed out" in refused.stderr, refused.stderr


FORGED = """import sys, urllib.request
request = urllib.request.Request(sys.argv[1], headers={"X-Forwarded-For": "198.18.250.250"})
print(urllib.request.urlopen(request, timeout=10).status)
"""


def test_a_forged_x_forwarded_for_reaches_synapse_as_the_real_source(deployed: None, lab: Lab) -> None:
    """Synapse logs, rate-limits and audits the address HAProxy saw, not the one a client claims."""
    marker = f"forged-{time.time_ns()}"
    url = f"https://chat.lab.example/_matrix/client/versions?{marker}"
    assert ssh(lab, "monitoring1", f"python3 -c {shlex.quote(FORGED)} {shlex.quote(url)}").stdout.strip() == "200"
    logged: list[str] = []

    def seen() -> bool:
        logged[:] = [
            line
            for line in ssh(lab, "synapse1", "sudo journalctl --since=-5min -o cat").stdout.splitlines()
            if marker in line
        ]
        return bool(logged)

    wait_for(seen, timeout=20)
    assert len(logged) == 1 and " - 198.18.1.71 - " in logged[0], logged  # monitoring1's address, as HAProxy saw it
    assert "198.18.250.250" not in logged[0]
