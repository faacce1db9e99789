"""Deployment step 11, playbook mode: Synapse, its workers, Element and Ketesa through
matrix-docker-ansible-deploy, run from the controller.

The framework writes the playbook's `inventory/hosts` and the Synapse host's
`inventory/host_vars/<fqdn>/vars.yml` from config.yaml, the sizing and the secrets file,
then runs ansible-playbook with the tags the change needs: `setup-all` when services or
the worker topology changed (adding event persisters restarts every worker),
`setup-synapse,start` when only Synapse's own settings changed, `install-all`
otherwise — also when only the playbook checkout moved to a new commit (an update: new
image versions); nothing at all when vars.yml and the checkout are as last applied. What the playbook would
otherwise run itself is the platform's: PostgreSQL (Patroni behind PgBouncer), Coturn,
TLS (HAProxy terminates it; Traefik listens on the private address without TLS).

Only variable names checked against the pinned playbook are written
(tasks/playbook_variables.yaml); `matrix_synapse_admin_*` names, which the playbook
rejects since the admin UI became Ketesa, are never among them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml
from nornir.core.task import Result, Task

from core.errors import HostError, InputProblem
from core.pki import libpq_verify_full, trusted_ca
from core.secrets import write_private
from core.settings import Settings
from core.step import Step
from core.turn_service import turn_uris
from core.workers import playbook_counts
from tasks.declaration import Procedure
from tasks.executor import execute
from tasks.haproxy import TRAEFIK_FEDERATION_PORT, TRAEFIK_WEB_PORT
from tasks.livekit import JWT_PATH
from tasks.pooler import maintenance_database
from tasks.remote import Mode, mode, redactor
from tasks.synapse import retention_settings, room_list_publication_rules
from tasks.waits import wait_for_http

# The playbook refuses to run when vars.yml does not confirm its migration notes up to
# this release (roles/custom/matrix_playbook_migration/defaults/main.yml at the pinned commit).
MIGRATION_VERSION = "v2026.05.18.0"
CHECKED = Path(__file__).with_name("playbook_variables.yaml")
ELEMENT_PATH = "/element"
APPLIED = ".matrix-platform-applied.json"  # per variable, the hash of the value last applied
CHECKOUT = "playbook checkout"  # recorded with the variables: the commit last applied
# A change to one of these adds or removes containers: setup-all.
TOPOLOGY = re.compile(r"(_count|_enabled|_preset)$")
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


def playbook(settings: Settings) -> bool:
    """used in playbook mode only (synapse.mode: playbook); native mode runs Synapse from a venv"""
    return settings.config.synapse.mode == "playbook"


def directory(settings: Settings) -> Path:
    return (settings.config_path.parent / settings.config.playbook.directory).resolve()


def vars_path(settings: Settings) -> Path:
    return directory(settings) / "inventory" / "host_vars" / settings.config.homeserver_fqdn / "vars.yml"


def playbook_vars(settings: Settings) -> dict[str, object]:
    """vars.yml of the Synapse host: the settings in the playbook's variable names."""
    config, secrets, sizing = settings.config, settings.secrets, settings.sizing
    synapse_ip = settings.members("synapse")[0].private_ip
    haproxy = [f"{h.private_ip}/32" for h in settings.members("haproxy")]
    values: dict[str, object] = {
        "matrix_playbook_migration_validated_version": MIGRATION_VERSION,
        "matrix_domain": config.domain,
        "matrix_server_fqn_matrix": config.homeserver_fqdn,
        "matrix_homeserver_implementation": "synapse",
        "matrix_homeserver_generic_secret_key": secrets["playbook_generic_secret_key"],
        "matrix_homeserver_federation_enabled": config.synapse.federation,
        # HAProxy terminates TLS and forwards to Traefik on the private address
        # (docs/configuring-playbook-own-webserver.md, "fronting the integrated reverse-proxy").
        "matrix_playbook_reverse_proxy_type": "playbook-managed-traefik",
        "matrix_playbook_ssl_enabled": True,
        "traefik_config_entrypoint_web_secure_enabled": False,
        "traefik_container_web_host_bind_port": f"{synapse_ip}:{TRAEFIK_WEB_PORT}",
        "traefik_config_entrypoint_web_forwardedHeaders_trustedIPs": haproxy,
        "matrix_playbook_public_matrix_federation_api_traefik_entrypoint_host_bind_port": (
            f"{synapse_ip}:{TRAEFIK_FEDERATION_PORT}"
        ),
        "matrix_playbook_public_matrix_federation_api_traefik_entrypoint_config_http3_enabled": False,
        "matrix_playbook_public_matrix_federation_api_traefik_entrypoint_config_custom": {
            "forwardedHeaders": {"trustedIPs": haproxy}
        },
        "matrix_synapse_tls_federation_listener_enabled": False,
        # Our Patroni cluster through every PgBouncer (libpq tries the hosts in order).
        "postgres_enabled": False,
        "matrix_synapse_database_host": ",".join(h.private_ip for h in settings.members("pgbouncer")),
        "matrix_synapse_database_port": config.pgbouncer.port,
        "matrix_synapse_database_user": config.database.user,
        "matrix_synapse_database_password": secrets["synapse_db_password"],
        "matrix_synapse_database_database": config.database.name,
        "matrix_synapse_database_cp_min": config.synapse.database_cp_min,
        "matrix_synapse_database_cp_max": config.synapse.database_cp_max,
        # TLS to PgBouncer, its certificate verified against the site CA, which the containers
        # (main process and workers) see at the host's path.
        "matrix_synapse_configuration_extension_yaml": yaml.safe_dump(
            {"database": {"args": libpq_verify_full(settings.site)}}
        ),
        "matrix_synapse_container_additional_volumes": [
            {"src": trusted_ca(settings.site), "dst": trusted_ca(settings.site), "options": "ro"}
        ],
        "matrix_synapse_workers_enabled": True,
        "matrix_synapse_workers_preset": "specialized-workers",
        **{
            f"matrix_synapse_workers_{key}": count
            for key, count in playbook_counts(sizing.workers, config.synapse.federation).items()
        },
        "matrix_synapse_metrics_enabled": True,
        "matrix_synapse_metrics_port": config.synapse.metrics_port,
        # Metrics published on the private address for our Prometheus: the main process
        # on metrics_port, each worker on its port of the playbook's ranges.
        "matrix_synapse_container_metrics_api_host_bind_port": f"{synapse_ip}:{config.synapse.metrics_port}",
        "matrix_synapse_workers_container_host_bind_address": synapse_ip,
        # Coturn is ours: Synapse hands out time-limited credentials for it.
        "coturn_enabled": False,
        "matrix_synapse_turn_uris": turn_uris(settings),
        "matrix_synapse_turn_shared_secret": secrets["turn_shared_secret"],
        # Element Web at /element on the homeserver name: the edge certificate covers it.
        "matrix_client_element_hostname": config.homeserver_fqdn,
        "matrix_client_element_path_prefix": ELEMENT_PATH,
        "matrix_client_element_configuration_extension_json": json.dumps(element_extension(settings)),
        # Ketesa behind HAProxy: HAProxy enforces synapse.admin_allowlist on the client's
        # address; Traefik sees HAProxy's, so it admits only the HAProxy hosts.
        "matrix_ketesa_enabled": True,
        "matrix_ketesa_container_labels_traefik_path_prefix": config.synapse.admin_path,
        "matrix_ketesa_container_labels_traefik_ipallowlist_sourcerange": haproxy,
        "matrix_synapse_room_list_publication_rules": room_list_publication_rules(settings),
        **retention_vars(settings),
        **compressor_vars(settings),
        "matrix_user_creator_users_additional": [
            {
                "username": config.synapse.admin_user,
                "initial_password": secrets["synapse_admin_password"],
                "initial_type": "admin",
            }
        ],
    }
    if config.domain != config.homeserver_fqdn:
        # The base domain's /.well-known/matrix/* point clients and servers at the homeserver name.
        values["matrix_static_files_container_labels_base_domain_enabled"] = True
    if config.playbook.registry_prefix:
        values["matrix_container_global_registry_prefix_override"] = config.playbook.registry_prefix
    if config.minio.enabled:
        values |= s3_vars(settings)
    if config.livekit.enabled:
        values |= rtc_vars(settings)
    return values


def retention_vars(settings: Settings) -> dict[str, object]:
    """synapse.retention in the playbook's names: the same Synapse settings native mode writes
    (tasks.synapse.retention_settings). Set even when off: the playbook's own default purges
    forgotten rooms after 28 days, which this platform leaves to the operator."""
    wanted = retention_settings(settings)
    media = wanted.get("media_retention", {})
    values: dict[str, object] = {
        "matrix_synapse_media_retention_local_media_lifetime": media.get("local_media_lifetime"),
        "matrix_synapse_media_retention_remote_media_lifetime": media.get("remote_media_lifetime"),
        "matrix_synapse_forgotten_room_retention_period": wanted["forgotten_room_retention_period"],
        "matrix_synapse_retention_enabled": "retention" in wanted,
    }
    if "retention" in wanted:
        messages = wanted["retention"]
        values |= {
            "matrix_synapse_retention_default_policy_max_lifetime": messages["default_policy"]["max_lifetime"],
            "matrix_synapse_retention_allowed_lifetime_min": messages["allowed_lifetime_min"],
            "matrix_synapse_retention_allowed_lifetime_max": messages["allowed_lifetime_max"],
            "matrix_synapse_retention_purge_jobs": messages["purge_jobs"],
        }
    return values


def compressor_vars(settings: Settings) -> dict[str, object]:
    """synapse.state_compression with the playbook's own compressor role (its container on a systemd timer; the
    playbook's group_vars leave it off), through the first PgBouncer's session-pooled maintenance database as
    native mode's compressor (tasks/state_compressor.py): prepared statements need a session."""
    config = settings.config
    compression = config.synapse.state_compression
    values: dict[str, object] = {"matrix_synapse_auto_compressor_enabled": compression.enabled}
    if compression.enabled:
        values |= {
            "matrix_synapse_auto_compressor_database_hostname": settings.members("pgbouncer")[0].private_ip,
            "matrix_synapse_auto_compressor_database_port": config.pgbouncer.port,
            "matrix_synapse_auto_compressor_database_username": config.database.user,
            "matrix_synapse_auto_compressor_database_password": settings.secrets["synapse_db_password"],
            "matrix_synapse_auto_compressor_database_name": maintenance_database(config),
            "matrix_synapse_auto_compressor_schedule": compression.schedule,
            "matrix_synapse_auto_compressor_chunk_size": compression.chunk_size,
            "matrix_synapse_auto_compressor_chunks_to_compress": compression.chunks_per_run,
        }
    return values


def rtc_vars(settings: Settings) -> dict[str, object]:
    """Group calls on our LiveKit mesh and JWT service instead of the playbook's own.

    `matrix_rtc_enabled` turns on what Synapse and Element need for MatrixRTC (delayed
    events, MSC4222/4354, Element's call features); the playbook's LiveKit server stays
    off (and its JWT service with it); Synapse and the client well-known point at ours.
    """
    config = settings.config
    foci = [{"type": "livekit", "livekit_service_url": f"https://{config.homeserver_fqdn}{JWT_PATH}"}]
    values: dict[str, object] = {
        "matrix_rtc_enabled": True,
        "livekit_server_enabled": False,
        "matrix_synapse_matrix_rtc_transports_custom": foci,
        "matrix_static_files_file_matrix_client_property_org_matrix_msc4143_rtc_foci_enabled": True,
        "matrix_static_files_file_matrix_client_property_org_matrix_msc4143_rtc_foci_custom": foci,
    }
    if not config.synapse.federation:
        # The JWT service checks users through Synapse's OpenID endpoint, which the
        # playbook only keeps without federation for its own JWT service.
        values["matrix_synapse_federation_port_openid_resource_required"] = True
    return values


def s3_vars(settings: Settings) -> dict[str, object]:
    """Media in the MinIO bucket through synapse-s3-storage-provider (migration timer daily at 05:00)."""
    config, secrets = settings.config, settings.secrets
    prefix = "matrix_synapse_ext_synapse_s3_storage_provider"
    values: dict[str, object] = {
        f"{prefix}_enabled": True,
        f"{prefix}_config_bucket": config.minio.bucket,
        f"{prefix}_config_region_name": "us-east-1",  # MinIO's default region
        f"{prefix}_config_endpoint_url": f"http://{settings.members('minio')[0].private_ip}:9000",
        f"{prefix}_config_access_key_id": secrets["minio_synapse_access_key"],
        f"{prefix}_config_secret_access_key": secrets["minio_synapse_secret_key"],
        f"{prefix}_periodic_migration_schedule": "*-*-* 05:00:00",
    }
    if config.playbook.synapse_image:
        # Air gap: the module is already in the image; the playbook must not pip-install it on the host.
        values["matrix_synapse_container_image_customizations_s3_storage_provider_installation_enabled"] = False
        values["matrix_synapse_container_image"] = config.playbook.synapse_image
    return values


def element_extension(settings: Settings) -> dict[str, object]:
    """Element Web's config.json additions: our homeserver only, no guests."""
    config = settings.config
    return {
        "default_server_config": {
            "m.homeserver": {"base_url": f"https://{config.homeserver_fqdn}", "server_name": config.domain}
        },
        "disable_custom_urls": True,
        "disable_guests": True,
    }


def inventory_text(settings: Settings) -> str:
    """The playbook's inventory/hosts: the Synapse host under the homeserver name, as our SSH user."""
    host = settings.members("synapse")[0]
    fields = [settings.config.homeserver_fqdn, f"ansible_host={host.address}", f"ansible_port={host.port}"]
    fields.append(f"ansible_ssh_user={host.username}")
    if host.username != "root":
        fields += ["ansible_become=true", "ansible_become_user=root"]
    return (
        "# Written by matrix-platform from inventory/ (edit that instead).\n[matrix_servers]\n"
        + " ".join(fields)
        + "\n"
    )


def checked_variables() -> frozenset[str]:
    return frozenset(yaml.safe_load(CHECKED.read_text())["variables"])


def unchecked(values: dict[str, object]) -> list[str]:
    """Emitted names that were not checked against the pinned playbook."""
    checked = checked_variables()
    return sorted(name for name in values if name not in checked or name.startswith("matrix_synapse_admin_"))


def fingerprints(values: dict[str, object]) -> dict[str, str]:
    """Per variable, a hash of its value: what changed is known without keeping a secret."""
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest() for k, v in values.items()}


def tags_for(applied: dict[str, str] | None, values: dict[str, object]) -> tuple[str | None, list[str]]:
    """The tags a run needs (None: nothing to do) and the variables that changed."""
    current = fingerprints(values)
    if applied is None:
        return "setup-all,ensure-matrix-users-created,start", sorted(current)
    changed = sorted(k for k in current.keys() | applied.keys() if current.get(k) != applied.get(k))
    if not changed:
        return None, []
    if any(TOPOLOGY.search(k) for k in changed):
        return "setup-all,ensure-matrix-users-created,start", changed
    if all(k.startswith("matrix_synapse_") for k in changed):
        return "setup-synapse,start", changed
    return "install-all,ensure-matrix-users-created,start", changed


@dataclass(frozen=True)
class Recap:
    host: str
    ok: int
    changed: int
    unreachable: int
    failed: int

    def __str__(self) -> str:
        return f"{self.host}: ok={self.ok} changed={self.changed} unreachable={self.unreachable} failed={self.failed}"


def parse_recap(output: str) -> list[Recap]:
    """The PLAY RECAP lines of an ansible-playbook run."""
    recap = output.rsplit("PLAY RECAP", 1)[-1] if "PLAY RECAP" in output else ""
    return [Recap(m[1], int(m[2]), int(m[3]), int(m[4]), int(m[5])) for m in RECAP.finditer(recap)]


def checkout_commit(where: Path) -> str:
    """The commit the playbook checkout is at ('' when git or the repository is missing)."""
    try:
        done = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return ""
    return done.stdout.strip()


def requirements(settings: Settings) -> list[InputProblem]:
    """What the controller needs before the playbook step may start (checked before any host is touched)."""
    config = settings.config
    where = directory(settings)
    key = "playbook.directory"
    if not (where / "setup.yml").is_file():
        return [
            InputProblem(
                str(settings.config_path),
                key,
                f"{where} is not a matrix-docker-ansible-deploy checkout (no setup.yml)",
                f"during the internet phase: git clone the playbook there, git checkout {config.versions.playbook}, "
                "then 'just roles'",
            )
        ]
    problems = []
    if not (where / "roles" / "galaxy").is_dir():
        problems.append(
            InputProblem(
                str(settings.config_path), key, f"{where}/roles/galaxy is missing", f"run 'just roles' in {where}"
            )
        )
    head = checkout_commit(where)
    if not head.startswith(config.versions.playbook):
        problems.append(
            InputProblem(
                str(settings.config_path),
                "versions.playbook",
                f"the checkout in {where} is at {head or 'an unknown commit'}, not {config.versions.playbook}",
                f"git -C {where} checkout {config.versions.playbook} (the version the variables were checked against)",
            )
        )
    if shutil.which(config.playbook.ansible_playbook) is None:
        problems.append(
            InputProblem(
                str(settings.config_path),
                "playbook.ansible_playbook",
                f"'{config.playbook.ansible_playbook}' is not on the controller's PATH",
                "install Ansible on the controller (pip install ansible) or set the command's full path",
            )
        )
    return problems


# Where plan mode puts what a run writes on the controller: a folder no host name can take
# (core.settings.NAME starts with a letter or digit).
CONTROLLER_PLAN = "_controller"


def plan_files(task: Task, settings: Settings, values: dict[str, object]) -> list[str]:
    """Plan mode: the playbook's inventory and vars.yml as a run would write them into the checkout, every
    secret masked, under <plan dir>/_controller/playbook/; what each line of the plan says of them."""
    root = Path(task.nornir.config.user_defined["plan_dir"]) / CONTROLLER_PLAN / "playbook"
    where = directory(settings)
    redact = redactor(task)
    files = {
        where / "inventory" / "hosts": inventory_text(settings),
        vars_path(settings): yaml.safe_dump(values, sort_keys=True),
    }
    said = []
    for path, text in files.items():
        target = root / path.relative_to(where)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(redact(text))
        target.chmod(0o600)
        said.append(f"{path}: would be written on the controller (plan: {target}, secrets masked)")
    return said


def run_playbook(task: Task, settings: Settings) -> Result:
    """Write the playbook's inventory and vars.yml, then run ansible-playbook with the tags the change needs."""
    values = playbook_vars(settings)
    wrong = unchecked(values)
    if wrong:  # a programming error, caught by the unit tests; never run the playbook with it
        raise HostError(f"variables not checked against the pinned playbook: {', '.join(wrong)}")
    record = vars_path(settings).with_name(APPLIED)
    applied = json.loads(record.read_text()) if record.exists() else None
    where = directory(settings)
    state = {**values, CHECKOUT: checkout_commit(where)}
    tags, changed = tags_for(applied, state)
    planned = plan_files(task, settings, values) if mode(task) is Mode.PLAN else []
    if tags is None:
        return Result(host=task.host, result="vars.yml as last applied", diff="\n".join(planned))
    shown = ", ".join(changed[:6]) + (" …" if len(changed) > 6 else "")
    summary = f"ansible-playbook --tags={tags} ({len(changed)} variables changed: {shown})"
    if planned:
        said = [*planned, f"would run {summary}"]
        return Result(host=task.host, result=said, changed=True, diff="\n".join(said))

    def apply(_task: Task) -> list[str]:
        write_private(where / "inventory" / "hosts", inventory_text(settings))
        write_private(vars_path(settings), yaml.safe_dump(values, sort_keys=True))
        command = [settings.config.playbook.ansible_playbook, "-i", "inventory/hosts", "setup.yml", f"--tags={tags}"]
        done = subprocess.run(
            command, cwd=where, capture_output=True, text=True, env={**os.environ, "ANSIBLE_NOCOLOR": "1"}
        )
        output = redactor(task)(done.stdout + done.stderr)
        recaps = parse_recap(output)
        if done.returncode != 0 or not recaps or any(r.failed or r.unreachable for r in recaps):
            tail = "\n".join(output.strip().splitlines()[-25:])
            raise HostError(
                f"{shlex.join(command)} in {where} exited with status {done.returncode}\n"
                f"  play recap: {'; '.join(map(str, recaps)) or 'none'}\n{tail}\n"
                "  fix the cause and re-run the deploy: the same tags run again until a run succeeds"
            )
        write_private(record, json.dumps(fingerprints(state), indent=1, sort_keys=True))
        return [summary, *(f"  {r}" for r in recaps)]

    return execute(task, [Procedure(summary, f"would run {summary}", apply)], None)[0]


def playbook_healthy(task: Task, settings: Settings) -> Result:
    """Health gate: Traefik answers the client API on the private address, then clients do via the VIP."""
    ip = settings.hosts[task.host.name].private_ip
    fqdn = settings.config.homeserver_fqdn
    wait_for_http(task, f"http://{ip}:{TRAEFIK_WEB_PORT}/_matrix/client/versions", timeout=300, host_header=fqdn)
    return wait_for_http(task, f"https://{fqdn}/_matrix/client/versions", timeout=60)


# Runs on the controller (ansible-playbook against the Synapse host), so a step of its own
# rather than a component: what it changes is decided from the variables last applied.
SYNAPSE_PLAYBOOK = Step(
    "synapse-playbook",
    "Synapse, workers, Element and Ketesa via matrix-docker-ansible-deploy (playbook mode)",
    run_playbook,
    groups=("synapse",),
    check=playbook_healthy,
    applies=playbook,
    requires=requirements,
    after=("pgbouncer", "minio-bucket", "keepalived"),
)
