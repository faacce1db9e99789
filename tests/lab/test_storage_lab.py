"""The storage report against the deployed lab: every server's volumes, the database's largest tables, the media."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.settings import Settings
from lab.lab import Lab
from tests.conftest import load_runbook
from tests.lab.conftest import patroni_cluster, ssh

TABLE_NAMES = "SELECT relname FROM pg_stat_user_tables"


def test_the_storage_report_names_every_volume_the_largest_tables_and_the_media(
    deployed: None, lab: Lab, lab_settings: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report = tmp_path / "storage.json"
    chosen, rest = load_runbook("maintenance").runbook(["storage", "--lab", "--report", str(report)])
    code = chosen.main(rest)
    out = capsys.readouterr().out
    assert code == 0, out  # the lab's volumes are the machine's disk, far from full
    steps = {step["name"]: step for step in json.loads(report.read_text())["steps"]}
    volumes = steps["volumes"]["report"]
    for host in lab_settings.hosts:
        assert f"\n  {host} " in volumes, (host, volumes)
    # node-exporter reports no overlay filesystem (the lab's roots): their growth is honestly unknown.
    assert "no metrics" in volumes and "growth:" in volumes
    tables = steps["database-usage"]["report"]
    assert "oldest transaction ID age" in tables
    listed = [line.split()[0] for line in tables.splitlines()[2:-1]]
    leader = next(m["name"] for m in patroni_cluster(lab)["members"] if m["role"] == "leader")
    names = ssh(lab, leader, f"sudo runuser -u postgres -- psql -XAtq -d synapse -c '{TABLE_NAMES}'").stdout.split()
    assert len(listed) == 10 and set(listed) <= set(names) and len(names) > 100, tables  # Synapse's own tables
    media = steps["media-usage"]["report"]
    assert "/var/lib/synapse/media" in media and "local_content" in media, media
