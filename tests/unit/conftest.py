"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from core.settings import Settings, load_settings
from lab import LAB_CONFIG, LAB_INVENTORY
from tasks.registry import CATALOG


@pytest.fixture
def lab_settings() -> Settings:
    """The lab's settings, read offline (its example values accepted)."""
    return load_settings(LAB_CONFIG, LAB_INVENTORY, catalog=CATALOG, allow_placeholders=True)[0]
