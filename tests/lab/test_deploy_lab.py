"""The deploy runbook against the lab, exactly as an operator runs it."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from core.secrets import fingerprint, load_or_create
from core.settings import Settings
from lab.lab import Lab
from tasks.facts import SECTION
from tests.conftest import load_runbook
from tests.lab.conftest import ssh

Deploy = Callable[..., tuple[int, str]]


def test_a_first_deploy_starts_a_tier_once_its_own_servers_are_ready(
    first_deploy: dict, lab_settings: Settings
) -> None:
    """The package step installs `packages.installs_at_once` servers at a time, the longest chain's first, each
    with the venvs of its Python programs; etcd starts once the Patroni hosts have their packages and foundation,
    while other servers still install."""
    steps = {step["name"]: step for step in first_deploy["steps"]}
    installs = steps["packages"]["hosts"]
    if any(host["status"] != "changed" for host in installs.values()):
        pytest.skip("the lab was deployed before this session's first deploy: nothing was installed")
    spans = {name: (host["at"] - host["seconds"], host["at"]) for name, host in installs.items()}
    at_once = lab_settings.config.packages.installs_at_once
    assert at_once and len(spans) > at_once
    for name, (start, _) in spans.items():
        instant = start + 0.01  # the next host starts as one ends
        assert len([other for other, (began, ended) in spans.items() if began < instant < ended]) <= at_once, name
    patroni = [host.name for host in lab_settings.members("patroni")]
    assert sorted(sorted(spans, key=lambda name: spans[name][0])[:at_once]) == patroni
    ready = max(
        steps[step]["hosts"][name]["at"]
        for step in ("packages", "firewall", "ca-trust", "hosts-file")
        for name in patroni
    )
    assert ready <= steps["etcd"]["at"] < max(ended for _, ended in spans.values())
    # Patroni's venv on its hosts, Synapse's and the state compressor's on synapse1: each installed once, early.
    pip = [
        (host, record["step"])
        for host, records in first_deploy["commands"].items()
        for record in records
        if "/bin/pip install" in record["command"]
    ]
    assert sorted(pip) == sorted([(name, "packages") for name in patroni] + [("synapse1", "packages")] * 2), pip


def test_a_check_run_on_new_servers_names_what_the_deploy_would_do_and_changes_nothing(
    new_servers_check: dict, lab: Lab
) -> None:
    out, new = new_servers_check["out"], {h.name: "" for h in lab.hosts}
    if new_servers_check["before"] != new:
        pytest.skip("the lab was deployed before this session's check run")
    assert new_servers_check["code"] == 0 and "deploy: changes pending" in out, out
    assert "Traceback" not in out, out
    assert out.count("/etc/matrix-platform/site.json: to be written") == len(lab.hosts)
    assert "first backup: database, media, keys" in out  # backup1 has no pgBackRest yet: no backup either
    assert new_servers_check["after"] == new


def test_deploy_then_rerun_changes_nothing(deploy_lab: Deploy, lab: Lab, tmp_path: Path) -> None:
    code, out = deploy_lab()
    assert code == 0, out
    hosts = ssh(lab, "minio3", "cat /etc/hosts").stdout
    assert "198.18.0.10 chat.lab.example" in hosts and "198.18.1.61 synapse1.internal synapse1" in hosts
    assert "127.0.1.1\tminio3" in hosts  # lines outside the block are kept

    report = tmp_path / "rerun.json"
    code, out = deploy_lab("--report", str(report))
    assert code == 0, out
    assert "deploy: no changes" in out
    data = json.loads(report.read_text())
    assert all(h["status"] == "ok" for step in data["steps"] for h in step["hosts"].values())
    assert len(data["commands"]) == 16
    # Everywhere: only commands that read. Each writing primitive leaves its mark in the command.
    writes = ("cat > ", "mv -f ", "apt-get -q -y", "sftp put", " PATCH ", " POST ", "nft -f ", "update-ca-certificates")
    verbs = ("systemctl start", "systemctl restart", "systemctl reload", "systemctl stop", "systemctl enable")
    written = [
        (host, r["command"][:80])
        for host, records in data["commands"].items()
        for r in records
        if any(mark in r["command"] for mark in (*writes, *verbs))
    ]
    assert written == [], written
    # Read ahead: a component's state in one command, its health check in another.
    per_step = Counter((host, r["step"]) for host, records in data["commands"].items() for r in records)
    assert {key: n for key, n in per_step.items() if n > 2} == {}
    # Nothing changed, so every step's read-ahead on a host came from one command: the run's read.
    read_ahead = f"echo '{SECTION}"
    reads = Counter(
        host for host, records in data["commands"].items() for r in records if r["command"].startswith(read_ahead)
    )
    assert reads == dict.fromkeys(data["commands"], 1), reads
    # The graph ran steps side by side; --serial runs the same ones one after another, in the listed order.
    assert overlapping(data)
    serial = tmp_path / "serial.json"
    code, out = deploy_lab("--serial", "--report", str(serial))
    assert code == 0 and "deploy: no changes" in out, out
    in_order = json.loads(serial.read_text())
    assert [s["name"] for s in in_order["steps"]] == [s["name"] for s in data["steps"]]
    assert not overlapping(in_order)


def overlapping(report: dict) -> list[tuple[str, str]]:
    """Pairs of steps of a run's report where the later one started before the earlier one ended."""
    spans = sorted((s["at"], s["at"] + s["seconds"], s["name"]) for s in report["steps"] if s["at"])
    return [(one[2], two[2]) for one, two in pairwise(spans) if two[0] < one[1]]


def test_hand_edit_inside_the_block_is_repaired(deploy_lab: Deploy, lab: Lab) -> None:
    ssh(lab, "coturn2", "sudo sed -i 's/^198.18.0.10 chat/198.18.9.9 chat/' /etc/hosts")
    code, out = deploy_lab("--step", "hosts-file", "--limit", "coturn2", "--verbose")
    assert code == 0, out
    assert "-198.18.9.9 chat.lab.example" in out and "+198.18.0.10 chat.lab.example" in out
    assert ssh(lab, "coturn2", "getent hosts chat.lab.example").stdout.split() == ["198.18.0.10", "chat.lab.example"]


def test_duplicate_host_names_stop_the_deploy(deploy_lab: Deploy, lab: Lab) -> None:
    ssh(lab, "patroni2", "sudo hostname patroni1")
    try:
        code, out = deploy_lab("--step", "preflight")
    finally:
        ssh(lab, "patroni2", "sudo hostname patroni2")
    assert code == 1
    assert "host name 'patroni1' is also used by another server" in out and "health gate failed" in out


def test_foreign_process_on_a_platform_port_stops_the_deploy(deploy_lab: Deploy, lab: Lab) -> None:
    # LiveKit's port on a livekit host: its binary is not in the lab's artifact cache, so
    # nothing of the platform ever holds it here.
    ssh(
        lab,
        "livekit1",
        "sudo systemd-run --unit mha-squatter python3 -m http.server 7880 && "
        "timeout 10 bash -c 'until (exec 3<>/dev/tcp/127.0.0.1/7880) 2>/dev/null; do sleep 0.2; done'",
    )
    try:
        code, out = deploy_lab()
    finally:
        ssh(lab, "livekit1", "sudo systemctl stop mha-squatter", check=False)
    assert code == 1
    assert "livekit1: not ready" in out and "port 7880/tcp, needed by livekit-http, is held by python3" in out
    assert "hosts-file" in out and "not run" in out  # later steps wait for a healthy preflight


def test_every_change_a_rerun_makes_is_reported(deploy_lab: Deploy, lab: Lab, tmp_path: Path) -> None:
    """A unit stopped, a file edited, a package removed by hand: the re-run puts each back and says so."""
    defaults = "/etc/default/prometheus-node-exporter"
    ssh(lab, "backup1", "sudo systemctl stop prometheus-node-exporter")
    ssh(lab, "coturn1", f"echo '# edited by hand' | sudo tee -a {defaults} >/dev/null")
    ssh(lab, "minio1", "sudo DEBIAN_FRONTEND=noninteractive apt-get -q -y remove prometheus-node-exporter")
    report = tmp_path / "report.json"
    code, out = deploy_lab("--step", "node-exporter", "--report", str(report))
    assert code == 0, out
    assert "deploy: changes made" in out
    [step] = [s for s in json.loads(report.read_text())["steps"] if s["name"] == "node-exporter"]
    hosts = step["hosts"]
    changed = {name: host["diff"] for name, host in hosts.items() if host["status"] == "changed"}
    assert set(changed) == {"backup1", "coturn1", "minio1"}, changed
    assert "prometheus-node-exporter.service: stopped → start" in changed["backup1"]
    assert f"{defaults}: content" in changed["coturn1"] and "-# edited by hand" in changed["coturn1"]
    assert "install: prometheus-node-exporter" in changed["minio1"]
    assert "prometheus-node-exporter.service: stopped → start" in changed["minio1"]
    for host in changed:
        assert ssh(lab, host, "systemctl is-active prometheus-node-exporter").stdout.strip() == "active"
    code, out = deploy_lab("--step", "node-exporter")
    assert code == 0 and "deploy: no changes" in out, out


def test_lab_up_again_leaves_what_the_deploy_made(deployed: None, lab: Lab) -> None:
    assert lab.up().booted == []
    names = ssh(lab, "coturn1", "getent hosts patroni1.internal chat.lab.example").stdout.split()
    assert names == ["198.18.1.11", "patroni1.internal", "patroni1", "198.18.0.10", "chat.lab.example"], names


def test_another_secrets_file_is_refused_before_anything_changes(
    deploy_lab: Deploy, lab: Lab, lab_settings: Settings, tmp_path: Path
) -> None:
    identity = "sudo cat /etc/matrix-platform/site.json"
    before = {h.name: ssh(lab, h.name, identity).stdout for h in lab.hosts}
    assert all(json.loads(text)["site_id"] == lab_settings.secrets["site_id"] for text in before.values())
    # The lab's config copied elsewhere: no secrets file beside it, so the run would make new ones.
    config = tmp_path / "config.lab.yaml"
    shutil.copy(lab_settings.config_path, config)
    report = tmp_path / "report.json"
    code, out = deploy_lab("--config", str(config), "--report", str(report))
    assert code == 2, out
    assert "refusing to start, nothing was changed" in out and "nothing to do" not in out
    assert f"{tmp_path}/.secrets/lab.yaml (made by this run: there was none; removed again)" in out
    assert "it belongs to site id" in out and "--secrets FILE" in out
    assert not (tmp_path / ".secrets" / "lab.yaml").exists() and not (tmp_path / ".secrets" / "lab-ca").exists()
    commands = json.loads(report.read_text())["commands"]
    assert len(commands) == 16 and {r["step"] for records in commands.values() for r in records} == {"site-identity"}
    # One secret changed in a copy of the site's file, named with --secrets: refused as well.
    changed = tmp_path / "secrets.yaml"
    other_value = secrets.token_urlsafe(16)  # a value the redactor would not know
    changed.write_text(yaml.safe_dump(lab_settings.secrets.values | {"synapse_db_password": other_value}))
    changed.chmod(0o600)
    code, out = deploy_lab("--secrets", str(changed), "--check")
    assert code == 2, out
    assert "16 hosts: its secrets fingerprint is" in out and "a secret in this file has another value" in out
    assert {h.name: ssh(lab, h.name, identity).stdout for h in lab.hosts} == before


def test_a_secret_rotated_on_purpose_reaches_every_consumer(
    deploy_lab: Deploy, lab: Lab, lab_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = lab_settings.secrets["turn_shared_secret"]
    report = tmp_path / "report.json"
    chosen, options = load_runbook("rotate_secret").runbook(
        ["turn_shared_secret", "--lab", "--yes", "--report", str(report)]
    )
    code = chosen.main(options)
    out = capsys.readouterr().out
    fresh = load_or_create(lab_settings.secrets.path, {})  # read as it is: nothing to add
    lab_settings.secrets.values.update(fresh.values)  # later tests read the file as any new run would
    assert code == 0, out
    # Every server's identity rewritten, each shown changed, none also counted as having nothing to do.
    identity_part = out.split(" site-identity — ")[1].split("\n▶ ")[0]
    assert identity_part.count("changed  ") == len(lab.hosts) and "nothing to do" not in identity_part, identity_part
    new = fresh["turn_shared_secret"]
    assert new != old and fresh["previous turn_shared_secret"] == old
    assert old not in out and new not in out and old not in report.read_text() and new not in report.read_text()
    changed = {s["name"] for s in json.loads(report.read_text())["steps"] if s["status"] == "changed"}
    assert {"site-identity", "coturn", "synapse"} <= changed, changed
    served = "sudo sed -n 's/^static-auth-secret=//p' /etc/turnserver.conf | sha256sum"
    for host in ("coturn1", "coturn2"):
        assert ssh(lab, host, served).stdout.split()[0] == hashlib.sha256(f"{new}\n".encode()).hexdigest()
    identity = json.loads(ssh(lab, "synapse1", "sudo cat /etc/matrix-platform/site.json").stdout)
    assert identity["secrets"] == fingerprint(fresh, tuple(identity["names"]))
    code, out = deploy_lab()
    assert code == 0 and "deploy: no changes" in out, out
