"""What the handbook of one deployment says, built from its config, its inventory and the component registry.

Every figure comes from the source the deploy itself uses: the servers and addresses from
the inventory, the ports from the firewall's matrix (tasks/firewall_audit.py), the
secrets from the components' declarations, the sizing from core/sizing.py, and each
procedure from the runbook's own declared commands and steps, so a handbook regenerated
after a change cannot disagree with what the next run does.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
from collections.abc import Sequence
from pathlib import Path

import yaml

from core.secrets import ROTATABLE
from core.settings import HostInfo, Settings
from core.sizing import explain
from core.step import Step
from runbooks import handbook_diagram
from runbooks.commands import Commands as RunbookCommands
from runbooks.commands import Flag
from runbooks.handbook_document import Block, Commands, Picture, Section, Table, Text
from runbooks.shell import Runbook
from tasks.backup import REPO_PATH
from tasks.backup_files import ROOT as BACKUP_ROOT
from tasks.backup_files import layout
from tasks.firewall_audit import matrix
from tasks.haproxy import delegation
from tasks.minio import drives
from tasks.patroni import data_dir
from tasks.playbook import playbook, playbook_vars, vars_path
from tasks.registry import DECLARED, DEPLOYED, deployed

REPO = Path(__file__).resolve().parent.parent
# The runbooks with sub-commands, in the order an operator meets them; deploy.py comes first (one runbook).
RUNBOOK_FILES = (
    "validate",
    "certificates",
    "backup_setup",
    "failover_drill",
    "restore_drill",
    "disaster_recovery",
    "maintenance",
    "rotate_secret",
    "firewall",
)


def servers_of(settings: Settings, groups: Sequence[str] | None) -> list[HostInfo]:
    if groups is None:
        return list(settings.hosts.values())
    return [h for h in settings.hosts.values() if set(h.groups) & set(groups)]


def names(hosts: Sequence[HostInfo]) -> str:
    return ", ".join(h.name for h in hosts) or "none in this inventory"


def overview(settings: Settings) -> Section:
    config = settings.config
    mode = "containers through matrix-docker-ansible-deploy" if config.synapse.mode == "playbook" else "native"
    return Section(
        "The deployment",
        [
            Text(
                f"Matrix server name `{config.domain}` (user IDs end in `:{config.domain}`), served at "
                f"`https://{config.homeserver_fqdn}` on the HAProxy VIP `{settings.vip}`. Synapse runs {mode}, "
                f"sized for {settings.sizing.ccu:,} concurrent users; site `{settings.site}`, "
                f"{len(settings.hosts)} servers."
            ),
            Picture(
                handbook_diagram.svg(settings),
                "architecture.svg",
                "Each group's servers; an arrow for every group the firewall lets connect to another's ports "
                "(dashed: monitoring and backup, which reach nearly every server). Hover an arrow for its ports.",
            ),
        ],
    )


def servers(settings: Settings) -> Section:
    rows = tuple(
        (h.name, ", ".join(h.groups), h.private_ip, settings.service_name(h), f"{h.username}@{h.address}:{h.port}")
        for h in settings.hosts.values()
    )
    return Section(
        "Servers and addresses",
        [
            Text(
                f"The VIP `{settings.vip}` moves between the HAProxy servers (Keepalived). Every server reaches the "
                "others by the service names below, which the deploy writes into each `/etc/hosts`: no DNS server "
                "is needed inside the perimeter."
            ),
            Table(("server", "groups", "private address", "service name", "SSH (user@address:port)"), rows),
        ],
    )


def dns(settings: Settings, where: str) -> Section:
    config = settings.config
    records = [(config.homeserver_fqdn, "A", settings.vip, "clients and other homeservers (443, 8448)")]
    if config.domain != config.homeserver_fqdn:
        records.append((config.domain, "A", settings.vip, "the base domain's /.well-known/matrix/ files"))
    documents = delegation(settings)
    who = "HAProxy answers them itself" if config.synapse.mode == "native" else "the playbook's static-files service"
    return Section(
        "DNS and /.well-known",
        [
            Text(
                "Records to create in your zone (the address is the VIP; publish the public address your "
                "perimeter forwards to it where clients come from outside):"
            ),
            Table(("name", "type", "value", "for"), tuple(records)),
            Text(f"The delegation documents ({who}):"),
            Table(
                ("path", "answer"),
                tuple((f"https://{config.domain}/.well-known/matrix/{kind}", body) for kind, body in documents.items()),
            ),
            Text(
                f"In the intranet phase (`python runbooks/maintenance.py intranet{where}`) both names resolve from "
                "`/etc/hosts` on every server; workstations need the same two records in the internal DNS."
            ),
        ],
    )


def perimeter(settings: Settings) -> Section:
    rows = tuple(
        (row.service, row.port, row.hosts)
        for row in matrix(settings)
        if row.open_to == "anyone" and row.service != "ssh"
    )
    return Section(
        "Perimeter: ports to open",
        [
            Text(
                "Forward these from outside to the servers named (443 and 8448 to the VIP). SSH is open on every "
                "server's own firewall; restrict it at the perimeter to your administrators."
            ),
            Table(("service", "port", "servers"), rows),
        ],
    )


def ports(settings: Settings, where: str) -> Section:
    rows = tuple((row.hosts, row.port, row.service, row.open_to) for row in matrix(settings))
    return Section(
        "Ports and firewall",
        [
            Text(
                "Every port of every server and who may open it. The deploy's firewall step loads exactly this "
                "into each server's nftables table; anything else is dropped. "
                f"`python runbooks/firewall.py audit{where}` probes it from every server."
            ),
            Table(("servers [groups]", "port", "service", "open to"), rows),
        ],
    )


def hardware(settings: Settings, where: str) -> Section:
    config = settings.config
    roles = []
    for group in dict.fromkeys(g for h in settings.hosts.values() for g in h.groups):
        hosts = settings.members(group)
        runs = [c.name for c in DECLARED if c.groups is not None and group in c.groups]
        memory = {h.memory_mb for h in hosts if h.memory_mb}
        sized = f"{', '.join(f'{m} MB' for m in sorted(memory))} (inventory memory_mb)" if memory else "the host's"
        roles.append((group, str(len(hosts)), ", ".join(runs), sized))
    sizing = explain(settings.sizing, set(), config.pgbouncer.max_client_conn)
    return Section(
        "Hardware and sizing",
        [
            Text(
                "What each group runs, and the memory the database and Synapse are tuned for. Preflight refuses a "
                f"server with less than {config.preflight.min_free_disk_gb:g} GB free on `/`."
            ),
            Table(("group", "servers", "runs", "memory tuned for"), tuple(roles)),
            Text(f"The figures the deploy derives (`python runbooks/sizing.py{where}` shows the same table):"),
            Table(("what", "value", "how"), tuple((line.what, line.value, line.formula) for line in sizing)),
        ],
    )


def compression(settings: Settings, where: str) -> str:
    """What keeps the state tables from growing without bound (synapse.state_compression)."""
    compression = settings.config.synapse.state_compression
    if not compression.enabled:
        return "State compression is off (`synapse.state_compression.enabled`): state_groups_state only grows."
    runner = "its own timer" if settings.config.synapse.mode == "native" else "the playbook's compressor role"
    return (
        f"The state compressor rewrites state_groups_state into fewer rows, {compression.chunks_per_run} chunks of "
        f"{compression.chunk_size} state groups a run, on {runner} at `{compression.schedule}`; "
        f"`python runbooks/maintenance.py compress-state{where}` runs one now (native mode)."
    )


def storage(settings: Settings, where: str) -> Section:
    """Where the data that grows lives, and how long Synapse keeps it."""
    retention = settings.config.synapse.retention

    def kept(lifetime: str | None) -> str:
        return "for ever" if lifetime is None else lifetime

    places = [
        ("Synapse's media store", "synapse", layout(settings).media),
        ("the database (PostgreSQL data directory)", "patroni", data_dir(settings)),
        ("database backups (pgBackRest repository)", "backup", REPO_PATH),
        ("media and key backups (snapshots)", "backup", BACKUP_ROOT),
        (
            "metrics (Prometheus)",
            "monitoring",
            f"/var/lib/prometheus ({settings.config.monitoring.retention_days} days)",
        ),
    ]
    if settings.config.minio.enabled:
        places.append(("media objects (MinIO drives)", "minio", ", ".join(drives(settings))))
    return Section(
        "Storage and retention",
        [
            Text(
                f"What grows, and where (`python runbooks/maintenance.py storage{where}` shows each volume's use, "
                "growth and days until full; alerts fire a week and a day before a volume fills):"
            ),
            Table(
                ("data", "servers", "folder"), tuple((what, names(settings.members(g)), at) for what, g, at in places)
            ),
            Text("How long Synapse keeps things (`synapse.retention` in the config):"),
            Table(
                ("what", "kept", "when it goes"),
                (
                    (
                        "other servers' media (cached copies)",
                        kept(retention.remote_media),
                        "deleted once unused that long; fetched again when someone asks",
                    ),
                    (
                        "your users' uploads",
                        kept(retention.local_media),
                        "deleted for good once unused that long (profile pictures kept)",
                    ),
                    (
                        "messages",
                        kept(retention.messages),
                        "purged from every room twice a day; a room may choose less, never more",
                    ),
                    (
                        "rooms every local member forgot",
                        kept(retention.forgotten_rooms),
                        "purged from the database that long after",
                    ),
                ),
            ),
            Text(
                f"Synapse applies the media lifetimes hourly; `python runbooks/maintenance.py purge-media{where}` "
                "applies them now and says how many went."
            ),
            Text(compression(settings, where)),
        ],
    )


def holders(settings: Settings) -> dict[str, dict[str, list[str]]]:
    """Where each secret's value is written on the servers: {secret: {file: [server, …]}}, found by rendering
    every file the deploy writes (as the plan does) and looking for the value itself, so a table built from it
    cannot name a file that does not hold the secret."""
    found: dict[str, dict[str, list[str]]] = {}
    for component in DEPLOYED:
        if not deployed(component, settings):
            continue
        for host in servers_of(settings, component.groups):
            for part in component.parts_on(settings, host):
                context = part.context(settings, host.name, None)
                for file in part.files_on(settings, host):
                    body = file.content(context)
                    for name in settings.catalog.secrets:
                        if settings.secrets[name] in body:
                            found.setdefault(name, {}).setdefault(file.where(settings), []).append(host.name)
    if playbook(settings):  # the playbook puts them into Synapse's containers from the controller's vars.yml
        body = yaml.safe_dump(playbook_vars(settings))
        for name in settings.catalog.secrets:
            if settings.secrets[name] in body:
                found.setdefault(name, {})[str(vars_path(settings))] = ["the controller"]
    return found


def secrets(settings: Settings, where: str) -> Section:
    kept = settings.secrets.path
    shown = kept.relative_to(REPO) if kept.is_relative_to(REPO) else kept
    held, rows = holders(settings), []
    for component in DECLARED:
        for name in component.secrets:
            files = [f"{path} ({', '.join(hosts)})" for path, hosts in sorted(held.get(name, {}).items())]
            rotate = f"`python runbooks/rotate_secret.py {name}{where}`" if name in ROTATABLE else "—"
            rows.append((name, component.name, "; ".join(files) or "no file: used by commands only", rotate))
    return Section(
        "Secrets",
        [
            Text(
                f"Names and places only: the values live in `{shown}` (mode 0600) on the controller, with the site "
                f"CA beside it in `{shown.parent / (settings.site + '-ca')}`. Back both up offline; the servers "
                "refuse a run made with other secrets. The files below hold a value itself (mode 0600 or "
                "readable by its service's account only)."
            ),
            Table(("secret", "declared by", "files holding it (servers)", "rotation"), tuple(rows)),
        ],
    )


def site_flags(lab: bool, config: Path | None, inventory: Path | None) -> str:
    """The options that point a runbook at this deployment's settings, as typed after the command."""
    if lab:
        return " --lab"
    return "".join(f" {option} {path}" for option, path in (("--config", config), ("--inventory", inventory)) if path)


def expected(step: Step) -> str:
    """What a step achieves, and the health check that proves it when it has one."""
    check = inspect.getdoc(step.check) if step.check else ""
    return step.summary + (f"; then: {check.splitlines()[0]}" if check else "")


def steps_table(settings: Settings, steps: Sequence[Step]) -> Table:
    rows = []
    for step in steps:
        where = "skipped with these settings" if not step.used(settings) else names(servers_of(settings, step.groups))
        rows.append((step.name, where, expected(step)))
    return Table(("step", "servers", "does, and checks"), tuple(rows))


IF_IT_FAILS = (
    "If it fails: the output names the server, the command, who ran it and where, what was expected and what to "
    "do (`--report FILE.html` keeps it all). A failed step stops the steps that depend on it; a server that "
    "stops answering drops out and the rest carry on. Fix the cause and run the same command again: steps "
    "that converge (deploy, maintenance, certificates) report no changes where they are done. Exit codes: 0 all "
    "good, 1 a server failed, 2 bad input (nothing touched)."
)


def procedure(
    settings: Settings,
    title: str,
    summary: str,
    lines: tuple[str, ...],
    runbook: Runbook | None,
    flags: Sequence[Flag],
) -> Section:
    blocks: list[Block] = [Text(summary), Commands(lines)]
    if flags:
        blocks.append(Table(("flag", "meaning"), tuple((f.usage, f.options.get("help", "")) for f in flags)))
    if runbook is not None:
        blocks.append(steps_table(settings, runbook.steps))
    return Section(title, blocks)


def defaults(flags: Sequence[Flag]) -> argparse.Namespace:
    """A command's flags at their defaults: the runbook it builds when given none."""
    parser = argparse.ArgumentParser(add_help=False)
    for item in flags:
        item.add_to(parser)
    return parser.parse_args([])


def procedures(settings: Settings, where: str) -> Section:
    from runbooks.deploy import RUNBOOK as DEPLOY

    users = sorted({h.username for h in settings.hosts.values()})
    deploy = f"python runbooks/deploy.py{where}"
    sections = [
        procedure(
            settings,
            "deploy.py",
            "Stand the platform up, or bring it back to the config after a change: first see what would change.",
            (f"{deploy} --plan", f"{deploy} --check", deploy),
            DEPLOY,
            (),
        )
    ]
    for file in RUNBOOK_FILES:
        commands: RunbookCommands = importlib.import_module(f"runbooks.{file}").COMMANDS
        for command in commands.commands:
            runbook = command.runbook(defaults(command.flags)) if command.runbook else None
            line, title = commands.usage(command) + where, commands.usage(command).removeprefix("python runbooks/")
            sections.append(procedure(settings, title, command.summary, (line,), runbook, command.flags))
    return Section(
        "Procedures",
        [
            Text(
                "Run every command on the controller, in the repository's folder, as the user that owns "
                f"`.secrets/`. It reaches each server over SSH as {', '.join(f'`{u}`' for u in users)} and makes "
                "every change through sudo. `--plan` writes what would be put on each server under `plan/` and "
                "contacts none; `--check` reads the servers and changes nothing; `--limit` takes server names, "
                "group names and globs. Each step prints the servers it changed and how; a run that finds "
                'everything as it should be ends with "no changes".'
            ),
            Text(IF_IT_FAILS),
        ],
        sections,
    )


def sections(settings: Settings, where: str) -> tuple[Section, ...]:
    return (
        overview(settings),
        servers(settings),
        dns(settings, where),
        perimeter(settings),
        ports(settings, where),
        hardware(settings, where),
        storage(settings, where),
        secrets(settings, where),
        procedures(settings, where),
    )
