"""The artifact cache on the controller: fetch (internet phase) and check.

python runbooks/artifacts.py fetch     # download what is missing, verify, build wheels
python runbooks/artifacts.py check     # is everything there with the right checksum?
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console

from core import artifacts
from core.errors import InputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python runbooks/artifacts.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["fetch", "check"])
    args = parser.parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    failed = False
    for artifact in artifacts.manifest().values():
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
                console.print(f"[red]{problem}[/red]")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
