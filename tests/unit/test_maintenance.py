"""maintenance.py offline: each command is the deploy's steps it concerns, plus its checks."""

from __future__ import annotations

import pytest
from nornir.core.task import Result, Task

from core.errors import HostError
from core.settings import Settings
from runbooks.shell import RollingRunner, make_nornir
from tasks import hosts_file, reboots, rolling, synapse
from tasks.remote import Mode
from tests.conftest import load_runbook


@pytest.mark.parametrize(
    ("command", "steps"),
    [
        ("workers", ["firewall", "synapse", "synapse-playbook", "haproxy", "monitoring"]),
        ("federation", ["firewall", "synapse", "synapse-playbook", "haproxy", "federation-check"]),
        ("intranet", ["hosts-file", "offline-names", "outside-dependencies", "default-routes"]),
        ("update", ["haproxy", "synapse-stage", "synapse-rolling", "synapse-playbook"]),
        ("rolling-restart", ["rolling-restart"]),
        ("storage", ["volumes", "database-usage", "media-usage"]),
        ("purge-media", ["purge-media"]),
        ("compress-state", ["compress-state"]),
    ],
)
def test_each_command_runs_only_the_steps_it_concerns(command: str, steps: list[str]) -> None:
    chosen, rest = load_runbook("maintenance").runbook([command, "--lab", "--check"])
    assert [s.name for s in chosen.steps] == steps and rest == ["--lab", "--check"]
    deploy = {s.name: s for s in load_runbook("deploy").RUNBOOK.steps}
    assert all(s == deploy[s.name] for s in chosen.steps if s.name in deploy)  # the deploy's own, gates included


@pytest.mark.parametrize("argv", [[], ["upgrade"], ["--lab"]])
def test_an_unknown_command_is_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        load_runbook("maintenance").runbook(argv)
    assert refused.value.code == 2


def test_update_restarts_the_stale_processes_main_first(lab_settings: Settings) -> None:
    pinned = synapse.pinned_venv()
    running = synapse.parse_processes(
        "config sync1\nconfig generic1\n"
        "process synapse-worker@sync1.service /opt/synapse/venvs/1.0.0/bin/python\n"
        f"process synapse-worker@generic1.service {pinned}/bin/python\n"
        "process synapse.service /opt/synapse/venvs/1.0.0/bin/python\n"
    )
    assert running.configs == {"sync1", "generic1"}
    assert running.stale() == ["synapse.service", "synapse-worker@sync1.service"]


def test_each_process_is_drained_where_haproxy_routes_to_it(lab_settings: Settings) -> None:
    main = ["synapse_client/synapse1", "synapse_federation/synapse1", "static_files/synapse1"]
    backup = ["synapse_sync/synapse1", "synapse_workers/synapse1", "synapse_federation_workers/synapse1"]
    assert sorted(rolling.edge_servers(lab_settings, "synapse1")) == sorted(main + backup)
    assert rolling.edge_servers(lab_settings, "sync2") == ["synapse_sync/sync2"]
    assert rolling.edge_servers(lab_settings, "generic1") == [
        "synapse_workers/generic1",
        "synapse_federation_workers/generic1",
    ]
    assert rolling.edge_servers(lab_settings, "event_persister1") == []  # not routed: restarted with its health check


# The columns up to `status` of HAProxy 2.6's `show stat` (the header names them).
SHOW_STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status
synapse_sync,FRONTEND,,,0,3,,,0,0,0,0,0,,,,,OPEN
synapse_sync,sync1,0,0,2,4,,9,0,0,,0,,0,0,0,0,UP
synapse_sync,sync2,0,0,0,4,,9,0,0,,0,,0,0,0,0,DRAIN
synapse_sync,BACKEND,0,0,2,4,,9,0,0,0,0,,0,0,0,0,UP
"""


def test_show_stat_is_read_by_backend_and_server() -> None:
    rows = rolling.server_stats(SHOW_STAT)
    assert list(rows) == ["synapse_sync/sync1", "synapse_sync/sync2"]
    assert rows["synapse_sync/sync1"]["scur"] == "2" and rows["synapse_sync/sync2"]["status"] == "DRAIN"
    assert rolling.server_stats("Unknown command.\n") == {}


def test_rolling_restart_goes_from_the_least_to_the_most_important_host(lab_settings: Settings) -> None:
    order = sorted(lab_settings.hosts, key=lambda name: reboots.reboot_order(name, lab_settings))
    assert order == [
        "monitoring1",
        "backup1",
        "coturn1",
        "coturn2",
        "livekit1",
        "livekit2",
        "minio1",
        "minio2",
        "minio3",
        "minio4",
        "haproxy1",
        "haproxy2",
        "patroni1",
        "patroni2",
        "patroni3",
        "synapse1",
    ]


def test_the_intranet_check_names_what_would_call_out() -> None:
    assert hosts_file.outside_problems("ntp timesyncd\nserver 198.18.0.1\nsynapse trusted_key_servers: []\n") == (
        "time from 198.18.0.1 (timesyncd)",
        [],
    )
    source, problems = hosts_file.outside_problems(
        "ntp timesyncd\nunresolved time.example.net\nsynapse report_stats: true\nsynapse url_preview_enabled: true\n"
    )
    assert source == "time: timesyncd" and len(problems) == 3
    assert problems[0].startswith("timesyncd asks time.example.net for the time, a name /etc/hosts does not")
    assert problems[1:] == [
        "Synapse's report_stats is true: it calls out; set it to false",
        "Synapse's url_preview_enabled is true: it calls out; set it to false",
    ]
    assert hosts_file.outside_problems("") == ("time: no time-sync daemon", [])


def test_a_serial_step_goes_in_its_order_and_stops_at_the_first_failure(lab_settings: Settings) -> None:
    chosen = {"synapse1", "patroni1", "haproxy1", "coturn1"}
    nr = make_nornir(lab_settings, Mode.PLAN).filter(filter_func=lambda host: host.name in chosen)
    seen = []

    def reboot(task: Task) -> Result:
        seen.append(task.host.name)
        if task.host.name == "haproxy1":
            raise HostError("haproxy1: not back")
        return Result(host=task.host)

    runner = RollingRunner(lambda host: reboots.reboot_order(host.name, lab_settings))
    result = nr.with_runner(runner).run(task=reboot)
    assert seen == ["coturn1", "haproxy1"] and list(result) == seen and result.failed  # patroni1, synapse1 untouched
