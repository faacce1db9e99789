"""The runbooks' console prints what it is given: an operator's text is never rewritten."""

import io

from runbooks.terminal import terminal


def test_emoji_codes_stay_as_typed() -> None:
    buffer = io.StringIO()
    console = terminal(file=buffer, width=120)
    console.print("warning: turn_password ':smile:' looks like a placeholder :thumbs_up:")
    assert buffer.getvalue() == "warning: turn_password ':smile:' looks like a placeholder :thumbs_up:\n"


def test_long_lines_wrap_rather_than_being_cut() -> None:
    buffer = io.StringIO()
    terminal(file=buffer, width=20).print("x" * 50)
    assert buffer.getvalue().replace("\n", "") == "x" * 50
