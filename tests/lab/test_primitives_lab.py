"""The foundation primitives against real lab hosts, over SSH, through sudo."""

from __future__ import annotations

import os
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nornir.core import Nornir
from nornir.core.task import Result, Task

from core.connection import CONNECTION
from core.errors import HostError
from lab.lab import Lab
from tasks.facts import read_ahead
from tasks.files import ArtifactSpec, FileSpec, put_artifacts, put_files
from tasks.packages import packages
from tasks.remote import Expectation, Mode, known, run
from tasks.systemd import service, service_user, unit_file
from tasks.waits import wait_for_port
from tests.lab.conftest import only, ssh

MakeNornir = Callable[..., Nornir]
TEST_DIR = "/srv/mha-test"


def commands_run(nr: Nornir, host: str) -> int:
    return len(nr.inventory.hosts[host].connections[CONNECTION].log)


@pytest.fixture
def clean_test_dir(lab: Lab) -> None:
    ssh(lab, "patroni1", f"sudo rm -rf {TEST_DIR}")


def test_commands_run_as_root_through_sudo_with_real_exit_codes(nornir: MakeNornir) -> None:
    def probe(task: Task) -> Result:
        whoami = run(task, "id -un").stdout.strip()
        status = run(task, "exit 3", ok_codes=(3,)).exit_code
        return Result(host=task.host, result=(whoami, status))

    nr = nornir(hosts=("patroni1",))
    result = nr.run(task=probe)
    assert not result.failed
    assert only(result, "patroni1").result == ("root", 3)
    record = nr.inventory.hosts["patroni1"].connections[CONNECTION].log[0]
    assert record.user == "deploy" and record.sudo and record.cwd == "/"


def test_stdin_streams_and_timeout_through_the_root_shell(nornir: MakeNornir) -> None:
    """stdin arrives whole (then end of file), stdout and stderr stay apart, a hung command is killed."""
    text = "".join(f"line {n} ünïcode\n" for n in range(20000))  # ~400 kB, more than one read

    def probe(task: Task) -> Result:
        echoed = run(task, "cat; echo done >&2", stdin=text)
        big = run(task, "head -c 3000000 /dev/zero | tr '\\0' x")
        hung = run(task, "sleep 31 & sleep 32", timeout=1, ok_codes=(124,))
        left = run(task, "pgrep -f 'sleep 3[12]'", ok_codes=(0, 1)).stdout
        return Result(host=task.host, result=(echoed, big, hung, left))

    result = nornir(hosts=("patroni1",)).run(task=probe)
    assert not result.failed, result["patroni1"][0].exception
    echoed, big, hung, left = only(result, "patroni1").result
    assert echoed.stdout == text and echoed.stderr == "done\n"
    assert big.stdout == "x" * 3000000
    assert hung.exit_code == 124 and "timed out after 1 s" in hung.stderr and hung.seconds < 5
    assert left == ""  # the command and what it started in the background


def test_commands_from_steps_running_at_once_share_one_root_shell(nornir: MakeNornir) -> None:
    """A quick command is answered while another step's slow one still runs, both through the host's one shell."""

    def probe(task: Task) -> Result:
        run(task, "true")  # the connection and its shell are open
        answers: dict[str, tuple[float, str]] = {}

        def timed(name: str, script: str) -> None:
            output = run(task, script)
            answers[name] = (time.monotonic(), output.stdout)

        slow = threading.Thread(target=timed, args=("slow", "sleep 1.5; echo slow"))
        slow.start()
        time.sleep(0.2)
        quick_started = time.monotonic()
        timed("quick", f"echo quick; pgrep -fc {shlex.quote('^python3 -I -S -c.*read, write, answering')}")
        slow.join()
        return Result(host=task.host, result=(answers, quick_started))

    result = nornir(hosts=("patroni3",)).run(task=probe)
    assert not result.failed, result["patroni3"][0].exception
    answers, quick_started = only(result, "patroni3").result
    (quick_done, quick), (slow_done, slow) = answers["quick"], answers["slow"]
    assert quick == "quick\n1\n" and slow == "slow\n"  # one root shell program on the host
    assert quick_done - quick_started < 1 and quick_done < slow_done


def test_login_user_without_passwordless_sudo_is_named_with_the_fix(nornir: MakeNornir, lab: Lab) -> None:
    ssh(
        lab,
        "coturn2",
        "sudo useradd --create-home nosudo && sudo install -d -o nosudo -m 700 /home/nosudo/.ssh && "
        "sudo install -o nosudo -m 600 ~/.ssh/authorized_keys /home/nosudo/.ssh/authorized_keys",
    )
    nr = nornir(hosts=("coturn2",))
    try:
        nr.inventory.hosts["coturn2"].username = "nosudo"
        result = nr.run(task=lambda task: run(task, "true"))
        error = str(result["coturn2"][0].exception)
        assert "nosudo@198.18.1.42:22: cannot start a root shell (sudo: a password is required)" in error
        assert "NOPASSWD" in error
    finally:
        nr.close_connections(on_good=True, on_failed=True)
        ssh(lab, "coturn2", "sudo pkill -u nosudo; sudo userdel --force --remove nosudo")


def test_failure_message_names_host_command_status_and_fix(nornir: MakeNornir) -> None:
    def failing(task: Task) -> Result:
        run(task, "echo 'E: disk on fire' >&2; exit 7", what=Expectation("exit status 0", "put the fire out"))
        return Result(host=task.host)

    result = nornir(hosts=("patroni2",)).run(task=failing)
    error = result["patroni2"][0].exception
    assert isinstance(error, HostError)
    text = str(error)
    assert "patroni2 (198.18.1.12): command exited with status 7" in text
    assert "as: deploy via sudo, in: /" in text and "E: disk on fire" in text and "put the fire out" in text


def test_file_is_written_once_then_left_alone(nornir: MakeNornir, lab: Lab, clean_test_dir: None) -> None:
    spec = FileSpec(f"{TEST_DIR}/app.conf", "port = 1\n", mode=0o640)
    nr = nornir(hosts=("patroni1",))
    first = only(nr.run(task=put_files, specs=[spec]), "patroni1")
    assert first.changed and first.result == [spec.path]
    assert "created" in first.diff and "+port = 1" in first.diff
    assert ssh(lab, "patroni1", f"sudo stat -c '%a %U' {spec.path}").stdout.strip() == "640 root"

    before = commands_run(nr, "patroni1")
    again = only(nr.run(task=put_files, specs=[spec]), "patroni1")
    assert not again.changed and again.diff == ""
    assert commands_run(nr, "patroni1") - before == 1  # one fact command, nothing written

    changed = FileSpec(spec.path, "port = 2\n", mode=0o600)
    third = only(nr.run(task=put_files, specs=[changed]), "patroni1")
    assert (
        third.changed and "-port = 1" in third.diff and "+port = 2" in third.diff and "mode 0640 → 0600" in third.diff
    )


def test_read_ahead_answers_the_primitives_until_a_command_changes_the_host(
    nornir: MakeNornir, clean_test_dir: None
) -> None:
    """One command reads a component's state; the primitives then run nothing more unless something changes."""
    spec = FileSpec(f"{TEST_DIR}/ahead.conf", "a = 1\n")

    def converge(task: Task) -> Result:
        ahead = read_ahead(
            task,
            packages=["sudo"],
            files=[spec.path],
            units=["ssh.service"],
            users=["deploy"],
            commands={"who": "id -un"},
        )
        task.run(task=packages, names=["sudo"])
        service_user(task, "deploy")
        written = task.run(task=put_files, specs=[spec])[0].changed
        task.run(task=service, unit="ssh.service")
        return Result(host=task.host, result=(ahead["who"], written, known(task, "unit", ["ssh.service"])))

    nr = nornir(hosts=("patroni2",))
    first = only(nr.run(task=converge), "patroni2")
    log = nr.inventory.hosts["patroni2"].connections[CONNECTION].log
    who, written, unit = first.result
    assert who == "root\n" and written
    # The write made the host forget what it read: the unit's state is read again.
    assert unit is None and [r.command.startswith("systemctl show") for r in log].count(True) == 1

    before = len(log)
    again = only(nr.run(task=converge), "patroni2")
    assert again.result[1] is False and again.result[2] is not None
    assert len(log) - before == 1  # the read-ahead alone


def test_check_mode_reports_without_writing(nornir: MakeNornir, lab: Lab, clean_test_dir: None) -> None:
    spec = FileSpec(f"{TEST_DIR}/check.conf", "a\n")
    result = only(nornir(Mode.CHECK, hosts=("patroni1",)).run(task=put_files, specs=[spec]), "patroni1")
    assert result.changed and "created" in result.diff
    assert ssh(lab, "patroni1", f"test -e {spec.path}", check=False).returncode == 1


def test_secret_file_content_never_in_the_diff(nornir: MakeNornir, clean_test_dir: None) -> None:
    spec = FileSpec(f"{TEST_DIR}/secret.env", "PASSWORD=hunter2-lab\n", mode=0o600, secret=True)
    result = only(nornir(hosts=("patroni1",)).run(task=put_files, specs=[spec]), "patroni1")
    assert result.changed and "hunter2-lab" not in result.diff and "secret content, not shown" in result.diff


UNIT = """[Unit]
Description=matrix-platform test service
[Service]
ExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1 {port}
"""


def test_service_restarts_only_when_its_config_changed(nornir: MakeNornir, lab: Lab) -> None:
    def converge(task: Task, port: int) -> Result:
        changed = task.run(task=unit_file, unit="mha-test.service", content=UNIT.format(port=port))[0].changed
        task.run(task=service, unit="mha-test.service", restart=changed, daemon_reload=changed)
        task.run(task=wait_for_port, port=port, timeout=15)
        return Result(host=task.host)

    nr = nornir(hosts=("coturn1",))
    try:
        first = nr.run(task=converge, port=18081)
        assert not first.failed, first["coturn1"][0].result
        pid = ssh(lab, "coturn1", "systemctl show -p MainPID --value mha-test.service").stdout.strip()
        second = nr.run(task=converge, port=18081)
        assert not second["coturn1"].changed
        assert ssh(lab, "coturn1", "systemctl show -p MainPID --value mha-test.service").stdout.strip() == pid
        third = nr.run(task=converge, port=18082)
        assert third["coturn1"].changed
        assert ssh(lab, "coturn1", "systemctl show -p MainPID --value mha-test.service").stdout.strip() != pid
        stopped = nr.run(task=service, unit="mha-test.service", running=False, enabled=False)
        assert stopped["coturn1"].changed
        assert ssh(lab, "coturn1", "systemctl is-active mha-test.service", check=False).stdout.strip() == "inactive"
    finally:
        ssh(
            lab,
            "coturn1",
            "sudo systemctl disable --now mha-test.service; sudo rm -f "
            "/etc/systemd/system/mha-test.service; sudo systemctl daemon-reload",
            check=False,
        )


def test_wait_for_port_fails_clearly_when_nothing_listens(nornir: MakeNornir) -> None:
    result = nornir(hosts=("coturn2",)).run(task=wait_for_port, port=18999, timeout=2)
    text = str(result["coturn2"][0].exception)
    assert "TCP 127.0.0.1:18999 accepting within 2 s" in text and "status 124" in text


def test_package_installed_through_the_lab_proxy_once(nornir: MakeNornir, lab: Lab) -> None:
    nr = nornir(hosts=("backup1",))
    first = nr.run(task=packages, names=["tree"])
    assert not first.failed, first["backup1"][0].result
    assert only(first, "backup1").changed and only(first, "backup1").result == ["tree"]
    assert ssh(lab, "backup1", "tree --version").returncode == 0
    again = nr.run(task=packages, names=["tree"])
    assert not again["backup1"].changed


def test_unreachable_host_fails_while_the_others_finish(nornir: MakeNornir, tmp_path: Path) -> None:
    nr = nornir(hosts=("monitoring1", "backup1"))
    nr.inventory.hosts["backup1"].hostname = "198.18.1.250"  # no host there
    nr.config.user_defined["connect_timeout"] = 2

    def hello(task: Task) -> Result:
        return Result(host=task.host, result=run(task, "echo hello").stdout.strip())

    result = nr.run(task=hello)
    assert only(result, "monitoring1").result == "hello"
    assert result["backup1"].failed
    assert "198.18.1.250:22: cannot connect" in str(result["backup1"][0].exception)


def test_changed_host_key_is_refused(nornir: MakeNornir, lab: Lab, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    other_key = lab.known_hosts.read_text().splitlines()[1].split()[2]  # patroni2's key
    known.write_text(f"198.18.1.11 ssh-ed25519 {other_key}\n")
    nr = nornir(hosts=("patroni1",))
    nr.inventory.defaults.connection_options[CONNECTION].extras["known_hosts"] = str(known)
    result = nr.run(task=lambda task: Result(host=task.host, result=run(task, "true").stdout))
    assert "host key differs" in str(result["patroni1"][0].exception)


def test_binary_artifact_copied_over_sftp_once(
    nornir: MakeNornir, lab: Lab, tmp_path: Path, clean_test_dir: None
) -> None:
    blob = tmp_path / "tool"
    blob.write_bytes(os.urandom(3 << 20) + b"\0\xff")
    spec = ArtifactSpec(f"{TEST_DIR}/bin/tool", blob, mode=0o750)
    nr = nornir(hosts=("patroni1",))
    first = only(nr.run(task=put_artifacts, specs=[spec]), "patroni1")
    assert first.changed and first.result == [spec.path]
    remote = ssh(lab, "patroni1", f"sudo sha256sum {spec.path}; sudo stat -c %a {spec.path}; ls -A /tmp").stdout.split()
    assert remote[0] == spec.sha256 and remote[2] == "750"
    assert not any(name.startswith(".mha-upload") for name in remote[3:])
    before = commands_run(nr, "patroni1")
    assert not only(nr.run(task=put_artifacts, specs=[spec]), "patroni1").changed
    assert commands_run(nr, "patroni1") - before == 1
