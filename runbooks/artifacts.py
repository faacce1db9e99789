"""The artifact cache on the controller: fetch (internet phase), import, check.

python runbooks/artifacts.py fetch [NAME ...]   # download what is missing, verify, build wheels
python runbooks/artifacts.py import FILE ...     # take files downloaded elsewhere, if their sha256 is the pinned one
python runbooks/artifacts.py check               # is everything there, pinned, with the right checksum?
python runbooks/artifacts.py lock NAME REQUIREMENT  # maintainers: pin a wheel set anew (e.g. a Synapse upgrade)

Names are the entries of artifacts/manifest.yaml (patroni, minio, mc, livekit-server, …).
A tier whose artifact is missing or unpinned is skipped by the deploy, with a message.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.markup import escape

from core import artifacts
from core.errors import InputError
from runbooks.terminal import terminal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python runbooks/artifacts.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["fetch", "import", "check", "lock"])
    parser.add_argument(
        "items", nargs="*", help="fetch: artifact names (default: all); import: files; lock: NAME REQUIREMENT"
    )
    args = parser.parse_args(argv)
    console = terminal()
    if args.action == "lock":
        if len(args.items) != 2:
            parser.error("lock needs NAME and REQUIREMENT, e.g. lock synapse 'matrix-synapse[redis]==1.163.2'")
        console.print(f"pinned: {artifacts.lock(*args.items)}")
        return 0
    manifest = artifacts.manifest()
    failed = False
    if args.action == "import":
        if not args.items:
            parser.error("import needs at least one file")
        for name in args.items:
            try:
                console.print(artifacts.import_file(Path(name)))
            except InputError as exc:
                failed = True
                console.print(f"[red]{escape(str(exc.problems[0]))}[/red]")
        return 2 if failed else 0
    unknown = [n for n in args.items if n not in manifest]
    if unknown:
        console.print(f"[red]unknown artifact(s) {', '.join(unknown)}; the manifest has: {', '.join(manifest)}[/red]")
        return 2
    for artifact in (manifest[n] for n in args.items or manifest):
        try:
            if args.action == "fetch":
                for line in artifacts.fetch(artifact) or ["already in the cache"]:
                    console.print(f"{artifact.name} {artifact.version}: {line}")
            found = artifacts.problems(artifact)
            if found:
                raise InputError(found)
            console.print(f"{artifact.name} {artifact.version}: ok")
        except InputError as exc:
            failed = True
            for problem in exc.problems:
                console.print(f"[red]{escape(str(problem))}[/red]")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
