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

from rich.markup import escape
from rich.table import Table

from core.config import WorkerCounts
from core.sizing import explain, for_config
from runbooks.offline import add_settings_options, read_settings
from runbooks.terminal import terminal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python runbooks/sizing.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ccu", type=int, default=None, help="concurrent users, 10..200000 (default: config.yaml)")
    add_settings_options(parser)
    args = parser.parse_args(argv)
    if args.ccu is not None and not 10 <= args.ccu <= 200_000:
        parser.error(f"--ccu {args.ccu}: give between 10 and 200000 concurrent users")
    console = terminal()
    read = read_settings(args, console, "sizing")
    if read is None:
        return 2
    settings, config_path = read.settings, read.config
    config = settings.config
    if args.ccu is not None:  # a what-if: the derived counts, not this site's explicit ones
        workers = WorkerCounts(media_repository=config.synapse.workers.media_repository)
        synapse = config.synapse.replace(workers=workers)
        config = config.replace(ccu=args.ccu, synapse=synapse)
    pgbouncers = len(settings.members("pgbouncer"))
    sizing = for_config(config, pgbouncers)
    table = Table(
        title=f"sizing for {sizing.ccu:,} concurrent users ({config_path.name}, {pgbouncers} PgBouncer hosts)"
    )
    for column in ("what", "value", "how"):
        table.add_column(column, overflow="fold")
    explicit = {name for name, value in config.synapse.workers.dump().items() if value is not None}
    for line in explain(sizing, explicit, config.pgbouncer.max_client_conn):
        table.add_row(line.what, line.value, escape(line.formula))
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
