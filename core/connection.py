"""Nornir connection plugin around a paramiko SSH client: real exit codes, sudo, stdin, SFTP.

Commands go through a host's root shell (`core.root_shell`), started once through
`sudo -n`, not a channel and a sudo each; steps that run at the same time on one host
(the deploy's graph) share it.

Why not netmiko's `linux` driver: netmiko screen-scrapes an interactive shell and has no
exit status; provisioning needs both the status and clean stdout/stderr. It is registered
as `fabric`, the name inventories give its options (`connection_options: fabric:`), from
when it wrapped Fabric's Connection; paramiko alone does what that did (core.ssh_library
says why it is imported without Invoke).
Host keys are verified against a known_hosts file (RejectPolicy): an unknown or changed
key stops the connection instead of being accepted silently.

Every command the plugin runs is appended to `log`, so runbooks can report what ran
where and benchmarks can count remote commands per host.
"""

from __future__ import annotations

import functools
import secrets
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nornir.core.configuration import Config

from core.errors import HostError, HostLost
from core.root_shell import RootShell
from core.ssh_library import paramiko

CONNECTION = "fabric"
READ_SECONDS = 120  # the deadline of a command that only reads, unless it sets its own
RUN_READS = "run_reads"  # the run's RunReads, in the options every host's connection shares


@dataclass
class RunReads:
    """What each step of a run reads first on a host, read for all of them at once (`tasks.facts`).

    A re-run that changes nothing was mostly read-aheads: one command per step per host, each
    a round trip to a host busy with everyone else's, one step after another. The first step
    to read on a host reads what every step of the run will read there in one command (each
    package, file, unit, user and command once); a step takes its own facts from it while no
    host has run a command that may change anything.
    After such a command every step reads for itself again: what was read before it may be stale.
    """

    # What the run's steps read first on a host (`tasks.facts.Reading`, which core does not import), by host name.
    readings: Callable[[str], list[Any]]
    changed: bool = False  # a command that may change a host has run, on any host


# The runbook step the current thread works for: the runner names it as a host's task
# starts (`runbooks.shell`), so each command is recorded with its step even when
# several steps run at once.
current = threading.local()


def current_step() -> str:
    return getattr(current, "step", "")


@dataclass(frozen=True)
class Output:
    """What a remote command returned."""

    exit_code: int
    stdout: str
    stderr: str
    seconds: float


@dataclass(frozen=True)
class CommandRecord:
    """One remote command, as the run report lists it (never with stdin: it may be secret)."""

    user: str
    sudo: bool
    cwd: str
    command: str
    expect: str
    on_failure: str
    exit_code: int
    seconds: float
    step: str = ""  # the runbook step that ran it (benchmarks count commands per step)
    at: float = 0.0  # when it started, in seconds since the epoch


class FabricConnection:
    """`nornir` ConnectionPlugin: `open()` connects, `run()` executes, `close()` disconnects."""

    connection: paramiko.SSHClient  # the name Nornir's Host.get_connection returns it by

    def __init__(self) -> None:
        self.log: list[CommandRecord] = []
        self.username = "root"
        self.command_timeout: int | None = None
        self.address = ""
        self.options: dict[str, Any] = {}
        self.root_shell: RootShell | None = None  # started by the first command
        self.shell_lock = threading.Lock()
        # Facts read ahead by each step (tasks.facts), keyed by step, then "<kind>:<name>";
        # all forgotten by any command not marked `reads_only`, as it may have changed them.
        self.read_ahead: dict[str, dict[str, Any]] = {}
        self.where = ""
        self.opened_at = 0.0  # when the run first reached for the host (seconds since the epoch)
        self.sftp_session: paramiko.SFTPClient | None = None
        self.sftp_lock = threading.Lock()
        self.run_read: tuple[Any, Any] | None = None  # what the run read here at once and what it found (tasks.facts)
        self.run_read_lock = threading.Lock()

    def open(
        self,
        hostname: str | None,
        username: str | None,
        password: str | None,
        port: int | None,
        platform: str | None,
        extras: dict[str, Any] | None = None,
        configuration: Config | None = None,
    ) -> None:
        self.opened_at = time.time()
        extras = extras or {}
        options = configuration.user_defined if configuration else {}
        self.options = options  # the run's settings; `step` names the step running now
        connect_timeout = int(options.get("connect_timeout", 10))
        self.command_timeout = options.get("command_timeout")
        self.address = str(hostname)
        self.username = username or "root"
        key = _local_path(extras.get("key_filename"), options.get("inventory_dir"))
        connect_kwargs: dict[str, Any] = {
            "banner_timeout": connect_timeout,
            "auth_timeout": connect_timeout,
            "allow_agent": False,
        }
        if key:
            connect_kwargs.update(key_filename=key, look_for_keys=False)
        if password:
            connect_kwargs["password"] = password
        client = paramiko.SSHClient()
        known_hosts = _local_path(extras.get("known_hosts"), options.get("inventory_dir"))
        _verify_host_keys(client, known_hosts, str(hostname), port or 22)
        where = f"{self.username}@{hostname}:{port or 22}"
        lost_after = int(options.get("lost_after", 12))
        sock: socket.socket | None = None
        try:
            sock = dial(str(hostname), port or 22, connect_timeout, lost_after)
            client.connect(str(hostname), port or 22, self.username, sock=sock, **connect_kwargs)
            sock = None  # the client's now
        except paramiko.BadHostKeyException:
            raise HostError(
                f"{where}: the host key differs from the one in known_hosts. If the server was "
                "reinstalled, remove its old key (ssh-keygen -R) and add the new one after checking "
                "its fingerprint; otherwise treat this as a possible attack"
            ) from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostError(
                    f"{where}: host key unknown. Check its fingerprint, then add it: "
                    f"ssh-keyscan -p {port or 22} {hostname} >> {known_hosts or '~/.ssh/known_hosts'}"
                ) from None
            if "banner" in str(exc):  # TCP answered, SSH did not within connect_timeout: as good as down
                raise HostLost(
                    f"{where}: no SSH answer ({exc}); check that the host is up and sshd runs", str(hostname)
                ) from None
            raise HostError(f"{where}: SSH failed: {exc}. Check that sshd runs and the key is authorised") from None
        except (TimeoutError, OSError) as exc:
            raise HostLost(
                f"{where}: cannot connect ({exc.strerror or exc}). Check the address in the inventory, "
                "that the host is up and that the network/firewall lets SSH through",
                str(hostname),
            ) from None
        finally:
            if sock is not None:
                sock.close()
        self.connection = client
        self.transport.set_keepalive(5)
        self.where = where

    @property
    def transport(self) -> paramiko.Transport:
        transport = self.connection.get_transport()
        assert transport is not None  # open() connected it
        return transport

    def _put(self, source: Path, path: str) -> None:
        """Copy `source` to `path` over the connection's SFTP session (opened on first use), one
        transfer at a time: steps running at once on the host share the session."""
        with self.sftp_lock:
            if self.sftp_session is None:
                self.sftp_session = self.connection.open_sftp()
            self.sftp_session.put(str(source), path)

    def close(self) -> None:
        if self.root_shell is not None:
            self.root_shell.close()
        self.connection.close()

    @property
    def step(self) -> str:
        return current_step()

    def _shell(self) -> RootShell:
        """The host's root shell: started on first use, and again after one broke."""
        with self.shell_lock:
            if self.root_shell is None or self.root_shell.broken:
                self.root_shell = RootShell(self.transport, self.where, sudo=self.sudo)
            return self.root_shell

    @property
    def sudo(self) -> bool:
        return self.username != "root"

    def run(
        self,
        script: str,
        *,
        stdin: str | None = None,
        cwd: str = "/",
        expect: str = "exit status 0",
        on_failure: str = "",
        timeout: int | None = None,
        reads_only: bool = False,
    ) -> Output:
        """Run `script` with bash as root, in the host's root shell (`core.root_shell`).

        `stdin` carries file contents and secrets, which must never be on the command line.
        A command not marked `reads_only` forgets the facts read ahead, and those read for the whole
        run (`RunReads`) on every host.
        """
        if not reads_only:
            self.read_ahead.clear()
            reads = self.options.get(RUN_READS)
            if isinstance(reads, RunReads):
                reads.changed = True
        started, at = time.monotonic(), time.time()
        try:
            shell = self._shell()
            wrapped = f"export LC_ALL=C; cd {shlex.quote(cwd)} && {script}"
            deadline = timeout or (READ_SECONDS if reads_only else self.command_timeout)
            exit_code, stdout, stderr = shell.run(wrapped, stdin, deadline)
        except HostLost as exc:
            self._record(cwd, script, expect, on_failure, -1, time.monotonic() - started, at)
            first = script.strip().splitlines()[0] if script.strip() else ""
            raise HostLost(
                f"{exc} (step {self.step or '-'}, command: {first[:160]}{' …' if len(first) > 160 else ''})",
                self.address,
            ) from None
        output = Output(exit_code, stdout, stderr, time.monotonic() - started)
        self._record(cwd, script, expect, on_failure, output.exit_code, output.seconds, at)
        return output

    def _record(
        self,
        cwd: str,
        command: str,
        expect: str,
        on_failure: str,
        exit_code: int,
        seconds: float,
        at: float,
        *,
        sudo: bool | None = None,
    ) -> None:
        """Add a command to the host's log, with the step it ran for."""
        sudo = self.sudo if sudo is None else sudo
        record = CommandRecord(self.username, sudo, cwd, command, expect, on_failure, exit_code, seconds, self.step, at)
        self.log.append(record)

    def upload(self, source: Path, path: str, *, owner: str, group: str, mode: int) -> None:
        """Copy a local file over SFTP, then put it in place atomically with owner and mode.

        The upload lands in the login user's own temporary file first (SFTP runs without
        sudo), so only non-secret files (binaries, archives) may come this way.
        """
        staging = f"/tmp/.mha-upload-{secrets.token_hex(16)}"
        started, at = time.monotonic(), time.time()
        try:
            self._put(source, staging)
        except (paramiko.SSHException, OSError) as exc:
            if self.transport.is_active():
                raise
            raise HostLost(
                f"{self.where}: no answer, the connection broke copying {source.name} ({exc})", self.address
            ) from None
        self._record(
            "/", f"sftp put {source} {staging}", "file uploaded", "", 0, time.monotonic() - started, at, sudo=False
        )
        target, tmp = shlex.quote(path), shlex.quote(f"{path}.mha-new")
        script = (
            f"set -e; trap 'rm -f {staging}' EXIT; mkdir -p {shlex.quote(str(Path(path).parent))}; "
            f"install -o {shlex.quote(owner)} -g {shlex.quote(group)} -m {mode:04o} {staging} {tmp}; "
            f"mv -f {tmp} {target}"
        )
        output = self.run(script, expect=f"{path} installed")
        if output.exit_code != 0:
            raise HostError(
                f"{self.address}: installing {path} failed (exit {output.exit_code}): "
                f"{output.stderr.strip()[-300:]}. Check free space and that {owner}:{group} exist"
            )


def dial(address: str, port: int, timeout: float, lost_after: int) -> socket.socket:
    """The TCP connection to a host's sshd, made to answer at once and to notice a dead host.

    Nagle's algorithm off (TCP_NODELAY): during the handshake paramiko writes a message in several
    sends and then waits for the answer, and with Nagle on the last send waited for the host's
    delayed ACK, some 40 ms. Connecting and authenticating one lab host took 65–111 ms with it,
    23–31 ms without (a command, which the root shell sends in one write, ~2 ms either way).

    And the kernel gives up on the connection once the host has answered nothing for `lost_after`
    seconds: a host whose link is cut or that is switched off sends no reset, and without this
    the controller waits for the command's whole deadline (up to `command_timeout`) before it
    knows. TCP_USER_TIMEOUT bounds how long sent data may stay unacknowledged; keep-alive
    probes (every 2 s after 3 s of silence) make sure there is something to acknowledge
    while a long command prints nothing. paramiko then closes the transport, and the
    command waiting on it fails at once.
    """
    sock = socket.create_connection((address, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(1, (lost_after - 3) // 2))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, lost_after * 1000)
    return sock


def _local_path(value: str | None, inventory_dir: str | None) -> str | None:
    """A controller-side path from the inventory: `~` expanded, relative to the inventory folder."""
    if not value:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() or not inventory_dir else Path(inventory_dir) / path)


def _verify_host_keys(client: paramiko.SSHClient, known_hosts: str | None, hostname: str, port: int) -> None:
    """Keys come only from known_hosts files, never accepted on first sight (RejectPolicy).

    The client gets only this host's entries: paramiko would otherwise parse the whole
    file for every connection, taking logging's global lock per line, which made opening
    a hundred connections quadratic in the host count.
    """
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    if not known_hosts:
        return
    path = Path(known_hosts)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise HostError(
            f"{hostname}: known_hosts file {path} does not exist. Create it with the servers' "
            "checked host keys (ssh-keyscan HOST >> FILE), or point extras.known_hosts at yours"
        ) from None
    name = hostname if port == 22 else f"[{hostname}]:{port}"  # as ssh and paramiko write it
    for key_type, key in (_known_hosts(text).lookup(name) or {}).items():
        client.get_host_keys().add(name, key_type, key)


@functools.lru_cache(maxsize=8)
def _known_hosts(text: str) -> paramiko.HostKeys:
    """A known_hosts file's entries, parsed once per content (as `HostKeys.load` would read it)."""
    keys = paramiko.HostKeys()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
        except paramiko.SSHException:
            continue
        for host in entry.hostnames if entry else []:
            keys.add(host, entry.key.get_name(), entry.key)
    return keys
