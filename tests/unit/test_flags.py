"""Runbook flags with values no run can use: exit 2 with the flag and the fix, before any host is touched."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Site, load_runbook

Deploy = Callable[..., tuple[int, str]]


@pytest.mark.parametrize(
    ("name", "argv", "said"),
    [
        pytest.param("failover_drill", ["--runs", "0"], "--runs 0: give how many times", id="no-runs"),
        pytest.param("failover_drill", ["--runs", "-3"], "--runs -3: give how many times", id="negative-runs"),
        pytest.param("failover_drill", ["--variant", "x"], "a variant belongs to one drill", id="variant-of-all"),
        pytest.param("failover_drill", ["soak", "--minutes", "0"], "--minutes 0: give the soak's length", id="soak"),
        pytest.param("restore_drill", ["--time", "yesterday"], "not an ISO time with a UTC offset", id="restore-time"),
        pytest.param(
            "disaster_recovery", ["--time", "2026-11-28T03:00:00"], "not an ISO time with a UTC offset", id="dr-time"
        ),
    ],
)
def test_a_flag_value_no_run_can_use_exits_2(
    name: str, argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_runbook(name).runbook([*argv, "--plan"])
    assert exit_info.value.code == 2
    assert said in capsys.readouterr().err


def test_a_limit_that_names_no_host_is_refused(deploy: Deploy, site: Site) -> None:
    code, out = deploy(*site.args("--plan", "--limit", " , ,"))
    assert code == 2 and "--limit: ' , ,': names no host" in out and "Traceback" not in out
    assert not (site.root / "plan").exists()
