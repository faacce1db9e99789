"""Deployment steps 5 and 6: the MinIO erasure set, then Synapse's bucket and user.

4 nodes × 4 drives form one erasure set of 16 drives with EC:4 (12 data + 4 parity): it
survives the loss of one whole node or any 4 drives, and keeps ≈ 75 % of the raw space.
Every node lists every drive of the set explicitly, so host names need not be numbered.

MinIO and mc are not in Debian: they come from the artifact cache. Without them both
steps are skipped with a message; the moment the operator imports the binaries, the
same run deploys them.
"""

from __future__ import annotations

import json
import shlex

from nornir.core.task import Result, Task

from core.catalog import GroupRule
from core.config import Config
from core.ports import PortUse, tcp
from core.secrets import access_key, token
from core.settings import HostInfo, Settings
from core.targets import Job, deployed, per_host
from tasks.component import Component
from tasks.declaration import Binary, Command, Context, File, Service, Stage, template
from tasks.facts import HostFacts
from tasks.systemd import UNIT_DIR
from tasks.waits import wait_for_http

API_PORT = 9000
CONSOLE_PORT = 9001
ENV_FILE = "/etc/default/minio"
UNIT = "minio.service"
USER = "minio-user"
DRIVE_ROOT = "/srv/minio"
PARITY = "EC:4"
POLICY = "synapse-media"
POLICY_FILE = "/etc/minio/synapse-media-policy.json"
ALIAS = "platform"


def drives(settings: Settings) -> list[str]:
    return [f"{DRIVE_ROOT}/disk{n}" for n in range(1, settings.config.minio.drives_per_node + 1)]


def volumes(settings: Settings) -> str:
    """MINIO_VOLUMES: every drive of every node, one server pool, one erasure set."""
    return " ".join(
        f"http://{settings.service_name(host)}:{API_PORT}{drive}"
        for host in settings.members("minio")
        for drive in drives(settings)
    )


def bucket_policy(bucket: str) -> str:
    """Least privilege for Synapse: objects of its bucket, nothing else."""
    return (
        json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                        "Resource": [f"arn:aws:s3:::{bucket}"],
                    },
                    {
                        "Effect": "Allow",
                        "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                        "Resource": [f"arn:aws:s3:::{bucket}/*"],
                    },
                ],
            },
            indent=2,
        )
        + "\n"
    )


def drive_owners_script(settings: Settings) -> str:
    """Each drive folder's owner and path; a missing folder prints nothing."""
    return f"stat -c '%U %n' {' '.join(shlex.quote(d) for d in drives(settings))} 2>/dev/null; true"


def drive_folders(context: Context, facts: HostFacts | None, _written: frozenset[str]) -> list[Command]:
    """The drive folders MinIO's account owns, made where missing or owned by another account."""
    if facts is None:
        return []
    owned = {
        path
        for owner, _, path in (line.partition(" ") for line in facts.commands["drives"].splitlines())
        if owner == USER
    }
    wanted = [d for d in drives(context.settings) if d not in owned]
    if not wanted:
        return []
    folders = " ".join(shlex.quote(d) for d in wanted)
    return [
        Command(
            f"mkdir -p {folders} && chown {USER}:{USER} {folders}",
            f"drive folders {', '.join(wanted)}: made {USER}'s",
            "MinIO's drive folders",
            stage=Stage.BEFORE_FILES,
        )
    ]


def environment(context: Context) -> dict[str, object]:
    settings, host, secrets = context.settings, context.host, context.settings.secrets
    return {
        "host_name": host.name,
        "volumes": volumes(settings),
        "address": f"{host.private_ip}:{API_PORT}",
        "console": f"{host.private_ip}:{CONSOLE_PORT}",
        "parity": PARITY,
        "root_user": secrets["minio_root_user"],
        "root_password": secrets["minio_root_password"],
    }


def minio_off(settings: Settings, _host: HostInfo) -> str:
    return "" if settings.config.minio.enabled else "minio.enabled is false in config.yaml"


def minio_healthy(task: Task, settings: Settings) -> Result:
    """Health gate: the node says the whole cluster has write quorum."""
    if not settings.config.minio.enabled:
        return Result(host=task.host, result="minio.enabled is false in config.yaml")
    ip = settings.hosts[task.host.name].private_ip
    return wait_for_http(task, f"http://{ip}:{API_PORT}/minio/health/cluster", timeout=120)


def mc_env_script() -> str:
    """Read the mc alias (with credentials) from stdin into MC_HOST_<alias>: never on a command line."""
    return f"IFS= read -r MC_HOST_{ALIAS}; export MC_HOST_{ALIAS}; "


def first_node_only(settings: Settings, host: HostInfo) -> str:
    """Why a host has nothing of minio-bucket ("" on the first node, with MinIO on)."""
    if not settings.config.minio.enabled:
        return "minio.enabled is false in config.yaml"
    return "" if host.name == settings.members("minio")[0].name else "bucket and user are managed from the first node"


def ensure_bucket(context: Context, _facts: HostFacts | None, _written: frozenset[str]) -> list[Command]:
    """Synapse's bucket, its policy and its user through mc, every apply: each mc call is idempotent and nothing
    readable without the root credentials says whether they exist."""
    settings, host = context.settings, context.host
    secrets = settings.secrets
    bucket = settings.config.minio.bucket
    alias = f"http://{secrets['minio_root_user']}:{secrets['minio_root_password']}@{host.private_ip}:{API_PORT}"
    access = secrets["minio_synapse_access_key"]
    # mc reads the new user's secret key from stdin when it is not given as an argument.
    script = (
        mc_env_script()
        + "IFS= read -r SECRET; set -e; "
        + f"mc mb --ignore-existing {ALIAS}/{shlex.quote(bucket)}; "
        + f"mc admin policy create {ALIAS} {POLICY} {POLICY_FILE}; "
        + f'printf "%s\\n" "$SECRET" | mc admin user add {ALIAS} {shlex.quote(access)}; '
        + f"mc admin policy attach {ALIAS} {POLICY} --user {shlex.quote(access)} 2>/dev/null || true"
    )
    return [
        Command(
            script,
            "",
            f"bucket {bucket} and its user",
            "mc admin info on the node; journalctl -u minio",
            name=f"mc: bucket {bucket}, policy {POLICY}, Synapse's user",
            stdin=f"{alias}\n{secrets['minio_synapse_secret_key']}\n",
        )
    ]


def minio_ports(config: Config) -> list[PortUse]:
    """The API to the erasure set's peers, Prometheus and, in playbook mode, Synapse's media store (native
    Synapse keeps media on its host); the console over an SSH tunnel only."""
    media = ("synapse",) if config.synapse.mode == "playbook" else ()
    return [
        tcp("minio-api", API_PORT, ("minio",), ("minio", "monitoring", *media)),
        tcp("minio-console", CONSOLE_PORT, ("minio",), ()),
    ]


MINIO_BUCKET = Component(
    "minio-bucket",
    groups=("minio",),
    summary="Synapse's media bucket and its least-privilege user",
    after=("minio",),
    files=(File(POLICY_FILE, lambda c: bucket_policy(c.settings.config.minio.bucket)),),
    behaviour=ensure_bucket,
    absent=first_node_only,
    needs=("minio", "mc"),
    notes=lambda context, _actions: (f"bucket {context.settings.config.minio.bucket}", ""),
)


SERVER = Binary("minio")
MINIO = Component(
    "minio",
    groups=("minio",),
    summary="MinIO: 4 nodes × 4 drives in one erasure set (EC:4); the cluster has write quorum",
    users=(USER,),
    binaries=(SERVER, Binary("mc")),
    files=(
        File(
            f"{UNIT_DIR}/{UNIT}",
            template("minio/minio.service.j2", lambda _: {"binary": SERVER.path, "user": USER, "env_file": ENV_FILE}),
        ),
        File(ENV_FILE, template("minio/minio.env.j2", environment), group=USER, mode=0o640),
    ),
    # Not in turns: MinIO's servers restart together, as its own `mc admin update` does (its documentation
    # warns against one node at a time; a set's servers refuse peers whose MINIO_ settings differ).
    services=(Service(UNIT, restart_on=(SERVER.path, f"{UNIT_DIR}/{UNIT}", ENV_FILE)),),
    reads={"drives": lambda settings, _host: drive_owners_script(settings)},
    behaviour=drive_folders,
    absent=minio_off,
    check=minio_healthy,
    inventory=(GroupRule("minio", fewest=4, switch="minio.enabled", reboot_rank=4),),
    secrets={
        "minio_root_user": access_key,
        "minio_root_password": token,
        "minio_synapse_access_key": access_key,
        "minio_synapse_secret_key": token,
    },
    ports=minio_ports,
    scrape=lambda settings: (
        [Job("minio", per_host(settings, "minio", API_PORT), metrics_path="/minio/v2/metrics/node")]
        if deployed("minio")
        else []
    ),
)
