"""The tables that span components, derived from their declarations: groups, ports, scrape jobs, reboot order."""

from __future__ import annotations

import inspect
import re
import sys
from collections import Counter
from dataclasses import replace
from itertools import combinations

import pytest

from core.settings import Settings
from core.step import Step, urgency
from tasks.component import Component
from tasks.host_packages import on_host
from tasks.reboots import reboot_order
from tasks.registry import DECLARED, GROUPS, STEPS, deployed, in_order, install_order, owned_secrets


def test_every_group_is_declared_once_by_the_component_that_owns_it() -> None:
    owners = Counter(rule.name for component in DECLARED for rule in component.inventory)
    assert [name for name, count in owners.items() if count > 1] == []
    used = {group for component in DECLARED for group in component.groups or ()}
    assert used == set(GROUPS)  # no component runs on a group nobody declared, no group is unused


def test_a_host_listens_on_the_ports_of_the_components_of_its_groups(lab_settings: Settings) -> None:
    catalog, config = lab_settings.catalog, lab_settings.config
    synapse = {use.service for use in catalog.host_ports(config, ("synapse",), 22)}
    assert {"ssh", "node-exporter", "synapse-client", "synapse-redis", "synapse-redis-exporter"} <= synapse
    assert not synapse & {"postgresql", "haproxy-443", "livekit-redis"}
    # The livekit group's components all listen there; the switch in config.yaml takes them away.
    livekit = {use.service for use in catalog.host_ports(config, ("livekit",), 22)}
    assert {"livekit-http", "livekit-media", "livekit-jwt", "livekit-redis", "livekit-sentinel"} <= livekit
    off = config.replace(livekit=config.livekit.replace(enabled=False))
    assert {use.service for use in catalog.host_ports(off, ("livekit",), 22)} == {"ssh", "node-exporter"}
    # The third sentinel beside two livekit hosts: on the monitoring host, only while LiveKit is on.
    assert "livekit-sentinel" in {use.service for use in catalog.host_ports(config, ("monitoring",), 22)}
    assert "livekit-sentinel" not in {use.service for use in catalog.host_ports(off, ("monitoring",), 22)}
    # A group the catalog does not know contributes nothing (validation names it first).
    assert [use.service for use in catalog.host_ports(config, ("custom",), 2222)] == ["ssh", "node-exporter"]


def test_the_rolling_reboot_goes_from_the_least_noticed_hosts_to_the_synapse_host(lab_settings: Settings) -> None:
    order = sorted(lab_settings.hosts, key=lambda name: reboot_order(name, lab_settings))
    first_group = [lab_settings.hosts[name].groups[0] for name in order]
    ranks = ["monitoring", "backup", "coturn", "livekit", "minio", "haproxy", "patroni", "synapse"]
    seen = [group for index, group in enumerate(first_group) if group in ranks and group not in first_group[:index]]
    assert seen == ranks
    assert order[-1] == "synapse1"


def test_every_scrape_job_is_named_once(lab_settings: Settings) -> None:
    names = Counter(job.name for job in lab_settings.catalog.scrape(lab_settings))
    assert [name for name, count in names.items() if count > 1] == []
    assert {"node", "etcd", "patroni", "postgres", "haproxy", "synapse", "synapse-redis", "edge"} <= set(names)


def test_a_secret_has_one_owner() -> None:
    assert len(owned_secrets(DECLARED)) == sum(len(component.secrets) for component in DECLARED)
    first = Component("first", ("coturn",), "", secrets={"shared": lambda: "a"})
    second = Component("second", ("coturn",), "", secrets={"shared": lambda: "b"})
    with pytest.raises(ValueError, match="secret shared is declared by more than one component"):
        owned_secrets((first, second))


def test_no_component_module_looks_at_the_mode() -> None:
    """Plan, check and apply are the executor's business (tasks/executor.py), never a component's."""
    declared = {id(component) for component in DECLARED}
    modules = set()
    for name, module in list(sys.modules.items()):
        if not name.startswith("tasks.") or name == "tasks.registry":
            continue
        source = inspect.getsource(module)
        held = [key for key, value in vars(module).items() if id(value) in declared]
        if any(re.search(rf"^{key} = ", source, re.M) for key in held):  # defined here, not imported
            modules.add(module)
    assert len(modules) >= 15
    looking = [m.__name__ for m in modules if re.search(r"\bmode\(task\)|\bMode\.", inspect.getsource(m))]
    assert looking == []


def before(name: str) -> set[str]:
    """Every step that must have succeeded before `name`, through the declared `after`s."""
    steps = {step.name: step for step in STEPS}
    found: set[str] = set()
    todo = list(steps[name].after)
    while todo:
        if (first := todo.pop()) not in found:
            found.add(first)
            todo.extend(steps[first].after)
    return found


def test_each_deploy_step_comes_after_what_it_uses() -> None:
    """The declared dependencies (issue 25 runs the deploy as their graph) hold what the platform relies on."""
    database = {"etcd", "patroni", "synapse-database", "pgbouncer"}
    edge = {"ca-trust", "hosts-file", "haproxy", "keepalived"}  # Synapse's readiness is asked through the VIP
    assert database | edge | {"minio", "minio-bucket", "firewall"} <= before("synapse")
    assert before("synapse-playbook") == before("synapse")
    assert {"backup-repository", "pgbackrest", "backup-files", "backup-source", "synapse"} <= before("first-backup")
    assert "synapse-database" in before("postgres-exporter")  # its pg_monitor role is made there
    listening = [
        step.name for component in DECLARED for step in STEPS if step.name == component.name and component.ports
    ]
    assert [name for name in listening if name != "firewall" and "firewall" not in before(name)] == []
    # "Every target UP" is asked only once every scraped component has run.
    scraped = {component.name for component in DECLARED if component.scrape} & {step.name for step in STEPS}
    assert scraped - {"monitoring"} <= before("monitoring")
    # Independent tiers stay independent, so the graph can run them side by side.
    assert not {"coturn", "minio", "livekit"} & before("patroni") and "patroni" not in before("coturn")
    # The package transaction before every component; Patroni's rolling restart never under the database's users.
    assert [c.name for c in DECLARED if c.name in before("monitoring") and "packages" not in before(c.name)] == []
    assert "patroni-config" in before("synapse-database") & before("pgbackrest")


@pytest.mark.parametrize("which", ["shipped", "lab"])
def test_steps_that_may_run_at_once_on_a_host_share_no_file_and_no_unit(
    which: str, lab_settings: Settings, shipped_settings: Settings
) -> None:
    """The graph runs steps side by side; two that converge one file or unit on a host would race."""
    settings = lab_settings if which == "lab" else shipped_settings
    steps = {step.name for step in STEPS}
    for host in settings.hosts.values():
        owned = []
        for component in on_host([c for c in DECLARED if c.name in steps], deployed, settings, host):
            reading = component.reading(settings, host)
            blocks = {block.path for part in component.parts_on(settings, host) for block in part.blocks}
            owned.append((component.name, {*reading.files, *blocks}, set(reading.units)))
        for (one, files, units), (other, their_files, their_units) in combinations(owned, 2):
            if one not in before(other) and other not in before(one):
                assert not files & their_files and not units & their_units, (host.name, one, other)


def test_a_step_before_what_it_needs_is_a_declaration_error() -> None:
    def step(name: str, *after: str) -> Step:
        return Step(name, "", lambda task, settings: None, after=after)

    assert [s.name for s in in_order([step("a"), step("b", "a")])] == ["a", "b"]
    with pytest.raises(ValueError, match=r"step b must come after c \(comes later\), x \(no such step\)"):
        in_order([step("a"), step("b", "c", "x"), step("c")])
    with pytest.raises(ValueError, match="step a is per_host: it cannot have a health check across hosts"):
        in_order([replace(step("a"), per_host=True, check=lambda task, settings: None)])


def test_a_steps_urgency_is_its_distance_from_the_longest_chain_and_how_soon_that_chain_needs_it() -> None:
    def step(name: str, *after: str) -> Step:
        return Step(name, "", lambda task, settings: None, after=after)

    #  a → b → c → d   (the longest chain)
    #  a → e → d,  a → f  (beside it)
    graph = [step("a"), step("b", "a"), step("e", "a"), step("c", "b"), step("f", "a"), step("d", "c", "e")]
    assert urgency(graph) == {"a": (0, 0), "b": (0, 1), "c": (0, 2), "d": (0, 3), "e": (1, 1), "f": (2, 1)}


def test_the_hosts_the_longest_chain_needs_install_their_packages_first(lab_settings: Settings) -> None:
    """etcd → Patroni → … → PgBouncer → Synapse: their hosts in that order, before those beside the chain."""
    hosts = sorted(lab_settings.hosts, key=lambda host: install_order(host, lab_settings))
    assert hosts[:6] == ["patroni1", "patroni2", "patroni3", "haproxy1", "haproxy2", "synapse1"]
    # The lab has no MinIO binary: its hosts run only what every server runs, and install last.
    assert hosts[-4:] == ["minio1", "minio2", "minio3", "minio4"]
