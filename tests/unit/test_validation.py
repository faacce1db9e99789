"""Each validation rule: a broken input → exit 2, a message naming file, key and fix, no traceback."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Site

Deploy = Callable[..., tuple[int, str]]


def refused(deploy: Deploy, site: Site, *expected: str) -> str:
    """Run plan mode (never connects) and assert exit 2 with every expected fragment."""
    code, out = deploy(*site.args("--plan"))
    assert code == 2, out
    assert "nothing was touched" in out
    assert "Traceback" not in out
    for fragment in expected:
        assert fragment in out, f"{fragment!r} missing from:\n{out}"
    assert not (site.root / "plan").exists()
    return out


def test_shipped_example_plans_cleanly(deploy: Deploy, site: Site) -> None:
    code, out = deploy(*site.args("--plan"))
    assert code == 0, out
    assert "example value(s) not replaced yet" in out


# One broken input each: (file, text, replacement, fragments the refusal must contain).
BROKEN = [
    pytest.param(
        "config.yaml",
        " metrics_port: 9100",
        " metrics_prot: 9100",
        (
            "config.yaml:",
            "synapse.metrics_prot: unknown key",
            "keys allowed here:",
            "metrics_port",
        ),
        id="unknown-key",
    ),
    pytest.param(
        "config.yaml",
        "scale: large\n",
        "",
        (
            "config.yaml",
            "scale: required key is missing",
            "small (1k concurrent users)",
        ),
        id="missing-key",
    ),
    pytest.param(
        "config.yaml",
        "ccu: null",
        "ccu: many",
        (
            "config.yaml:",
            "ccu:",
            "'many'",
            "fix: concurrent users",
        ),
        id="wrong-type",
    ),
    pytest.param(
        "inventory/hosts.yaml",
        "hostname: 10.0.2.12",
        "hostname: 10.0.2.312",
        (
            "inventory/hosts.yaml:",
            "patroni2.hostname",
            "'10.0.2.312' is not a valid IP address",
        ),
        id="bad-host-address",
    ),
    pytest.param(
        "inventory/hosts.yaml",
        "  groups: [synapse]",
        "  groups: [synapse]\n  data: {private_ip: 10.0.5}",
        (
            "synapse1.data.private_ip",
            "'10.0.5' is not an IP address",
        ),
        id="bad-private-ip",
    ),
    pytest.param(
        "config.yaml",
        " - 10.0.0.0/8",
        " - 10.0.0.1/8",
        (
            "synapse.admin_allowlist[0]",
            "has host bits set; did you mean 10.0.0.0/8?",
        ),
        id="cidr-with-host-bits",
    ),
    pytest.param(
        "config.yaml",
        " port: 6432",
        " port: 70000",
        (
            "pgbouncer.port",
            "must be at most 65535",
            "PgBouncer listen port",
        ),
        id="bad-port",
    ),
    pytest.param(
        "inventory/hosts.yaml",
        "hostname: 10.0.3.22",
        "hostname: 10.0.3.21",
        (
            "address 10.0.3.21 is also used by minio1",
            "own address",
        ),
        id="duplicate-address",
    ),
    pytest.param(
        "inventory/defaults.yaml",
        "vip: 10.0.1.10",
        "vip: 10.0.1.11",
        (
            "data.vip",
            "is the address of haproxy1",
        ),
        id="vip-taken-by-a-host",
    ),
    pytest.param(
        "inventory/hosts.yaml",
        "hostname: 10.0.6.71",
        "hostname: 10.9.6.71",
        (
            "backup1.hostname",
            "outside the private networks (10.0.0.0/16)",
        ),
        id="address-outside-private-networks",
    ),
    pytest.param(
        "inventory/defaults.yaml",
        "vip: 10.0.1.10",
        "vip: 192.168.1.10",
        ("inventory/defaults.yaml:13: data.vip", "outside the private networks (10.0.0.0/16)"),
        id="vip-outside-private-networks",
    ),
    pytest.param(
        "inventory/hosts.yaml",
        " groups: [monitoring]",
        " groups: [monitoring, synapse]",
        (
            "monitoring1.groups",
            "synapse-replication 9093/tcp",
            "alertmanager 9093/tcp",
        ),
        id="colocated-services-clash",
    ),
    pytest.param(
        "config.yaml",
        "relay_max_port: 49172",
        "relay_max_port: 49300",
        (
            "firewall.turn_relay_ports",
            "the firewall opens 49152-49172 but coturn relays on 49152-49300",
        ),
        id="turn-range-outside-firewall",
    ),
    pytest.param(
        "config.yaml",
        "pool_mode: transaction",
        "pool_mode: session",
        (
            "pgbouncer.pool_mode",
            "'transaction'",
        ),
        id="pool-mode-must-be-transaction",
    ),
    pytest.param(
        "config.yaml",
        "max_client_conn: 1000",
        "max_client_conn: 100",
        (
            "pgbouncer.max_client_conn",
            "below Synapse's connection budget of 220",
            "at least 220",
        ),
        id="client-connections-below-budget",
    ),
    pytest.param(
        "inventory/hosts.yaml",
        " groups: [backup]",
        " groups: [backups]",
        (
            "backup1.groups[0]",
            "unknown group 'backups'",
        ),
        id="unknown-group",
    ),
    pytest.param(
        "config.yaml",
        "    remote_media: 90d",
        "    remote_media: 90",
        (
            "synapse.retention.remote_media",
            "e.g. 90d",
        ),
        id="lifetime-without-unit",
    ),
    pytest.param(
        "config.yaml",
        "scale: large",
        "scale: [large",
        (
            "config.yaml:",
            "not valid YAML",
        ),
        id="yaml-syntax-error",
    ),
]


@pytest.mark.parametrize(("file", "old", "new", "expected"), BROKEN)
def test_broken_input_is_refused(
    deploy: Deploy, site: Site, file: str, old: str, new: str, expected: tuple[str, ...]
) -> None:
    site.edit(file, old, new)
    refused(deploy, site, *expected)


def test_duplicate_host_name(deploy: Deploy, site: Site) -> None:
    text = (site.inventory / "hosts.yaml").read_text()
    (site.inventory / "hosts.yaml").write_text(text + "patroni1:\n  hostname: 10.0.2.14\n  groups: [patroni]\n")
    refused(deploy, site, "inventory/hosts.yaml:", "patroni1: 'patroni1' appears twice", "unique name")


@pytest.mark.parametrize("host", ["patroni3", "minio4", "haproxy2"])
def test_group_below_minimum(deploy: Deploy, site: Site, host: str) -> None:
    group = host.rstrip("0123456789")
    site.edit("inventory/hosts.yaml", f"{host}:\n", f"{host}:\n  data: {{}}\n")
    site.edit("inventory/hosts.yaml", f"  groups: [{group}", f"  groups: [backup, {group}")  # keep YAML valid
    text = (site.inventory / "hosts.yaml").read_text()
    start = text.index(f"{host}:\n")
    end = text.index("\n\n", start)
    (site.inventory / "hosts.yaml").write_text(text[:start] + text[end + 2 :])
    refused(deploy, site, f"group {group}", "needed for high availability")


def test_optional_group_may_be_empty_when_disabled(deploy: Deploy, site: Site) -> None:
    text = (site.inventory / "hosts.yaml").read_text()
    kept = "\n\n".join(block for block in text.split("\n\n") if "groups: [minio]" not in block)
    (site.inventory / "hosts.yaml").write_text(kept)
    refused(deploy, site, "group minio", "or set minio.enabled: false")
    site.edit("config.yaml", "minio:\n  enabled: true", "minio:\n  enabled: false")
    code, out = deploy(*site.args("--plan"))
    assert code == 0, out


def test_even_etcd_members(deploy: Deploy, site: Site) -> None:
    text = (site.inventory / "hosts.yaml").read_text()
    (site.inventory / "hosts.yaml").write_text(text + "patroni4:\n  hostname: 10.0.2.14\n  groups: [patroni]\n")
    refused(deploy, site, "group patroni", "even count adds no fault tolerance", "odd number")


def test_port_clash_on_one_host(deploy: Deploy, site: Site) -> None:
    site.edit("config.yaml", "node_exporter_port: 9101", "node_exporter_port: 9100")
    out = refused(
        deploy,
        site,
        "synapse1.groups",
        "node-exporter 9100/tcp and synapse-metrics 9100/tcp",
        "monitoring.node_exporter_port",
    )
    assert "patroni1" not in out  # only the host that runs both is named


def test_a_synapse_host_in_the_pgbouncer_group_is_refused_in_native_mode(deploy: Deploy, site: Site) -> None:
    site.edit("config.yaml", "  mode: playbook ", "  mode: native ")
    site.edit("inventory/hosts.yaml", " groups: [synapse]", " groups: [synapse, pgbouncer]")
    refused(
        deploy,
        site,
        "synapse1.groups",
        "pgbouncer 6432/tcp and synapse-pgbouncer 6432/tcp would listen on the same port",
        "keep the pgbouncer group on other hosts",
    )


@pytest.mark.parametrize("path", ["/synapse-admin/", "synapse-admin"])
def test_admin_path(deploy: Deploy, site: Site, path: str) -> None:
    site.edit("config.yaml", "admin_path: /synapse-admin", f"admin_path: {path}")
    refused(deploy, site, "synapse.admin_path", "use '/' or a path without a trailing slash, e.g. '/synapse-admin'")


def test_admin_path_root_is_allowed(deploy: Deploy, site: Site) -> None:
    site.edit("config.yaml", "admin_path: /synapse-admin", "admin_path: /")
    assert deploy(*site.args("--plan"))[0] == 0


def test_schema_problems_of_every_file_reported_together(deploy: Deploy, site: Site) -> None:
    site.edit("config.yaml", "ccu: null", "ccu: many")
    site.edit("inventory/hosts.yaml", "hostname: 10.0.2.12", "hostname: 10.0.2.312")
    refused(deploy, site, "config.yaml:17: ccu", "inventory/hosts.yaml:9: patroni2.hostname")


def test_cross_checks_reported_together(deploy: Deploy, site: Site) -> None:
    site.edit("config.yaml", "admin_path: /synapse-admin", "admin_path: /admin/")
    site.edit("inventory/hosts.yaml", "hostname: 10.0.3.22", "hostname: 10.0.3.21")
    refused(deploy, site, "synapse.admin_path", "address 10.0.3.21")


def test_placeholders_refused_for_a_real_deploy(deploy: Deploy, site: Site) -> None:
    code, out = deploy(*site.args())
    assert code == 2
    assert "nothing was touched" in out and "Traceback" not in out
    assert "config.yaml:9: domain: still has its example value (CHANGE_TO_YOUR_DOMAIN)" in out
    assert "inventory/hosts.yaml" in out and "CHANGE_TO_YOUR_PATRONI1_ADDRESS" in out
    assert "delete the '# CHANGE_TO_YOUR_DOMAIN' comment" in out


def test_bad_flags(deploy: Deploy, site: Site) -> None:
    code, out = deploy(*site.args("--plan", "--limit", "patroni9"))
    assert code == 2 and "patroni9: not a host, group or pattern of the inventory" in out
    code, out = deploy(*site.args("--plan", "--step", "etcd-magic"))
    assert code == 2 and "no such step" in out and "preflight" in out
    with pytest.raises(SystemExit) as exit_info:
        deploy(*site.args("--no-such-flag"))
    assert exit_info.value.code == 2


def test_missing_inventory_file(deploy: Deploy, site: Site) -> None:
    (site.inventory / "groups.yaml").unlink()
    refused(deploy, site, "groups.yaml", "file not found")


# Files that are not what a settings file can be: each refused in bounded time and memory.
LAUGHS = "".join(f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]\n" for n in range(1, 9))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("domain: café\n".encode("latin-1"), "(encoding): not UTF-8 text (byte b'\\xe9'", id="latin-1"),
        pytest.param("domain: x\n".encode("utf-16"), "(encoding): not UTF-8 text", id="utf-16"),
        pytest.param(f"l0: &l0 [x]\n{LAUGHS}".encode(), "holds more than 100000 values", id="alias-bomb"),
        pytest.param(b"a: &a [1, *a]\n", "nested deeper than 64 levels", id="recursive-alias"),
        pytest.param(b"a: " + b"x" * (5 * 1024 * 1024), "larger than 4 MiB", id="huge-file"),
    ],
)
def test_a_file_no_settings_file_can_be_is_refused_in_bounded_memory(
    deploy: Deploy, site: Site, content: bytes, expected: str
) -> None:
    site.config.write_bytes(content)
    tracemalloc.start()
    try:
        out = refused(deploy, site, "config.yaml", expected)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024, f"{peak} bytes at the peak"
    assert len(out) < 20000  # the message names the place, not the expansion


def test_a_bom_and_symlinked_inventory_files_are_fine(deploy: Deploy, site: Site, tmp_path: Path) -> None:
    site.config.write_bytes(b"\xef\xbb\xbf" + site.config.read_bytes())
    moved = tmp_path / "elsewhere"
    site.inventory.rename(moved)
    site.inventory.symlink_to(moved)
    (moved / "hosts.yaml").rename(moved / "hosts.real.yaml")
    (moved / "hosts.yaml").symlink_to(moved / "hosts.real.yaml")
    code, out = deploy(*site.args("--plan"))
    assert code == 0, out


def test_a_symlink_loop_and_a_folder_for_a_file_are_named(deploy: Deploy, site: Site) -> None:
    (site.inventory / "groups.yaml").unlink()
    (site.inventory / "groups.yaml").symlink_to(site.inventory / "groups.yaml")
    refused(deploy, site, "groups.yaml: (file): a symbolic link to nothing (its target is missing, or a loop)")
    code, out = deploy("--config", str(site.root), "--inventory", str(site.inventory), "--plan")
    assert code == 2 and "(file): not a regular file" in out


@pytest.mark.parametrize("flag", ["--report", "--plan-dir"])
def test_an_output_that_cannot_be_written_is_refused_before_the_run(deploy: Deploy, site: Site, flag: str) -> None:
    (site.root / "a-file").write_text("")
    code, out = deploy(*site.args("--plan", flag, str(site.root / "a-file" / "out")))
    assert code == 2 and "nothing was touched" in out and "Traceback" not in out, out
    assert f"{flag}: {site.root}/a-file/out: {site.root}/a-file is a file, so nothing can be made under it" in out
    assert not (site.root / "plan").exists()


def test_a_secrets_file_that_is_not_yaml_is_refused(deploy: Deploy, site: Site) -> None:
    secrets = site.root / ".secrets" / "production.yaml"
    secrets.parent.mkdir(mode=0o700)
    secrets.write_text("synapse_db_password: [unclosed\n")
    secrets.chmod(0o600)
    refused(deploy, site, ".secrets/production.yaml:2: (syntax): not valid YAML")


@pytest.mark.parametrize("name", ["12345", "../../etc", "-x", "café"])
def test_a_host_name_that_is_no_name_is_refused(deploy: Deploy, site: Site, name: str) -> None:
    entry = f"{name}:\n  hostname: 10.0.9.9\n  groups: [coturn]\n"
    (site.inventory / "hosts.yaml").write_text((site.inventory / "hosts.yaml").read_text() + entry)
    refused(deploy, site, "inventory/hosts.yaml:", "is not a name", "quote a name YAML would read as a number")
