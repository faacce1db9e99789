"""The root shell's host program, run here as the host runs it: numbered requests, answered as each ends."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from core.root_shell import PROGRAM


class Program:
    """The host program on pipes, spoken to in its frames."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", PROGRAM], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self.process.stdin and self.process.stdout
        self.send_to, self.read_from = self.process.stdin, self.process.stdout
        assert self.read_from.readline() == b"ready\n"

    def send(self, number: int, script: str, stdin: bytes = b"", timeout: float = 0) -> None:
        body = script.encode()
        self.send_to.write(b"%d %d %d %g\n" % (number, len(body), len(stdin), timeout) + body + stdin)
        self.send_to.flush()

    def answer(self) -> tuple[int, int, bytes, bytes]:
        number, status, out_size, err_size = (int(field) for field in self.read_from.readline().split())
        return number, status, self.read_from.read(out_size), self.read_from.read(err_size)


@pytest.fixture
def program() -> Iterator[Program]:
    running = Program()
    yield running
    running.process.kill()
    running.process.wait()


def test_a_quick_command_is_answered_while_a_slow_one_still_runs(program: Program) -> None:
    started = time.monotonic()
    program.send(1, "sleep 1; echo slow")
    program.send(2, "echo fast; echo on stderr >&2; exit 3")
    assert program.answer() == (2, 3, b"fast\n", b"on stderr\n")
    assert time.monotonic() - started < 0.9  # not queued behind the slow one
    assert program.answer() == (1, 0, b"slow\n", b"")


def test_stdin_reaches_its_own_command_whole(program: Program) -> None:
    text = b"".join(b"line %d\n" % n for n in range(50000))  # more than a pipe buffer
    program.send(7, "wc -l")
    program.send(8, "cat", stdin=text)
    answers = {number: out for number, _, out, _ in (program.answer(), program.answer())}
    assert answers == {7: b"0\n", 8: text}


def test_a_command_past_its_deadline_is_killed_with_what_it_started(program: Program) -> None:
    program.send(3, "sleep 30.17 & sleep 31.17", timeout=0.5)
    number, status, _, err = program.answer()
    assert (number, status) == (3, 124) and b"timed out after 0.5 s" in err
    program.send(4, "pgrep -f 'sleep 3[01][.]17' || echo none")
    assert program.answer()[2] == b"none\n"


def test_the_program_ends_once_the_controller_is_gone_and_its_commands_are_done(program: Program) -> None:
    program.send(5, "sleep 0.3; echo finished")
    program.send_to.close()  # the controller's end of the channel closed
    assert program.answer() == (5, 0, b"finished\n", b"")
    assert program.process.wait(timeout=5) == 0
