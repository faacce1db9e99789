"""Sizing: the worker counts, database connections and storage a deployment gets, with the formulas.

    python runbooks/sizing.py               # what config.yaml deploys (its scale or ccu, explicit worker counts)
    python runbooks/sizing.py --ccu 7000    # derived for any number of concurrent users
    python runbooks/sizing.py --lab         # the lab's config.lab.yaml and inventory/lab

Reads the config and the inventory (PgBouncer hosts) only; touches no host. The deploy
uses exactly these figures (Synapse workers, PgBouncer, PostgreSQL max_connections).
Exit 2 on bad input.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.config import WorkerCounts
from core.errors import InputError
from core.settings import load_settings
from core.sizing import explain, for_config
from lab import LAB_CONFIG, LAB_INVENTORY
from tasks.registry import CATALOG

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python runbooks/sizing.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ccu", type=int, default=None, help="concurrent users, 10..200000 (default: config.yaml)")
    parser.add_argument("--config", type=Path, default=None, help="settings file (default: config.yaml)")
    parser.add_argument("--inventory", type=Path, default=None, help="inventory folder (default: inventory)")
    parser.add_argument("--lab", action="store_true", help="use config.lab.yaml and inventory/lab")
    args = parser.parse_args(argv)
    if args.ccu is not None and not 10 <= args.ccu <= 200_000:
        parser.error(f"--ccu {args.ccu}: give between 10 and 200000 concurrent users")
    config_path = args.config or (LAB_CONFIG if args.lab else REPO / "config.yaml")
    inventory = args.inventory or (LAB_INVENTORY if args.lab else REPO / "inventory")
    console = Console(highlight=False, soft_wrap=True)
    try:
        settings, _ = load_settings(
            config_path.resolve(), inventory.resolve(), catalog=CATALOG, allow_placeholders=True
        )
    except InputError as exc:
        console.print("[bold red]sizing: cannot read the settings:[/bold red]")
        for problem in exc.problems:
            console.print(escape(str(problem)))
        return 2
    config = settings.config
    if args.ccu is not None:  # a what-if: the derived counts, not this site's explicit ones
        workers = WorkerCounts(media_repository=config.synapse.workers.media_repository)
        synapse = config.synapse.model_copy(update={"workers": workers})
        config = config.model_copy(update={"ccu": args.ccu, "synapse": synapse})
    pgbouncers = len(settings.members("pgbouncer"))
    sizing = for_config(config, pgbouncers)
    table = Table(
        title=f"sizing for {sizing.ccu:,} concurrent users ({config_path.name}, {pgbouncers} PgBouncer hosts)"
    )
    for column in ("what", "value", "how"):
        table.add_column(column, overflow="fold")
    explicit = {name for name, value in config.synapse.workers.model_dump().items() if value is not None}
    for line in explain(sizing, explicit, config.pgbouncer.max_client_conn):
        table.add_row(line.what, line.value, escape(line.formula))
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
