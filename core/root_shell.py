"""One long-lived root shell per host: every command of a run goes through it.

Why: starting each command on its own SSH channel costs, on the host, a session, a login
shell and a `sudo` (PAM, policy, logging) — some 20 ms of CPU each, far more than most of
our fact-reading commands themselves — and on the controller a channel's set-up and
tear-down packets. With a hundred hosts on one controller that overhead decides how
a step scales. So the connection starts, once, a small Python program as root (through
`sudo -n` when the login user is not root) on one channel and sends it framed requests;
it runs each script with `bash -c` in a session of its own and answers with the exit
status and both outputs. stdin (file contents, secrets) travels inside the channel, never
on a command line; the program's own code is the only thing on its command line.

Steps that run at the same time on a host (the deploy's graph) share the one shell: each
request carries a number, the program runs it in a thread of its own and the answer
comes back under that number, whenever it ends. One shell per step instead cost each
host another `sudo` and Python start (some 70 ms of CPU) per step running there at once:
30 of them, 1.3 s of a no-op deploy on the lab's two cores.

Frames, both ways: one ASCII header line of decimal fields, then the raw bytes.
request:  `<number> <script bytes> <stdin bytes> <timeout seconds, 0 = none>\n` script stdin
response: `<number> <exit status> <stdout bytes> <stderr bytes>\n` stdout stderr
"""

from __future__ import annotations

import itertools
import shlex
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as NoAnswer

from core.errors import HostError, HostLost
from core.ssh_library import paramiko

PROGRAM = r"""
import os, signal, subprocess, sys, threading
read, write, answering = sys.stdin.buffer, sys.stdout.buffer, threading.Lock()
def serve(number, script, data, timeout):
    child = subprocess.Popen(["bash", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = child.communicate(data, timeout=float(timeout) or None)
        status = child.returncode if child.returncode >= 0 else 128 - child.returncode
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        status, err = 124, err + b"\n(timed out after " + timeout + b" s)"
    with answering:
        write.write(b"%s %d %d %d\n" % (number, status, len(out), len(err)) + out + err); write.flush()
write.write(b"ready\n"); write.flush()
while True:
    header = read.readline()
    if not header:
        break  # the controller is gone: the commands still running finish, then the program ends
    number, script_size, stdin_size, timeout = header.split()
    script, data = read.read(int(script_size)), read.read(int(stdin_size))
    threading.Thread(target=serve, args=(number, script, data, timeout)).start()
"""

STARTUP_SECONDS = 30  # for `sudo` and python3 to start and say "ready"
SLACK_SECONDS = 30  # beyond a command's own timeout, before the connection is given up as dead
Answer = tuple[int, bytes, bytes]  # exit status, stdout, stderr


class RootShell:
    """The host side's command runner, on one channel of an open SSH transport; thread-safe.

    Commands from several threads run at once; a reader thread hands each answer to the
    command it belongs to. A shell that broke (its stream ended, or a command got no answer
    in time) answers nothing more: every command waiting on it, and any sent later, fails
    as a lost host, and the connection starts a new shell for the next one.
    """

    def __init__(self, transport: paramiko.Transport, where: str, *, sudo: bool) -> None:
        self.where = where
        self.sending = threading.Lock()  # one request's frame at a time on the channel
        self.guard = threading.Lock()  # `waiting` and `broken`
        self.waiting: dict[int, Future[Answer | None]] = {}
        self.numbers = itertools.count(1)
        self.broken = ""  # why the shell broke, once it has
        try:
            self.channel = transport.open_session()
        except (paramiko.SSHException, OSError) as exc:
            raise HostLost(f"{where}: the connection is gone ({exc}); check that the host is up", where) from None
        line = f"python3 -I -S -c {shlex.quote(PROGRAM)}"  # no site, no environment: a faster start
        self.channel.exec_command(f"sudo -n -H -- {line}" if sudo else line)
        self.reader = self.channel.makefile("rb")
        self.channel.settimeout(STARTUP_SECONDS)
        try:
            answer = self.reader.readline()
            while answer not in (b"ready\n", b""):  # what a login script printed first
                answer = self.reader.readline()
        except TimeoutError:
            answer = b""
        if answer != b"ready\n" and not transport.is_active():
            raise HostLost(f"{where}: no answer, the connection broke while starting the root shell", where)
        if answer != b"ready\n":
            said = self.channel.recv_stderr(4096) if self.channel.recv_stderr_ready() else b""
            problem = said.decode(errors="replace").strip() or f"no answer in {STARTUP_SECONDS} s"
            self.channel.close()
            raise HostError(
                f"{where}: cannot start a root shell ({problem}). The login user needs passwordless sudo "
                "(NOPASSWD in /etc/sudoers.d) and the host python3 (apt-get install python3)"
            )
        self.channel.settimeout(None)  # each command has its own deadline (`run`)
        threading.Thread(target=self._read_answers, name=f"root shell {where}", daemon=True).start()

    def run(self, script: str, stdin: str | None, timeout: float | None) -> tuple[int, str, str]:
        """Run `script` with bash as root; returns (exit status, stdout, stderr). Exit 124 on timeout."""
        body, data = script.encode(), (stdin or "").encode()
        started = time.monotonic()
        answer: Future[Answer | None] = Future()
        with self.guard:
            number, sent = next(self.numbers), not self.broken
            if sent:
                self.waiting[number] = answer
        if sent:
            try:
                with self.sending:
                    self.channel.sendall(b"%d %d %d %g\n" % (number, len(body), len(data), timeout or 0) + body + data)
            except OSError as exc:
                self._break(str(exc) or type(exc).__name__)
            try:
                got = answer.result(None if timeout is None else timeout + SLACK_SECONDS)
            except NoAnswer:
                self._break(f"no answer {SLACK_SECONDS} s past the command's own {timeout:g} s deadline")
                got = None
            if got is not None:
                status, out, err = got
                return status, out.decode(errors="replace"), err.decode(errors="replace")
        raise HostLost(
            f"{self.where}: no answer, the connection broke {time.monotonic() - started:.1f} s into a command "
            f"({self.broken}): the host is down, its network is cut, or sshd was stopped",
            self.where,
        )

    def _read_answers(self) -> None:
        """Hand each answer to the command waiting for it, until the stream ends."""
        try:
            while True:
                number, status, out_size, err_size = (int(field) for field in self.reader.readline().split())
                out, err = self.reader.read(out_size), self.reader.read(err_size)
                with self.guard:
                    answer = self.waiting.pop(number, None)  # None: its command already gave up
                if answer is not None:
                    answer.set_result((status, out, err))
        except (OSError, ValueError) as exc:
            self._break("the stream ended" if isinstance(exc, ValueError) else str(exc) or type(exc).__name__)

    def _break(self, why: str) -> None:
        """Give the shell up: its stream may be out of step. Every command waiting fails."""
        with self.guard:
            self.broken = self.broken or why
            waiting, self.waiting = self.waiting, {}
        self.channel.close()
        for answer in waiting.values():
            answer.set_result(None)

    def close(self) -> None:
        self.channel.close()
