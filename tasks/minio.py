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

from core import artifacts
from core.settings import Settings
from tasks.files import ArtifactSpec, FileSpec, put_artifacts, put_files, render
from tasks.remote import Expectation, Mode, mode, run
from tasks.systemd import binary_service, service_user
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


def minio(task: Task, settings: Settings) -> Result:
    """Install the MinIO server on a node of the set; restart it when binary or settings changed."""
    host = settings.hosts[task.host.name]
    if not settings.config.minio.enabled:
        return Result(host=task.host, result="minio.enabled is false in config.yaml")
    service_user(task, USER)
    if mode(task) is Mode.APPLY:
        dirs = " ".join(shlex.quote(d) for d in drives(settings))
        run(task, f"mkdir -p {dirs} && chown {USER}:{USER} {dirs}", what=Expectation("MinIO's drive folders"))
    manifest = artifacts.manifest()
    mc = manifest["mc"].files[0]
    assert mc.target
    task.run(task=put_artifacts, specs=[ArtifactSpec(mc.target, artifacts.binary(mc))], severity_level=10)
    secrets = settings.secrets
    env = render(
        task,
        "minio/minio.env.j2",
        host_name=host.name,
        volumes=volumes(settings),
        address=f"{host.private_ip}:{API_PORT}",
        console=f"{host.private_ip}:{CONSOLE_PORT}",
        parity=PARITY,
        root_user=secrets["minio_root_user"],
        root_password=secrets["minio_root_password"],
    )
    server = manifest["minio"].files[0]
    unit = render(task, "minio/minio.service.j2", binary=server.target, user=USER, env_file=ENV_FILE)
    config = FileSpec(ENV_FILE, env, group=USER, mode=0o640)
    return binary_service(task, server, UNIT, unit, config)


def minio_healthy(task: Task, settings: Settings) -> Result:
    """Health gate: the node says the whole cluster has write quorum."""
    if not settings.config.minio.enabled:
        return Result(host=task.host, result="minio.enabled is false in config.yaml")
    ip = settings.hosts[task.host.name].private_ip
    return wait_for_http(task, f"http://{ip}:{API_PORT}/minio/health/cluster", timeout=120)


def mc_env_script() -> str:
    """Read the mc alias (with credentials) from stdin into MC_HOST_<alias>: never on a command line."""
    return f"IFS= read -r MC_HOST_{ALIAS}; export MC_HOST_{ALIAS}; "


def minio_bucket(task: Task, settings: Settings) -> Result:
    """On the first node: Synapse's bucket, its policy and its user (idempotent), then cluster facts."""
    host = settings.hosts[task.host.name]
    if not settings.config.minio.enabled:
        return Result(host=task.host, result="minio.enabled is false in config.yaml")
    if host.name != settings.members("minio")[0].name:
        return Result(host=task.host, result="bucket and user are managed from the first node")
    bucket = settings.config.minio.bucket
    policy = task.run(task=put_files, specs=[FileSpec(POLICY_FILE, bucket_policy(bucket))], severity_level=10)[0]
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, changed=policy.changed, diff=policy.diff)
    secrets = settings.secrets
    alias = f"http://{secrets['minio_root_user']}:{secrets['minio_root_password']}@{host.private_ip}:{API_PORT}"
    access = secrets["minio_synapse_access_key"]
    # mc reads the new user's secret key from stdin when it is not given as an argument.
    script = (
        mc_env_script()
        + "IFS= read -r SECRET; set -e; "
        + f"mc mb --ignore-existing {ALIAS}/{shlex.quote(bucket)}; "
        + f"mc admin policy create {ALIAS} {POLICY} {POLICY_FILE}; "
        + f'printf "%s\\n" "$SECRET" | mc admin user add {ALIAS} {shlex.quote(access)}; '
        + f"mc admin policy attach {ALIAS} {POLICY} --user {shlex.quote(access)} 2>/dev/null || true; "
        + f"mc admin info {ALIAS} --json"
    )
    out = run(
        task,
        script,
        stdin=f"{alias}\n{secrets['minio_synapse_secret_key']}\n",
        what=Expectation(f"bucket {bucket} and its user", "mc admin info on the node; journalctl -u minio"),
    )
    return Result(
        host=task.host,
        changed=policy.changed,
        diff=policy.diff,
        result=f"bucket {bucket}; {cluster_summary(out.stdout)}",
    )


def cluster_summary(info_json: str) -> str:
    """The facts of `mc admin info --json` an operator looks at first."""
    backend = json.loads(info_json.strip().splitlines()[-1]).get("info", {}).get("backend", {})
    online, offline = backend.get("onlineDisks", "?"), backend.get("offlineDisks", "?")
    return f"{online} drives online, {offline} offline, parity EC:{backend.get('standardSCParity', '?')}"
