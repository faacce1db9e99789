"""A page opened in headless Chromium, the way the HTML report and the handbook are checked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

needs_chromium = pytest.mark.skipif(
    not shutil.which("chromium"), reason="chromium is not installed (setup.sh installs it)"
)


def screenshot(page: Path, size: tuple[int, int]) -> int:
    """Open `page`, fail on anything it says to the browser's console, and return how many colours the
    screenshot holds (a blank page has one)."""
    shot = page.with_suffix(".png")
    browser = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
        f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}", page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(browser, capture_output=True, text=True, timeout=120, cwd=page.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    # Chromium logs what a page says to its console as ":CONSOLE:<line>]" (checked with a page that calls
    # console.error); its own D-Bus complaints in a container are not the page's.
    assert "CONSOLE" not in done.stderr, done.stderr
    with Image.open(shot) as image:
        assert image.size == size
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])
