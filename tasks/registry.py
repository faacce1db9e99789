"""Every component declared through `tasks.component`: the tables that span components loop over it.

The deploy's steps are `STEPS`, in `DEPLOY`'s order, which must respect every step's
`after` (checked on import; the deploy runs each as soon as those are done); `CATALOG`
gathers what the settings need from the components (the inventory's groups, the ports,
the scrape jobs, the secrets) and is handed to `load_settings`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from core.catalog import Catalog, GroupRule
from core.config import Config
from core.ports import PortUse
from core.settings import Settings
from core.step import Step, urgency
from core.targets import Job
from tasks.backup import BACKUP_REPOSITORY, FIRST_BACKUP, PGBACKREST
from tasks.backup_files import BACKUP_FILES, BACKUP_SOURCE
from tasks.certificates import CA_TRUST
from tasks.component import Component
from tasks.coturn import COTURN, TURN_TLS
from tasks.database import SYNAPSE_DATABASE
from tasks.etcd import ETCD
from tasks.firewall import FIREWALL
from tasks.haproxy import HAPROXY
from tasks.host_packages import package_step
from tasks.hosts_file import HOSTS_FILE
from tasks.keepalived import KEEPALIVED
from tasks.livekit import LIVEKIT, LIVEKIT_JWT, LIVEKIT_REDIS, LIVEKIT_SENTINEL
from tasks.minio import MINIO, MINIO_BUCKET
from tasks.monitoring import GRAFANA, MONITORING, NODE_EXPORTER, POSTGRES_EXPORTER
from tasks.patroni import PATRONI, PATRONI_CONFIG, POSTGRESQL_SERVER
from tasks.pgbouncer import PGBOUNCER
from tasks.playbook import SYNAPSE_PLAYBOOK
from tasks.preflight import PREFLIGHT
from tasks.rolling import SYNAPSE_ROLLING
from tasks.state_compressor import STATE_COMPRESSOR
from tasks.synapse import ADMIN_USER, SYNAPSE, SYNAPSE_REDIS, SYNAPSE_STAGE
from tasks.synapse_pgbouncer import SYNAPSE_PGBOUNCER

# The deploy's components (and steps of their own) after preflight and the package transaction,
# each after what it declares it needs (`after`) and what `deploy_step` adds.
COMPONENT_STEPS: tuple[Component | Step, ...] = (
    FIREWALL,
    CA_TRUST,
    HOSTS_FILE,
    NODE_EXPORTER,
    ETCD,
    PATRONI,
    PATRONI_CONFIG,
    PGBACKREST,
    BACKUP_REPOSITORY,
    SYNAPSE_DATABASE,
    PGBOUNCER,
    POSTGRES_EXPORTER,
    MINIO,
    MINIO_BUCKET,
    HAPROXY,
    KEEPALIVED,
    COTURN,
    TURN_TLS,
    LIVEKIT_REDIS,
    LIVEKIT_SENTINEL,
    LIVEKIT,
    LIVEKIT_JWT,
    SYNAPSE,
    SYNAPSE_PLAYBOOK,
    ADMIN_USER,
    STATE_COMPRESSOR,
    BACKUP_SOURCE,
    BACKUP_FILES,
    FIRST_BACKUP,
    MONITORING,
    GRAFANA,
)
# Declared components with no deploy step of their own: converged inside another's step
# (Synapse's own PgBouncer and replication Redis), or used by other runbooks (the restore drill's server,
# maintenance update's staging of a new Synapse and its rolling restart).
OTHERS = (SYNAPSE_PGBOUNCER, SYNAPSE_REDIS, POSTGRESQL_SERVER, SYNAPSE_STAGE, SYNAPSE_ROLLING)
DEPLOYED: tuple[Component, ...] = tuple(entry for entry in COMPONENT_STEPS if isinstance(entry, Component))
DECLARED: tuple[Component, ...] = (*DEPLOYED, *OTHERS)
COMPONENTS: dict[str, Component] = {component.name: component for component in DECLARED}
GROUPS: dict[str, GroupRule] = {rule.name: rule for component in DECLARED for rule in component.inventory}
# What every server has before any other component: the firewall's rules, trust in the site's
# CA and the platform's names in /etc/hosts (components reach their peers by name, over TLS).
FOUNDATION: tuple[Component, ...] = (FIREWALL, CA_TRUST, HOSTS_FILE)


def switched_on(component: Component, config: Config) -> bool:
    """Whether the settings use the component's groups at all (MinIO and LiveKit can be switched off)."""
    return component.groups is None or any(GROUPS[group].enabled(config) for group in component.groups)


def deployed(component: Component, settings: Settings) -> bool:
    """Whether the deploy converges `component` with these settings at all."""
    return switched_on(component, settings.config) and (component.applies is None or component.applies(settings))


def install_order(host: str, settings: Settings) -> tuple[int, int]:
    """Where `host` comes in the package installs: the hosts of the deploy's longest chain of steps first,
    in the order that chain needs them (the Patroni hosts for etcd before the PgBouncer hosts, then
    Synapse's), then the others, by how far their steps are from that chain.

    Among the steps that run with these settings; a step on every server does not tell them apart.
    """
    running = [step for step in STEPS if step.used(settings) and not step.missing()]
    ranked = urgency(running)
    groups = set(settings.hosts[host].groups)
    return min(
        (ranked[step.name] for step in running if step.groups is not None and groups & set(step.groups)),
        default=(len(running), 0),
    )


PACKAGES = package_step(DEPLOYED, deployed, install_order)
DEPLOY: tuple[Component | Step, ...] = (PREFLIGHT, PACKAGES, *COMPONENT_STEPS)


def deploy_step(entry: Component | Step) -> Step:
    """The step of a deploy entry, after what it declares and what follows from the registry: the package
    transaction after preflight and before everything else; the foundation before every component (the
    firewall before anything that listens: nothing listens before the rules that guard it); every scraped
    component before monitoring (whose check wants every target UP)."""
    step = entry if isinstance(entry, Step) else entry.step()
    derived: list[str] = []
    if entry is PACKAGES:
        derived.append(PREFLIGHT.name)
    elif entry in FOUNDATION:
        derived.append(PACKAGES.name)
    elif entry is not PREFLIGHT:
        derived += [part.name for part in FOUNDATION if part.name not in step.after]
    if entry is MONITORING:
        derived += [other.name for other in DEPLOYED if other.scrape and other is not entry]
    return replace(step, after=(*derived, *step.after)) if derived else step


def in_order(steps: Sequence[Step]) -> tuple[Step, ...]:
    """`steps`, once every name a step is `after` names a step before it and no `per_host` step has a health
    check (a declaration error otherwise)."""
    seen: set[str] = set()
    for step in steps:
        missing = [name for name in step.after if name not in seen]
        if missing:
            known = {other.name for other in steps}
            why = ", ".join(f"{name} ({'comes later' if name in known else 'no such step'})" for name in missing)
            raise ValueError(f"step {step.name} must come after {why}")
        if step.per_host and (step.check or step.gate):  # its dependents would not wait for the check
            raise ValueError(f"step {step.name} is per_host: it cannot have a health check across hosts")
        seen.add(step.name)
    return tuple(steps)


STEPS = in_order([deploy_step(entry) for entry in DEPLOY])


def owned_secrets(components: Sequence[Component]) -> dict[str, Callable[[], str]]:
    """Every secret the components own; a name owned twice is a declaration error."""
    owned: dict[str, Callable[[], str]] = {}
    for component in components:
        for name, make in component.secrets.items():
            if name in owned:
                raise ValueError(f"secret {name} is declared by more than one component (again by {component.name})")
            owned[name] = make
    return owned


def ports(config: Config, groups: Sequence[str]) -> list[PortUse]:
    """What a host in `groups` listens on: the ports of every component it runs."""
    return [
        use
        for component in DECLARED
        if (component.groups is None or set(component.groups) & set(groups)) and switched_on(component, config)
        for use in component.ports_of(config)
    ]


def scrape(settings: Settings) -> list[Job]:
    """Every scrape job of the platform, in the registry's order; a job without targets is left out."""
    jobs = [
        job
        for component in DECLARED
        if component.scrape and switched_on(component, settings.config)
        for job in component.scrape(settings)
    ]
    return [job for job in jobs if job.targets]


CATALOG = Catalog(GROUPS, ports, scrape, owned_secrets(DECLARED))
