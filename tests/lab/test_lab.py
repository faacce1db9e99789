"""The lab itself: real systemd hosts, isolated, reproducible."""

from __future__ import annotations

from lab.lab import Lab, UpReport
from lab.rootfs import machine_apt_files
from tests.lab.conftest import ssh


def test_every_host_runs_systemd_and_answers_ssh(lab_up: tuple[Lab, UpReport]) -> None:
    lab, report = lab_up
    assert set(report.states) == {h.name for h in lab.hosts}
    assert all(state == "running" for state in report.states.values()), report.states
    for host in ("patroni1", "backup1"):
        assert ssh(lab, host, "ps -p 1 -o comm=").stdout.strip() == "systemd"


def test_hosts_have_their_own_identity(lab: Lab) -> None:
    seen = {}
    for host in lab.hosts[:4]:
        out = ssh(lab, host.name, "hostname; cat /etc/machine-id; ip -4 -o addr show eth0").stdout.split("\n")
        assert out[0] == host.name
        assert f"{host.address}/16" in out[2]
        seen[host.name] = out[1]
    assert len(set(seen.values())) == len(seen)


PROBE = (
    'python3 -c "import socket,sys\n'
    "s=socket.socket(); s.settimeout(3)\n"
    "try:\n    s.connect((sys.argv[1], int(sys.argv[2]))); print('connected')\n"
    'except OSError as e:\n    print(e.errno)" '
)


def connect(lab: Lab, host: str, address: str, port: int) -> str:
    """From `host`, try a TCP connection: 'connected' or the errno."""
    return ssh(lab, host, f"{PROBE} {address} {port}").stdout.strip()


def test_no_route_out_of_the_lab(lab: Lab) -> None:
    assert ssh(lab, "synapse1", "ip route show default").stdout.strip() == ""
    # Outside the lab there is no route: the connection fails locally, no packet leaves.
    assert connect(lab, "synapse1", "192.0.2.1", 80) == "101"  # ENETUNREACH
    # Inside the lab: the package proxy on the bridge answers.
    assert connect(lab, "synapse1", "198.18.0.1", 13142) == "connected"


def test_hosts_fetch_the_machines_apt_sources_through_the_proxy_and_nothing_else(lab: Lab) -> None:
    found = ssh(lab, "coturn2", "find /etc/apt/sources.list /etc/apt/sources.list.d -type f 2>/dev/null", check=False)
    assert set(found.stdout.split()) == {f"/{path}" for path in machine_apt_files() if "/sources.list" in path}
    update = ssh(lab, "coturn2", "sudo timeout 120 apt-get -q update --error-on=any")
    assert not [line for line in update.stderr.splitlines() if line.startswith(("W:", "E:"))], update.stderr
    # What is not under the machine's sources is refused, not fetched.
    fetch_elsewhere = (
        'python3 -c "import urllib.request as u; '
        "u.build_opener(u.ProxyHandler({'http': 'http://198.18.0.1:13142'})).open('http://example.invalid/')\""
    )
    assert "HTTP Error 403" in ssh(lab, "coturn2", fetch_elsewhere, check=False).stderr


def test_hosts_reach_each_other(lab: Lab) -> None:
    assert connect(lab, "patroni1", "198.18.1.13", 22) == "connected"


def test_hosts_can_hold_a_vip(lab: Lab) -> None:
    """Keepalived needs CAP_NET_ADMIN inside the host to add a VIP (a spare address here, not the deployed VIP)."""
    ssh(lab, "haproxy1", "sudo ip addr add 198.18.0.250/16 dev eth0")
    try:
        assert connect(lab, "haproxy2", "198.18.0.250", 22) == "connected"
    finally:
        ssh(lab, "haproxy1", "sudo ip addr del 198.18.0.250/16 dev eth0")
    assert connect(lab, "haproxy2", "198.18.0.250", 22) != "connected"


def test_up_again_boots_nothing(lab: Lab) -> None:
    report = lab.up()
    assert report.booted == [] and not report.base_built
    assert all(state == "running" for state in report.states.values())


def test_stopping_a_unit_on_one_host_leaves_other_hosts_alone(lab: Lab) -> None:
    """Each host has its own cgroup tree: systemd on one host cannot touch another's units."""
    start = "sudo systemd-run --unit mha-isolation sleep 600"
    ssh(lab, "minio1", start)
    ssh(lab, "minio2", start)
    try:
        ssh(lab, "minio1", "sudo systemctl stop mha-isolation")
        assert ssh(lab, "minio2", "systemctl is-active mha-isolation", check=False).stdout.strip() == "active"
        assert ssh(lab, "minio2", "pgrep -x sleep", check=False).returncode == 0
    finally:
        for host in ("minio1", "minio2"):
            ssh(lab, host, "sudo systemctl stop mha-isolation", check=False)
