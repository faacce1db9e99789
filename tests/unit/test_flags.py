"""Runbook flags with values no run can use: exit 2 with the flag and the fix, before any host is touched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import InputError
from core.settings import Settings
from runbooks.shell import limit_hosts
from tests.conftest import Site, load_runbook

Deploy = Callable[..., tuple[int, str]]


@pytest.mark.parametrize(
    ("name", "argv", "said"),
    [
        pytest.param("failover_drill", ["--runs", "0"], "--runs 0: give how many times", id="no-runs"),
        pytest.param("failover_drill", ["--runs", "-3"], "--runs -3: give how many times", id="negative-runs"),
        pytest.param(
            "failover_drill",
            ["--variant", "kill"],
            "--variant belongs to patroni, vip, etcd, coturn, redis",
            id="variant",
        ),
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


def test_limit_takes_host_names_group_names_and_globs(lab_settings: Settings, tmp_path: Path) -> None:
    def chosen(*words: str) -> list[str]:
        return limit_hosts(list(words), lab_settings, tmp_path)

    assert chosen("patroni") == ["patroni1", "patroni2", "patroni3"]
    assert chosen("haproxy*") == ["haproxy1", "haproxy2"]
    assert chosen("coturn2", "minio[12]", "backup") == ["minio1", "minio2", "coturn2", "backup1"]  # inventory order
    with pytest.raises(InputError) as refused:
        chosen("patroni", "nosuch*")
    assert "nosuch*: not a host, group or pattern of the inventory" in str(refused.value)


def test_a_limit_by_group_runs_on_that_group(deploy: Deploy, site: Site) -> None:
    code, out = deploy(*site.args("--plan", "--limit", "haproxy", "--step", "hosts-file"))
    assert code == 0, out
    assert "(2 hosts: all hosts)" in out and "haproxy1" in out and "patroni1" not in out
