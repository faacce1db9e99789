"""Handbook: this deployment's operating manual, generated from its config, inventory and components.

    python runbooks/handbook.py               # config.yaml and inventory/ → handbook/<site>/
    python runbooks/handbook.py --lab         # the lab's
    python runbooks/handbook.py --out DIR     # somewhere else

Writes handbook.md, handbook.html (one self-contained page) and architecture.svg: the
architecture picture, the servers and their addresses, DNS records and /.well-known, the
perimeter ports, every port of every server and who may open it (what the firewall loads),
hardware and sizing, where the growing data lives and how long Synapse keeps it, where
every secret lives (never a value), and every procedure (deploy, checks, drills, backups,
restore, disaster recovery, certificates, maintenance, secret rotation) with its command,
its steps on the real servers and what to do when it fails. Touches no host; regenerate it
after changing the config or inventory. Exit 2 on bad input.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.markup import escape

from core.paths import unwritable
from core.provenance import commit, settings_digest
from runbooks.handbook_content import REPO, sections, site_flags
from runbooks.handbook_document import Handbook, html, markdown
from runbooks.offline import add_settings_options, read_settings
from runbooks.terminal import terminal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python runbooks/handbook.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_settings_options(parser)
    parser.add_argument("--out", type=Path, default=None, help="folder to write into (default: handbook/<site>)")
    args = parser.parse_args(argv)
    console = terminal()
    if args.out is not None and (problem := unwritable(args.out, "--out", folder=True)):
        console.print(f"[bold red]handbook: {escape(str(problem))}[/bold red]")
        return 2
    read = read_settings(args, console, "handbook")
    if read is None:
        return 2
    settings = read.settings
    book = Handbook(
        f"Handbook of {settings.config.homeserver_fqdn} (site {settings.site})",
        (
            ("config", str(read.config)),
            ("inventory", str(read.inventory)),
            ("settings sha256", settings_digest(read.config, read.inventory)),
            ("tool commit", commit()),
        ),
        sections(settings, site_flags(args.lab, args.config, args.inventory)),
    )
    out = args.out or REPO / "handbook" / settings.site
    out.mkdir(parents=True, exist_ok=True)
    for picture in book.pictures():
        (out / picture.file).write_text(picture.svg)
    (out / "handbook.md").write_text(markdown(book))
    (out / "handbook.html").write_text(html(book))
    console.print(f"handbook of {settings.site}: {out / 'handbook.md'}, {out / 'handbook.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
