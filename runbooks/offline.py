"""The settings of a runbook that touches no host (sizing, the firewall matrix): the same --config,
--inventory and --lab as every runbook, the example values accepted, bad input answered with exit 2."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from core.errors import InputError
from core.paths import real
from core.settings import Settings, load_settings
from lab import LAB_CONFIG, LAB_INVENTORY
from tasks.registry import CATALOG

REPO = Path(__file__).resolve().parent.parent


def default_paths(lab: bool) -> tuple[Path, Path]:
    """The config file and inventory folder a runbook reads unless told otherwise."""
    return (LAB_CONFIG, LAB_INVENTORY) if lab else (REPO / "config.yaml", REPO / "inventory")


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="settings file (default: config.yaml)")
    parser.add_argument("--inventory", type=Path, default=None, help="inventory folder (default: inventory)")
    parser.add_argument("--lab", action="store_true", help="use config.lab.yaml and inventory/lab")


@dataclass(frozen=True)
class Read:
    settings: Settings
    config: Path
    inventory: Path


def read_settings(args: argparse.Namespace, console: Console, runbook: str) -> Read | None:
    """The settings the options name; None once the problems (file, key, fix) are printed."""
    config, inventory = default_paths(args.lab)
    config, inventory = real(args.config or config), real(args.inventory or inventory)
    try:
        settings, _ = load_settings(config, inventory, catalog=CATALOG, allow_placeholders=True)
    except InputError as exc:
        console.print(f"[bold red]{runbook}: cannot read the settings:[/bold red]")
        for problem in exc.problems:
            console.print(escape(str(problem)))
        return None
    return Read(settings, config, inventory)
