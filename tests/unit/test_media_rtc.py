"""Media and RTC tiers without servers: the artifact cache's refusals, and the rendered
MinIO, LiveKit and Coturn files checked against SPEC."""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from core import artifacts, turn_service
from core.errors import InputError
from core.settings import Settings, load_settings
from tasks import coturn, livekit, minio
from tasks.files import jinja
from tasks.registry import CATALOG
from tests.conftest import Site


@pytest.fixture
def settings(site: Site) -> Settings:
    return load_settings(site.config, site.inventory, catalog=CATALOG, allow_placeholders=True)[0]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private artifact cache with a one-binary manifest whose sha256 is pinned."""
    manifest = tmp_path / "manifest.yaml"
    good = tmp_path / "downloads" / "tool-1.0"
    good.parent.mkdir()
    good.write_bytes(b"the real binary\n")
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    manifest.write_text(
        "tool:\n  version: '1.0'\n  files:\n    - name: tool-1.0\n      source: url:https://vendor.invalid/tool-1.0\n"
        f"      sha256: {digest}\n      target: /usr/local/bin/tool\n"
        "unpinned:\n  version: '2.0'\n  files:\n    - name: other-2.0\n      source: url:https://vendor.invalid/other\n"
        "      checksums: https://vendor.invalid/other.sha256sum\n      sha256: null\n"
        "wheels:\n  version: '3.0'\n  lock: absent.lock\n"
    )
    monkeypatch.setattr(artifacts, "MANIFEST", manifest)
    monkeypatch.setattr(artifacts, "REPO", tmp_path)
    monkeypatch.setattr(artifacts, "CACHE", tmp_path / "cache")
    return good.parent


def test_missing_artifact_says_how_to_obtain_it(cache: Path) -> None:
    (problem,) = artifacts.problems(artifacts.manifest()["tool"])
    assert problem.key == "tool: tool-1.0" and problem.message == "not in the artifact cache"
    assert "download https://vendor.invalid/tool-1.0" in problem.fix and "artifacts.py import" in problem.fix


def test_import_verifies_the_pinned_checksum(cache: Path) -> None:
    assert artifacts.import_file(cache / "tool-1.0") == "tool 1.0: imported tool-1.0"
    assert artifacts.problems(artifacts.manifest()["tool"]) == []
    tampered = cache / "other" / "tool-1.0"
    tampered.parent.mkdir()
    tampered.write_bytes(b"something else\n")
    with pytest.raises(InputError) as refused:
        artifacts.import_file(tampered)
    assert "is not the pinned" in str(refused.value.problems[0]) and "never import" in str(refused.value.problems[0])


def test_altered_file_in_the_cache_is_refused(cache: Path) -> None:
    artifacts.import_file(cache / "tool-1.0")
    (artifacts.CACHE / "tool-1.0").write_bytes(b"replaced later\n")
    (problem,) = artifacts.problems(artifacts.manifest()["tool"])
    assert problem.message.startswith("checksum mismatch") and "never use a file that fails" in problem.fix


def test_unpinned_artifact_is_never_used(cache: Path) -> None:
    (problem,) = artifacts.problems(artifacts.manifest()["unpinned"])
    assert problem.message == "no sha256 pinned for this file"
    assert "https://vendor.invalid/other.sha256sum" in problem.fix
    stray = cache / "other-2.0"
    stray.write_bytes(b"x")
    with pytest.raises(InputError):
        artifacts.import_file(stray)
    with pytest.raises(InputError):
        artifacts.fetch(artifacts.manifest()["unpinned"])  # no download without a pin


def test_a_wheel_set_without_its_lock_file_is_refused(cache: Path) -> None:
    (problem,) = artifacts.problems(artifacts.manifest()["wheels"])
    assert "lock file is missing" in problem.message and "artifacts.py lock wheels" in problem.fix


def test_a_binary_inside_an_archive_is_unpacked_once_for_all_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(artifacts, "CACHE", tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    inner = tmp_path / "livekit-server"
    inner.write_bytes(b"\x7fELF" + b"x" * 4096)
    with tarfile.open(tmp_path / "cache" / "lk.tar.gz", "w:gz") as archive:
        archive.add(inner, arcname="livekit-server")
    item = artifacts.ArtifactFile("lk.tar.gz", "url:x", "0" * 64, member="livekit-server")
    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = set(pool.map(lambda _: artifacts.binary(item), range(16)))
    (path,) = paths
    assert path.read_bytes() == inner.read_bytes()


def test_minio_env_is_one_erasure_set_with_ec4(settings: Settings) -> None:
    env = (
        jinja()
        .get_template("minio/minio.env.j2")
        .render(
            host_name="minio1",
            volumes=minio.volumes(settings),
            address="10.0.3.31:9000",
            console="10.0.3.31:9001",
            parity=minio.PARITY,
            root_user="u",
            root_password="p",
        )
    )
    endpoints = next(line for line in env.splitlines() if line.startswith("MINIO_VOLUMES=")).split("=", 1)[1]
    endpoints = endpoints.strip('"').split()
    assert len(endpoints) == 16 and len(set(endpoints)) == 16  # 4 nodes × 4 drives, one pool
    assert endpoints[0] == "http://minio1.internal:9000/srv/minio/disk1"
    assert endpoints[-1] == "http://minio4.internal:9000/srv/minio/disk4"
    assert "MINIO_STORAGE_CLASS_STANDARD=EC:4" in env.splitlines()
    unit = (
        jinja()
        .get_template("minio/minio.service.j2")
        .render(binary="/usr/local/bin/minio", user=minio.USER, env_file=minio.ENV_FILE)
    )
    assert "ExecStart=/usr/local/bin/minio server $MINIO_OPTS $MINIO_VOLUMES" in unit
    policy = minio.bucket_policy("synapse-media")
    assert "arn:aws:s3:::synapse-media/*" in policy and '"s3:*"' not in policy


def _keys(node: object, prefix: str = "") -> set[str]:
    if not isinstance(node, dict) or prefix == "keys.":
        return {prefix.rstrip(".")}
    found: set[str] = set()
    for key, value in node.items():
        found |= _keys(value, f"{prefix}{key}.")
    return found


def test_livekit_config_uses_documented_keys_and_spec_ports(settings: Settings) -> None:
    host = settings.hosts["livekit2"]
    text = (
        jinja()
        .get_template("livekit/livekit.yaml.j2")
        .render(host_name=host.name, **livekit.livekit_config(settings, host))
    )
    config = yaml.safe_load(text)
    assert _keys(config) <= livekit.DOCUMENTED_KEYS, _keys(config) - livekit.DOCUMENTED_KEYS
    assert config["port"] == 7880 and config["rtc"]["tcp_port"] == 7881
    assert (config["rtc"]["port_range_start"], config["rtc"]["port_range_end"]) == (50100, 50200)
    assert config["rtc"]["use_external_ip"] is False and config["rtc"]["node_ip"] == host.private_ip
    # The mesh's Redis is found through three sentinels: here on the first three of the four livekit hosts.
    sentinels = [settings.hosts[name].private_ip + ":26379" for name in ("livekit1", "livekit2", "livekit3")]
    assert config["redis"]["sentinel_addresses"] == sentinels and "address" not in config["redis"]
    assert config["redis"]["sentinel_master_name"] == "livekit" and config["redis"]["use_tls"] is True
    assert list(config["keys"].values()) == [settings.secrets["livekit_api_secret"]]


def test_the_third_sentinel_goes_to_the_monitoring_host_beside_two_livekit_hosts(lab_settings: Settings) -> None:
    """Two livekit hosts run the Redis master and replica; the third sentinel must be on neither, so that losing
    either leaves two sentinels to agree on a failover."""
    assert [h.name for h in livekit.redis_servers(lab_settings)] == ["livekit1", "livekit2"]
    assert [h.name for h in livekit.sentinel_hosts(lab_settings)] == ["livekit1", "livekit2", "monitoring1"]
    assert livekit.sentinel_absent(lab_settings, lab_settings.hosts["monitoring1"]) == ""


def render_coturn(settings: Settings, **override: object) -> str:
    data: dict[str, object] = dict(
        host_name="coturn1",
        ip="10.0.4.41",
        realm="example.org",
        secret="s",
        min_port=49152,
        max_port=49172,
        cert=coturn.CERT,
        key=coturn.KEY,
        denied=coturn.DENIED_PEERS,
        allowed=["10.0.4.51"],
    )
    data.update(override)
    return jinja().get_template("coturn/turnserver.conf.j2").render(**data)


def test_coturn_config_matches_spec(settings: Settings) -> None:
    lines = render_coturn(settings).splitlines()
    assert "min-port=49152" in lines and "max-port=49172" in lines
    assert "use-auth-secret" in lines and "static-auth-secret=s" in lines
    assert "tls-listening-port=5349" in lines and "external-ip=10.0.4.41" in lines
    assert not [line for line in lines if line.strip().startswith("no-tcp-relay")]
    assert "denied-peer-ip=10.0.0.0-10.255.255.255" in lines and "allowed-peer-ip=10.0.4.51" in lines
    assert turn_service.turn_uris(settings)[:3] == [
        "turn:10.0.4.31:3478?transport=udp",
        "turn:10.0.4.31:3478?transport=tcp",
        "turns:10.0.4.31:5349?transport=tcp",
    ]


def test_a_config_with_no_tcp_relay_is_rejected_on_the_host(tmp_path: Path) -> None:
    """The check the host runs on the staged file before it replaces turnserver.conf."""
    good, bad = tmp_path / "good.conf", tmp_path / "bad.conf"
    good.write_text("listening-port=3478\n# never set no-tcp-relay\n")
    bad.write_text("listening-port=3478\n  no-tcp-relay\n")
    check = coturn.NO_TCP_RELAY_CHECK
    assert subprocess.run(["bash", "-c", check.format(path=good)]).returncode == 0
    assert subprocess.run(["bash", "-c", check.format(path=bad)]).returncode != 0
