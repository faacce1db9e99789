"""The lab for tests: brought up once per test session, torn down at its end.

Teardown first adds what an interrupted `up` would leave behind, then runs `down` and
fails the session if anything of the lab is left (namespace, mount, veth, cgroup,
process, overlay), so a leaking teardown cannot go unnoticed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import subprocess
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from nornir.core import Nornir
from nornir.core.task import AggregatedResult

from core.settings import Settings, load_settings
from lab import LAB_CONFIG, LAB_INVENTORY, network, rootfs
from lab.lab import Lab, LabHost, UpReport, lab_hosts
from runbooks.shell import make_nornir
from tasks.registry import CATALOG
from tasks.remote import Mode
from tests.conftest import load_runbook

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.lab


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab_settings() -> Settings:
    settings, _ = load_settings(LAB_CONFIG, LAB_INVENTORY, catalog=CATALOG, allow_placeholders=True)
    return settings


@pytest.fixture(scope="session")
def lab_up(lab_settings: Settings) -> Iterator[tuple[Lab, UpReport]]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    lab = Lab(lab_hosts(lab_settings))
    # Fresh hosts every session: a lab left running by another checkout would hold a
    # cluster initialised with that checkout's secrets.
    lab.down()
    try:
        report = lab.up()
        yield lab, report
    finally:
        # What an interrupted `up` leaves: a namespace with its veth and a mounted overlay, no host.
        network.ensure_host("stray", IPv4Address("198.18.1.250"))
        rootfs.mount_overlay(lab.state / "base", lab.state / "hosts" / "stray")
        lab.down()
        left = lab.leftovers()
        assert not left, f"lab down left: {left}"


@pytest.fixture(scope="session")
def lab(lab_up: tuple[Lab, UpReport]) -> Lab:
    return lab_up[0]


@pytest.fixture
def nornir(lab: Lab, lab_settings: Settings) -> Iterator[Callable[..., Nornir]]:
    """Make Nornir objects over the lab inventory (mode apply by default); closes their connections."""
    made: list[Nornir] = []

    def make(mode: Mode = Mode.APPLY, hosts: tuple[str, ...] = ()) -> Nornir:
        nr = make_nornir(lab_settings, mode)
        if hosts:
            nr = nr.filter(filter_func=lambda h: h.name in hosts)
        made.append(nr)
        return nr

    yield make
    for nr in made:
        nr.close_connections(on_good=True, on_failed=True)


@pytest.fixture
def deploy_lab(lab: Lab, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """Run `python runbooks/deploy.py --lab ARGS` in-process; returns (exit code, output)."""
    module = load_runbook("deploy")

    def run(*argv: str) -> tuple[int, str]:
        code = module.RUNBOOK.main(["--lab", *argv])
        out, err = capsys.readouterr()
        return code, out + err

    return run


FAILED_UNITS = (
    "for unit in $(systemctl list-units --failed --no-legend --plain | awk '{print $1}'); do "
    'echo "== $unit"; journalctl -u "$unit" -n 15 --no-pager -o cat; done'
)


def failed_units(lab: Lab) -> str:
    """Every lab host's failed units with the end of their journal: what a red CI run needs to be read."""
    report = []
    for host in lab.hosts:
        out = ssh(lab, host.name, f"sudo sh -c {shlex.quote(FAILED_UNITS)}", check=False).stdout.strip()
        if out:
            report.append(f"--- {host.name}\n{out}")
    return "\n".join(report) or "no failed units on any lab host"


# Errors every lab host logged lately: each of Synapse's "<logger> - <line> - ERROR - ..." records as its
# first line and the end of its traceback (where the exception is named; a record's lines follow its first
# line in the same process, other processes' lines in between), its database retries ("[TXN OPERROR]": the
# database's own words), and what other daemons logged at priority err or worse (but sshd's complaint, at
# every login, that the lab's hosts have no /etc/default/locale).
SYNAPSE_ERRORS = r"""
function flush(k,  i, m) {
    m = n[k]
    if (m) { print buf[k, 1]; if (m > 4) print "  ..."; for (i = (m > 4 ? m - 2 : 2); i <= m; i++) print buf[k, i] }
    n[k] = 0
}
$0 ~ /: +\^+ *$/ { next }
{ k = $4 " " $5 }
/ - [0-9]+ - (DEBUG|INFO|WARNING|ERROR|CRITICAL) - / {
    flush(k)
    if ($0 ~ / - (ERROR|CRITICAL) - /) { n[k] = 1; buf[k, 1] = $0 }
    else if ($0 ~ /\[TXN (OPERROR|EROLL)\]/) print
    next
}
n[k] { buf[k, ++n[k]] = $0 }
END { for (k in n) flush(k) }
"""
JOURNAL_ERRORS = (
    f"journalctl -q --since=-15min --no-pager -o short-precise | awk {shlex.quote(SYNAPSE_ERRORS)} | tail -n 120; "
    "journalctl -q --since=-15min --no-pager -o short-precise -p err | grep -v pam_env | tail -n 20"
)


def journal_errors(lab: Lab) -> str:
    """What went wrong on the hosts around a failed lab test: an intermittent failure is read from
    this alone, since its lab is gone with the test session."""
    report = []
    for host in lab.hosts:
        try:
            done = ssh(lab, host.name, f"sudo sh -c {shlex.quote(JOURNAL_ERRORS)}", check=False)
        except subprocess.TimeoutExpired:
            report.append(f"--- {host.name}\nno answer within 120 s")
            continue
        out = done.stdout.strip() if done.returncode == 0 else f"unreachable: {done.stderr.strip()[-200:]}"
        if out:
            report.append(f"--- {host.name}\n{out}")
    return "\n".join(report) or "no host logged an error in the last 15 minutes"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed lab test (or its fixture) carries the hosts' recent errors in its report."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    lab = getattr(item, "funcargs", {}).get("lab")
    if report.failed and call.when in ("setup", "call") and isinstance(lab, Lab):
        report.sections.append(("lab hosts: errors logged in the last 15 minutes", journal_errors(lab)))


def step_failures(report: Path) -> str:
    """The failed steps of a runbook's JSON report with each failed host's message: the lines
    a red CI run is read by (the run's own output is cut off above the summary table)."""
    if not report.exists():
        return "the run wrote no report: it stopped before its first step (see its output)"
    lines = []
    for step in json.loads(report.read_text())["steps"]:
        if step["status"] == "failed":
            lines.append(f"step {step['name']} failed: {step['note']}")
            lines += [f"  {name}: {h['message']}" for name, h in step["hosts"].items() if h["status"] == "failed"]
            lines += [f"  {problem}" for problem in step["problems"]]
    return "\n".join(lines)


def deploy_with_report(lab: Lab, report: Path) -> dict:
    """`deploy.py --lab --report REPORT` in-process, which must succeed; the report."""
    code = load_runbook("deploy").RUNBOOK.main(["--lab", "--report", str(report)])
    assert code == 0, f"{step_failures(report)}\n{failed_units(lab)}"
    return json.loads(report.read_text())


# What a deploy makes that a check run must not: the site identity, a package, a venv.
MADE = "ls -d /etc/matrix-platform/site.json /usr/bin/etcd /opt/patroni/venv /opt/synapse 2>/dev/null; true"


@pytest.fixture(scope="session")
def new_servers_check(lab: Lab) -> dict:
    """`deploy.py --lab --check` before the session's first deploy: its exit code, its output and what each
    server had of a deploy's work (MADE) before and after it."""

    def made() -> dict[str, str]:
        return {h.name: ssh(lab, h.name, MADE).stdout for h in lab.hosts}

    before, out = made(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = load_runbook("deploy").RUNBOOK.main(["--lab", "--check"])
    return {"code": code, "out": out.getvalue(), "before": before, "after": made()}


@pytest.fixture(scope="session")
def first_deploy(lab: Lab, new_servers_check: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The report of the session's first deploy through this fixture: the first deploy into the fresh lab
    when no test deployed before it (a no-op re-run otherwise), after a check run on its new servers."""
    return deploy_with_report(lab, tmp_path_factory.mktemp("first-deploy") / "report.json")


@pytest.fixture(scope="module")
def deployed(first_deploy: dict, lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The platform deployed into the lab (a no-op re-run when an earlier module deployed it)."""
    deploy_with_report(lab, tmp_path_factory.mktemp("deploy") / "report.json")


# A certificate and key of a CA that is not the site's, in /tmp of the host (for clients that must be refused).
OTHER_CA = (
    "cd /tmp && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other.key "
    "-out other.crt -subj /CN=patroni2.internal -days 1 -addext extendedKeyUsage=clientAuth,serverAuth 2>/dev/null"
)


def ssh(
    lab: Lab, host: str, command: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command on a lab host with the plain OpenSSH client (independent of our plugin)."""
    target: LabHost = next(h for h in lab.hosts if h.name == host)
    done = subprocess.run([*lab.ssh_args(target), command], capture_output=True, text=True, timeout=120, input=input)
    if check:
        assert done.returncode == 0, f"{host}: {command}: {done.stderr}"
    return done


def only(result: AggregatedResult, host: str):  # type: ignore[no-untyped-def]
    """The top-level Result of `host` in `result`."""
    return result[host][0]


PATRONI_CLUSTER = """import sys, urllib.request
for address in sys.argv[1:]:
    try:
        print(urllib.request.urlopen(f"https://{address}:8008/cluster", timeout=3).read().decode())
        break
    except OSError:
        continue
"""


def patroni_cluster(lab: Lab) -> dict:
    """Patroni's /cluster document (members, roles, states), from the first member that answers."""
    command = f"python3 -c {shlex.quote(PATRONI_CLUSTER)} 198.18.1.11 198.18.1.12 198.18.1.13"
    return json.loads(ssh(lab, "monitoring1", command).stdout)


TLS_CLIENT = """import socket, ssl, sys
address, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context()
context.set_alpn_protocols(["h2", "http/1.1"])
with context.wrap_socket(socket.create_connection((address, port), timeout=5), server_hostname=name) as tls:
    print(tls.version(), tls.selected_alpn_protocol())
    print(ssl.DER_cert_to_PEM_cert(tls.getpeercert(True)))
"""


def tls_handshake(lab: Lab, client: str, address: str, port: int, server_name: str) -> tuple[str, str, str]:
    """A TLS handshake from a lab host, verified against its trust store: (version, ALPN, server certificate)."""
    out = ssh(lab, client, f"python3 - {address} {port} {server_name}", input=TLS_CLIENT).stdout
    first, certificate = out.split("\n", 1)
    version, alpn = first.split()
    return version, alpn, certificate.strip()
