"""Media and key backups: pulled by the backup host from the Synapse host, never pushed.

The backup host logs in to the Synapse host as `matrix-backup` with its own key (the
secret backup_ssh_key), accepted only from the backup host's address and only for one
forced command: an rsync server confined read-only to the media store (rrsync), or a
tar of Synapse's config, worker configs and signing key. A daily timer on the backup
host pulls `local_content` and `local_thumbnails` (never `remote_*` or `url_cache*`,
which other servers hold) into dated hard-link snapshots, archives the keys with the
platform's secrets file, and writes each success for Prometheus (BackupTooOld).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.secrets import ssh_key, ssh_public_key
from core.settings import Settings
from tasks.component import Component
from tasks.declaration import Command, Context, File, Service, Stage, template
from tasks.facts import HostFacts
from tasks.monitoring import TEXTFILE_DIR
from tasks.synapse import CONFIG_DIR, DATA, USER, native
from tasks.systemd import UNIT_DIR

ACCOUNT = "matrix-backup"  # on the Synapse host
SERVE = "/usr/local/sbin/matrix-backup-serve"
PULL = "/usr/local/sbin/matrix-backup-files"
PULL_UNIT = "matrix-backup-files.service"
PULL_TIMER = "matrix-backup-files.timer"
KEY_DIR = "/etc/matrix-backup"  # on the backup host: its SSH key, known_hosts, the platform secrets
ROOT = "/var/backups/matrix"  # media/<host>/<snapshot>, keys/<host>/keys-<time>.tar
MEDIA_KINDS = ("local_content", "local_thumbnails")


@dataclass(frozen=True)
class Layout:
    """Where Synapse keeps what the backup pulls, and the group that may read it."""

    media: str
    config: str  # relative to / for tar
    group: str


def layout(settings: Settings) -> Layout:
    """Native: this project's paths. Playbook mode: the playbook's /matrix/synapse tree
    (read from matrix-docker-ansible-deploy's defaults, not exercised here)."""
    if native(settings):
        return Layout(f"{DATA}/media", CONFIG_DIR.lstrip("/"), USER)
    return Layout("/matrix/synapse/storage/media-store", "matrix/synapse/config", "matrix")


AUTHORIZED = f"/var/lib/{ACCOUNT}/.ssh/authorized_keys"


def account(context: Context, facts: HostFacts | None, _written: frozenset[str]) -> list[Command]:
    """The `matrix-backup` account, in the group that may read Synapse's media and keys (before its files)."""
    group = layout(context.settings).group
    if facts is None or group in facts.commands["groups"].split():
        return []
    return [
        Command(
            f"id -u {ACCOUNT} >/dev/null 2>&1 || useradd --system --create-home --home-dir /var/lib/{ACCOUNT} "
            f"--shell /bin/sh {ACCOUNT}; id -nG {ACCOUNT} | grep -qw {group} || usermod -aG {group} {ACCOUNT}",
            f"user {ACCOUNT} in group {group}: created",
            f"system user {ACCOUNT} in group {group}",
            stage=Stage.BEFORE_FILES,
        )
    ]


def authorized_key(context: Context) -> str:
    """The backup host's key, accepted only from its address and only for the forced command."""
    backup = context.settings.members("backup")[0]
    public = ssh_public_key(context.settings.secrets["backup_ssh_key"], f"{ACCOUNT}@{backup.name}")
    return f'from="{backup.private_ip}",restrict,command="{SERVE}" {public}\n'


def serve(context: Context) -> dict[str, object]:
    where = layout(context.settings)
    return {"media": where.media, "config": where.config, "kinds": MEDIA_KINDS}


BACKUP_SOURCE = Component(
    "backup-source",
    groups=("synapse",),
    summary="on the Synapse host: the matrix-backup account the backup host pulls media and keys as",
    after=("synapse", "synapse-playbook"),
    packages=("rsync",),
    autostart=True,
    files=(File(SERVE, template("backup/backup-serve.sh.j2", serve), mode=0o755), File(AUTHORIZED, authorized_key)),
    reads={"groups": f"id -nG {ACCOUNT} 2>/dev/null"},
    behaviour=account,
)


def known_hosts(context: Context) -> str:
    """The Synapse hosts' keys as the controller verified them, so the pull never trusts on first use."""
    settings, keys = context.settings, context.host_keys
    unknown = "(read from the controller's verified connection)"
    return "".join(
        f"{source.private_ip},{settings.service_name(source)} {unknown if keys is None else keys[source.name]}\n"
        for source in settings.members("synapse")
    )


def pull_script(context: Context) -> dict[str, object]:
    backup = context.settings.config.backup
    return {
        "root": ROOT,
        "key_dir": KEY_DIR,
        "account": ACCOUNT,
        "sources": [{"name": h.name, "ip": h.private_ip} for h in context.settings.members("synapse")],
        "kinds": MEDIA_KINDS,
        "includes": " ".join(f"'--include=/{kind}/***'" for kind in MEDIA_KINDS),
        "bwlimit": backup.media_bwlimit_kbps,
        "snapshots": backup.media_snapshots,
        "archives": backup.key_archives,
        "textfile_dir": TEXTFILE_DIR,
    }


def pull_timer(context: Context) -> dict[str, object]:
    return {
        "description": "media pull and key archive (matrix-platform)",
        "schedule": context.settings.config.backup.files_schedule,
        "unit": PULL_UNIT,
    }


def policy_metric(context: Context) -> str:
    """The configured maximum backup age, beside the success times, so the alert compares the two."""
    seconds = round(context.settings.config.backup.max_age_hours * 3600)
    return (
        "# HELP matrix_platform_backup_max_age_seconds Age after which a backup counts as missing "
        "(config.yaml backup.max_age_hours).\n"
        "# TYPE matrix_platform_backup_max_age_seconds gauge\n"
        f"matrix_platform_backup_max_age_seconds {seconds}\n"
    )


BACKUP_FILES = Component(
    "backup-files",
    groups=("backup",),
    summary="on the backup host: the daily pull of local media (hard-link snapshots) and the key archive",
    after=("backup-source",),
    packages=("rsync", "openssh-client"),
    autostart=True,
    files=(
        File(PULL, template("backup/backup-files.sh.j2", pull_script), mode=0o755),
        File(f"{KEY_DIR}/id_ed25519", lambda c: c.settings.secrets["backup_ssh_key"], mode=0o600, secret=True),
        File(f"{KEY_DIR}/known_hosts", known_hosts),
        # Every secret of the platform, archived with the keys (the repository's cipher pass
        # included: keep one copy of this file off-site as well).
        File(
            f"{KEY_DIR}/platform-secrets.yaml",
            lambda c: c.settings.secrets.path.read_text(),
            mode=0o600,
            secret=True,
        ),
        File(f"{UNIT_DIR}/{PULL_UNIT}", template("backup/backup-files.service.j2", lambda _: {"script": PULL})),
        File(f"{UNIT_DIR}/{PULL_TIMER}", template("backup/backup.timer.j2", pull_timer)),
        File(f"{TEXTFILE_DIR}/backup-policy.prom", policy_metric),
    ),
    services=(Service(PULL_TIMER, restart_on=()),),
    host_keys_of=("synapse",),
    secrets={"backup_ssh_key": ssh_key},  # the backup host's key; the Synapse host authorises its public half
)
