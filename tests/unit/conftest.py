"""Fixtures the unit tests share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.settings import Settings, load_settings
from lab import LAB_CONFIG, LAB_INVENTORY
from tasks.registry import CATALOG
from tests.conftest import REPO


@pytest.fixture
def lab_settings() -> Settings:
    """The lab's settings, read offline (its example values accepted)."""
    return load_settings(LAB_CONFIG, LAB_INVENTORY, catalog=CATALOG, allow_placeholders=True)[0]


@pytest.fixture
def shipped_settings(tmp_path: Path) -> Settings:
    """config.yaml and inventory/ as shipped, read offline (a copy: reading makes the site's secrets file)."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    shutil.copytree(REPO / "inventory", tmp_path / "inventory", ignore=shutil.ignore_patterns("lab"))
    return load_settings(tmp_path / "config.yaml", tmp_path / "inventory", catalog=CATALOG, allow_placeholders=True)[0]
