"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from core.settings import Settings, load_settings
from lab import LAB_CONFIG, LAB_INVENTORY


@pytest.fixture
def lab_settings() -> Settings:
    """The lab's settings, read offline (its example values accepted)."""
    return load_settings(LAB_CONFIG, LAB_INVENTORY, allow_placeholders=True)[0]
