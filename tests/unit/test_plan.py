"""Plan mode renders every host's files offline and reports them as pending changes."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.conftest import Site

Deploy = Callable[..., tuple[int, str]]


def test_plan_writes_hosts_block_for_every_host(deploy: Deploy, site: Site) -> None:
    report = site.root / "report.json"
    code, out = deploy(*site.args("--plan", "--report", str(report)))
    assert code == 0, out
    plan = site.root / "plan" / "production"
    hosts = sorted(p.name for p in plan.iterdir())
    assert len(hosts) == 19 and "patroni1" in hosts and "backup1" in hosts
    block = (plan / "synapse1" / "etc" / "hosts#hosts").read_text()
    assert "10.0.1.10 chat.z3r0d3v.com" in block
    assert "10.0.2.12 patroni2.internal patroni2" in block
    assert block.startswith("# BEGIN matrix-platform hosts") and block.rstrip().endswith("# END matrix-platform hosts")
    data = json.loads(report.read_text())
    assert data["mode"] == "plan" and data["exit_code"] == 0
    assert [s["name"] for s in data["steps"]] == [
        "preflight",
        "etcd",
        "patroni",
        "patroni-config",
        "pgbouncer",
        "synapse-database",
        "database-access",
        "hosts-file",
    ]
    patroni = (plan / "patroni2" / "etc" / "patroni" / "patroni.yml").read_text()
    assert "synchronous_mode: true" in patroni and "max_connections: 350" in patroni
    assert "<secret:postgres_superuser_password>" in patroni
    pgbouncer = (plan / "haproxy1" / "etc" / "pgbouncer" / "pgbouncer.ini").read_text()
    assert "pool_mode = transaction" in pgbouncer
    assert data["commands"] == {}  # no host was contacted


def test_second_plan_shows_the_difference_to_the_previous_one(deploy: Deploy, site: Site) -> None:
    assert deploy(*site.args("--plan"))[0] == 0
    site.edit("inventory/defaults.yaml", "vip: 10.0.1.10", "vip: 10.0.1.20")
    code, out = deploy(*site.args("--plan"))
    assert code == 0
    assert "-10.0.1.10 chat.z3r0d3v.com" in out and "+10.0.1.20 chat.z3r0d3v.com" in out


def test_help_lists_steps_in_order() -> None:
    from tests.conftest import load_runbook

    text = load_runbook("deploy").RUNBOOK.parser().format_help()
    assert text.index("1. preflight") < text.index("2. etcd") < text.index("8. hosts-file")


def test_step_selection(deploy: Deploy, site: Site) -> None:
    code, out = deploy(*site.args("--plan", "--step", "hosts-file", "--limit", "patroni1,haproxy2"))
    assert code == 0
    assert "preflight" not in out.split("Summary")[0]
    assert sorted(p.name for p in (site.root / "plan" / "production").iterdir()) == ["haproxy2", "patroni1"]
