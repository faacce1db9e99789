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

Frames, both ways: one ASCII header line of decimal fields, then the raw bytes.
request:  `<script bytes> <stdin bytes> <timeout seconds, 0 = none>\n` script stdin
response: `<exit status> <stdout bytes> <stderr bytes>\n` stdout stderr
"""

from __future__ import annotations

import shlex
import threading
import time

from core.errors import HostError, HostLost
from core.ssh_library import paramiko

PROGRAM = r"""
import os, signal, subprocess, sys
read, write = sys.stdin.buffer, sys.stdout.buffer
write.write(b"ready\n"); write.flush()
while True:
    header = read.readline()
    if not header:
        break
    script_size, stdin_size, timeout = header.split()
    script, data = read.read(int(script_size)), read.read(int(stdin_size))
    child = subprocess.Popen(["bash", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = child.communicate(data, timeout=float(timeout) or None)
        status = child.returncode if child.returncode >= 0 else 128 - child.returncode
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        status, err = 124, err + b"\n(timed out after " + timeout + b" s)"
    write.write(b"%d %d %d\n" % (status, len(out), len(err)) + out + err); write.flush()
"""

STARTUP_SECONDS = 30  # for `sudo` and python3 to start and say "ready"
SLACK_SECONDS = 30  # beyond a command's own timeout, before the connection is given up as dead


class RootShell:
    """The host side's command runner, on one channel of an open SSH transport; thread-safe."""

    def __init__(self, transport: paramiko.Transport, where: str, *, sudo: bool) -> None:
        self.where = where
        self.lock = threading.Lock()
        self.broken = False  # a broken shell is replaced, never read again: its stream may be out of step
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

    def run(self, script: str, stdin: str | None, timeout: float | None) -> tuple[int, str, str]:
        """Run `script` with bash as root; returns (exit status, stdout, stderr). Exit 124 on timeout."""
        body, data = script.encode(), (stdin or "").encode()
        started = time.monotonic()
        with self.lock:
            self.channel.settimeout(None if timeout is None else timeout + SLACK_SECONDS)
            try:
                self.channel.sendall(b"%d %d %g\n" % (len(body), len(data), timeout or 0) + body + data)
                header = self.reader.readline()
                status, out_size, err_size = (int(field) for field in header.split())
                out, err = self.reader.read(out_size), self.reader.read(err_size)
            except (OSError, ValueError) as exc:
                self.broken = True
                self.channel.close()
                why = "the stream ended" if isinstance(exc, ValueError) else str(exc) or type(exc).__name__
                raise HostLost(
                    f"{self.where}: no answer, the connection broke {time.monotonic() - started:.1f} s into a command "
                    f"({why}): the host is down, its network is cut, or sshd was stopped",
                    self.where,
                ) from None
        return status, out.decode(errors="replace"), err.decode(errors="replace")

    def close(self) -> None:
        self.channel.close()
