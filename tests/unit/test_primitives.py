"""The primitives' decisions: given a fact, which change (if any).

The shell snippets the primitives send to hosts are run here with the local bash, so a
quoting or parsing mistake fails these tests; the lab tests run them over SSH.
"""

from __future__ import annotations

import http.server
import os
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from nornir.core.task import Result, Task

from core.connection import Output
from core.errors import HostError
from core.secrets import Redactor
from core.settings import Settings
from runbooks.display import flatten, host_outcome
from runbooks.shell import make_nornir
from tasks.blocks import markers, with_block
from tasks.files import FileFact, FileSpec, facts_script, file_changes, parse_facts, write_script
from tasks.hosts_file import wrong_resolutions
from tasks.packages import install_script, missing, query_script, venv_version_script
from tasks.remote import Expectation, Mode, failure_message, primitive
from tasks.systemd import ServiceFact, Turns, Wanted, actions, parse_show, parse_show_many, unit_actions
from tasks.waits import command_script, http_script, port_script


def bash(script: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], input=stdin, capture_output=True, text=True, timeout=60)


# files

SPEC = FileSpec("/etc/x.conf", "a=1\n", "root", "root", 0o640)


def test_missing_file_is_created() -> None:
    assert file_changes(FileFact(exists=False), SPEC) == ["created"]


def test_identical_file_needs_nothing() -> None:
    assert file_changes(FileFact(True, "root", "root", 0o640, SPEC.sha256), SPEC) == []


def test_each_difference_is_named() -> None:
    fact = FileFact(True, "postgres", "root", 0o644, "0" * 64)
    assert file_changes(fact, SPEC) == ["content", "owner postgres:root → root:root", "mode 0644 → 0640"]


def test_fact_script_and_write_script_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "sub dir" / "file.conf"
    spec = FileSpec(str(target), "secret=1\nline two\n", "root", "root", 0o600, secret=True)
    facts = parse_facts([spec.path], bash(facts_script([spec.path])).stdout)
    assert facts == {spec.path: FileFact(exists=False)}
    result = bash(write_script(spec), stdin=spec.content)
    assert result.returncode == 0, result.stderr
    assert target.read_text() == spec.content
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not list(target.parent.glob("*.mha-new"))
    fact = parse_facts([spec.path], bash(facts_script([spec.path])).stdout)[spec.path]
    assert file_changes(fact, spec) == []
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o755  # parents are not made private


def test_facts_of_many_files_in_one_command(tmp_path: Path) -> None:
    plain, empty, odd = tmp_path / "a.conf", tmp_path / "empty", tmp_path / "odd \\ name\tx"
    plain.write_text("a=1\n")
    empty.write_text("")
    odd.write_text("odd\n")
    for path, mode_bits in ((plain, 0o644), (empty, 0o600), (odd, 0o4750)):
        os.chmod(path, mode_bits)
    (tmp_path / "link").symlink_to(plain)
    paths = [str(p) for p in (plain, empty, odd, tmp_path / "link", tmp_path / "missing", tmp_path)]
    out = bash(facts_script(paths))
    assert out.returncode == 0, out.stderr
    facts = parse_facts(paths, out.stdout)
    owner = (plain.owner(), plain.group())
    assert facts[str(plain)] == FileFact(True, *owner, 0o644, FileSpec("x", "a=1\n").sha256)
    assert facts[str(empty)] == FileFact(True, *owner, 0o600, FileSpec("x", "").sha256)
    assert facts[str(odd)] == FileFact(True, *owner, 0o4750, FileSpec("x", "odd\n").sha256)
    assert facts[str(tmp_path / "link")] == facts[str(plain)]  # followed, as its content is
    assert facts[str(tmp_path / "missing")] == facts[str(tmp_path)] == FileFact(exists=False)  # a directory too


# marked blocks


def test_block_appended_to_existing_text() -> None:
    begin, end = markers("hosts")
    text = with_block("127.0.0.1 localhost\n", "hosts", "10.0.0.1 a\n")
    assert text == f"127.0.0.1 localhost\n\n{begin}\n10.0.0.1 a\n{end}\n"


def test_block_replaced_in_place_and_idempotent() -> None:
    first = with_block("127.0.0.1 localhost\n", "hosts", "10.0.0.1 a\n") + "::1 ip6-localhost\n"
    second = with_block(first, "hosts", "10.0.0.2 b\n")
    assert "10.0.0.1 a" not in second and "10.0.0.2 b" in second
    assert second.endswith("::1 ip6-localhost\n")  # lines after the block stay where they were
    assert with_block(second, "hosts", "10.0.0.2 b\n") == second


def test_orphan_marker_is_repaired() -> None:
    begin, _ = markers("hosts")
    text = with_block(f"x\n{begin}\n", "hosts", "y\n")
    assert text.count(begin) == 1


# packages


def test_venv_version_read_from_the_completed_dist_info(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    script = venv_version_script(str(venv), "matrix_synapse")
    assert bash(script).stdout == ""  # no venv yet
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to("/usr/bin/python3")
    dist_info = venv / "lib" / "python3.11" / "site-packages" / "matrix_synapse-1.163.2.dist-info"
    dist_info.mkdir(parents=True)
    assert bash(script).stdout == ""  # pip has not finished it (no RECORD yet)
    (dist_info / "RECORD").write_text("")
    assert bash(script).stdout == "1.163.2\n"
    (venv / "bin" / "python").unlink()
    (venv / "bin" / "python").symlink_to(tmp_path / "python3.9-gone")
    assert bash(script).stdout == ""  # the interpreter went away under the venv


def test_dpkg_query_reports_missing_packages() -> None:
    names = ["bash", "no-such-package-mha"]
    assert missing(names, bash(query_script(names)).stdout) == ["no-such-package-mha"]


FAKE_APT = """#!/bin/sh
echo "apt-get $*" >> "$LOG"
case "$*" in *update*) n=$(cat "$LOG.fail" 2>/dev/null || echo 0)
  if [ "$n" -gt 0 ]; then echo $((n - 1)) > "$LOG.fail"; exit 100; fi ;; esac
exit 0
"""


def run_install(tmp_path: Path, failing_updates: int) -> tuple[int, list[str]]:
    """install_script under bash with apt-get and sleep replaced; returns (exit code, the calls made)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("apt-get", FAKE_APT), ("sleep", '#!/bin/sh\necho "sleep $*" >> "$LOG"\n')):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls"
    (tmp_path / "calls.fail").write_text(f"{failing_updates}\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log)}
    script = install_script(["etcd-server"], autostart=True)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env)
    return done.returncode, log.read_text().splitlines()


def test_a_failed_index_download_is_retried_after_a_pause(tmp_path: Path) -> None:
    code, calls = run_install(tmp_path, failing_updates=1)
    update, pause, again, install = calls
    assert code == 0
    # Without --error-on=any apt only warns (exit 0) about an index it could not fetch.
    assert update == again == "apt-get -q -o DPkg::Lock::Timeout=120 update --error-on=any"
    assert pause.startswith("sleep ") and 2 <= int(pause.split()[1]) <= 10
    assert install.endswith("install --no-install-recommends etcd-server")


def test_the_install_is_not_tried_when_every_index_refresh_failed(tmp_path: Path) -> None:
    code, calls = run_install(tmp_path, failing_updates=3)
    assert code == 100
    assert [c.split()[0] for c in calls] == ["apt-get", "sleep", "apt-get", "sleep", "apt-get"]


def test_install_without_autostart_uses_and_removes_policy_rc_d() -> None:
    script = install_script(["etcd-server"], autostart=False)
    assert "exit 101" in script and "rm -f /usr/sbin/policy-rc.d" in script
    assert "--no-install-recommends" in script and "timeout" in script
    assert "policy-rc.d" not in install_script(["etcd-server"], autostart=True)


# systemd

RUNNING = ServiceFact("loaded", "active", "enabled")
STOPPED = ServiceFact("loaded", "inactive", "disabled")


@pytest.mark.parametrize(
    ("fact", "wanted", "verbs"),
    [
        (RUNNING, dict(running=True, enabled=True, restart=False), []),
        (RUNNING, dict(running=True, enabled=True, restart=True), ["restart"]),
        (RUNNING, dict(running=True, enabled=True, restart=True, reload=True), ["reload"]),
        (STOPPED, dict(running=True, enabled=True, restart=True), ["enable", "start"]),
        (RUNNING, dict(running=False, enabled=False, restart=False), ["disable", "stop"]),
        (STOPPED, dict(running=False, enabled=False, restart=True), []),
    ],
)
def test_service_actions(fact: ServiceFact, wanted: dict[str, bool], verbs: list[str]) -> None:
    assert actions(fact, **wanted) == verbs


def test_systemctl_show_parsing() -> None:
    fact = parse_show("LoadState=loaded\nActiveState=active\nUnitFileState=static\n")
    assert fact.active and fact.enabled


def test_systemctl_show_of_several_units_is_keyed_by_unit() -> None:
    out = (
        "Id=synapse.service\nLoadState=loaded\nActiveState=active\nUnitFileState=enabled\n\n"
        "Id=synapse-worker@sync1.service\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n"
    )
    facts = parse_show_many(out)
    assert facts["synapse.service"].active and facts["synapse.service"].enabled
    assert not facts["synapse-worker@sync1.service"].active
    assert actions(facts["synapse-worker@sync1.service"], running=True, enabled=True, restart=False) == [
        "enable",
        "start",
    ]


def test_a_rolling_unit_restarts_in_turns_but_starts_with_its_peers() -> None:
    waves = ({"etcd.service": Wanted(restart=True, rolling=True), "etcd-exporter.service": Wanted(restart=True)},)
    [restart] = unit_actions(waves, {"etcd.service": RUNNING, "etcd-exporter.service": RUNNING})
    assert restart.rolling == ("etcd.service",)
    assert "etcd.service: running → restart (one host at a time)" in restart.lines
    # A stopped member starts at once: a new cluster's members must start together to form it.
    [start] = unit_actions(waves, {"etcd.service": STOPPED, "etcd-exporter.service": RUNNING})
    assert start.rolling == ()
    # A reload keeps the service up: nothing to take turns for.
    [reload] = unit_actions(
        ({"pgbouncer.service": Wanted(restart=True, reload=True, rolling=True)},), {"pgbouncer.service": RUNNING}
    )
    assert str(reload) == "systemctl reload -- pgbouncer.service" and reload.rolling == ()


def test_turns_let_one_host_at_a_time_through() -> None:
    turns, inside, seen = Turns(), [], []
    ready = threading.Barrier(3)

    def host(name: str) -> None:
        ready.wait()
        with turns.take(("etcd", "etcd.service"), name):
            inside.append(name)
            seen.append(len(inside))
            threading.Event().wait(0.02)  # a restart taking its time
            inside.remove(name)

    threads = [threading.Thread(target=host, args=(f"patroni{i}",)) for i in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [1, 1, 1]


def test_after_a_failed_restart_the_hosts_waiting_keep_theirs() -> None:
    turns, restarted = Turns(), []
    turn = ("etcd", "etcd.service")
    with pytest.raises(RuntimeError), turns.take(turn, "patroni1"):
        raise RuntimeError("etcd.service did not come up")
    with pytest.raises(HostError, match="failed on patroni1 first"), turns.take(turn, "patroni2"):
        restarted.append("patroni2")
    with turns.take(("livekit-redis", "redis-server@livekit.service"), "livekit1"):  # another turn goes on
        restarted.append("livekit1")
    assert restarted == ["livekit1"]


# waits


def test_port_wait_succeeds_on_open_port_and_times_out_on_closed() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert bash(port_script(port, "127.0.0.1", 5)).returncode == 0
    assert bash(port_script(port, "127.0.0.1", 1)).returncode == 124


def test_http_wait_wants_the_status() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/"
        assert bash(http_script([url], 200, 5, None)).returncode == 0
        failed = bash(http_script([url, url + "missing"], 200, 1, "chat.example.org"))
        # Only the URL that never answered is named.
        assert failed.returncode == 1 and failed.stderr.strip() == f"{url}missing HTTP 404"
    finally:
        server.shutdown()


def test_command_wait(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    assert bash(command_script(f"test -e {flag}", 1)).returncode == 124
    flag.touch()
    assert bash(command_script(f"test -e {flag}", 1)).returncode == 0


# /etc/hosts verification


def test_wrong_resolutions() -> None:
    out = "10.0.1.10       chat.example.org\n127.0.1.1 patroni1.internal patroni1\n"
    expected = {"chat.example.org": "10.0.1.10", "patroni1.internal": "10.0.2.11", "minio1.internal": "10.0.3.21"}
    assert wrong_resolutions(out, expected) == [
        "patroni1.internal → 127.0.1.1 (expected 10.0.2.11)",
        "minio1.internal → not found (expected 10.0.3.21)",
    ]


# failure messages


def test_failure_message_names_host_command_status_stderr_and_fix() -> None:
    output = Output(100, "", "Reading package lists...\nE: Unable to locate package etcd-srv\n", 1.0)
    text = failure_message(
        "patroni1",
        "10.0.2.11",
        "deploy",
        True,
        "/",
        "apt-get install etcd-srv",
        output,
        Expectation("packages installed", "check the package name"),
    )
    assert "patroni1 (10.0.2.11): command exited with status 100, expected packages installed" in text
    assert "as: deploy via sudo, in: /" in text
    assert "command: apt-get install etcd-srv" in text
    assert "E: Unable to locate package etcd-srv" in text
    assert "what to do: check the package name" in text


@pytest.mark.skipif(os.geteuid() != 0, reason="writes root-owned files")
def test_write_script_sets_owner(tmp_path: Path) -> None:
    spec = FileSpec(str(tmp_path / "f"), "x\n", "nobody", "nogroup", 0o640)
    assert bash(write_script(spec), stdin=spec.content).returncode == 0
    fact = parse_facts([spec.path], bash(facts_script([spec.path])).stdout)[spec.path]
    assert (fact.owner, fact.group, fact.mode) == ("nobody", "nogroup", 0o640)


# reporting: a primitive's change reaches the run whatever its caller does with the Result


@primitive
def _start_unit(task: Task, unit: str) -> Result:
    """A primitive whose fact says the unit was stopped: it reports that it started it."""
    return Result(host=task.host, result=[f"start {unit}"], changed=True, diff=f"{unit}: stopped → start")


@primitive
def _outer(task: Task) -> Result:
    """A primitive built on another: the inner one's Result is its own business."""
    inner = _start_unit(task, "b.service")
    return Result(host=task.host, changed=inner.changed, diff=inner.diff)


def _discarding(task: Task) -> Result:
    _start_unit(task, "a.service")  # the caller drops the Result, as tasks once did
    return Result(host=task.host, changed=False)


@pytest.mark.parametrize("mode_value", [Mode.CHECK, Mode.APPLY])
def test_a_discarded_primitive_result_is_still_reported(lab_settings: Settings, mode_value: Mode) -> None:
    nr = make_nornir(lab_settings, mode_value).filter(filter_func=lambda host: host.name == "coturn1")
    multi = nr.run(task=_discarding)["coturn1"]
    outcome = host_outcome(multi, 0.0, Redactor(None))
    assert outcome.status == "changed" and outcome.diff == "a.service: stopped → start"


def test_primitives_report_once_whether_nested_or_run_as_a_subtask(lab_settings: Settings) -> None:
    nr = make_nornir(lab_settings, Mode.APPLY).filter(filter_func=lambda host: host.name == "coturn1")

    def component(task: Task) -> Result:
        task.run(task=_start_unit, unit="c.service")  # a subtask: Nornir records it, the primitive does not again
        _outer(task)
        return Result(host=task.host)

    multi = nr.run(task=component)["coturn1"]
    assert [r.diff for r in flatten(multi)] == ["", "c.service: stopped → start", "b.service: stopped → start"]


def test_plan_mode_keeps_only_what_the_task_returns(lab_settings: Settings) -> None:
    nr = make_nornir(lab_settings, Mode.PLAN).filter(filter_func=lambda host: host.name == "coturn1")
    multi = nr.run(task=_discarding)["coturn1"]
    assert host_outcome(multi, 0.0, Redactor(None)).status == "ok"
