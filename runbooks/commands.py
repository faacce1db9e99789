"""A runbook's sub-commands, each declared once: its name, what it does, its own flags and the runbook it runs.

Every runbook file used to parse its sub-command by hand: `maintenance.py --help` exited 2
(its command was required before help), `certificates.py --lab check` ran `distribute`
(only the first word was looked at), and each sub-command's flags were only in prose. Here
a runbook declares its `Commands`; `--help` lists them with their flags, `COMMAND --help`
shows the command's own flags beside the runbook options and its steps, and flags go
before or after the sub-command alike. A runbook without sub-commands declares one
command named "" to get its own flags into --help the same way.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runbooks.shell import Runbook, value_options


@dataclass(frozen=True)
class Flag:
    """One flag of a command, as `argparse.ArgumentParser.add_argument` takes it."""

    names: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def takes_value(self) -> bool:
        return self.options.get("action") not in ("store_true", "store_false")

    @property
    def usage(self) -> str:
        """How it is written, e.g. `--name N`."""
        metavar = self.options.get("metavar") or self.names[0].lstrip("-").upper()
        return " ".join(self.names) + (f" {metavar}" if self.takes_value else "")

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        parser.add_argument(*self.names, **self.options)


def flag(*names: str, **options: Any) -> Flag:
    return Flag(names, options)


@dataclass(frozen=True)
class Command:
    """A sub-command: `runbook` builds what it runs from its parsed `flags`; `check` names a problem with
    their values that argparse cannot see ("" when there is none), refused with exit 2."""

    name: str
    summary: str
    runbook: Callable[[argparse.Namespace], Runbook] | None
    flags: tuple[Flag, ...] = ()
    check: Callable[[argparse.Namespace], str] | None = None
    # Instead of a runbook: a command that touches no host and reads its own options (the
    # firewall's matrix), called with them; its exit code.
    offline: Callable[[list[str]], int] | None = None


@dataclass(frozen=True)
class Commands:
    """The sub-commands of the runbook file `file` (e.g. certificates.py); `default` runs when none is named."""

    file: str
    doc: str
    commands: tuple[Command, ...]
    default: str | None = None

    @property
    def prog(self) -> str:
        return f"python runbooks/{self.file}"

    def main(self, argv: list[str]) -> int:
        command, rest = self.command_in(argv)
        if command.offline:
            return command.offline(rest)
        runbook, rest = self.runbook_of(command, rest)
        return runbook.main(rest)

    def choose(self, argv: Sequence[str]) -> tuple[Runbook, list[str]]:
        """The runbook of the command `argv` names (anywhere in it), and the options left for the runbook shell."""
        return self.runbook_of(*self.command_in(argv))

    def command_in(self, argv: Sequence[str]) -> tuple[Command, list[str]]:
        """The command `argv` names, or the default one, and the rest of `argv`.

        Exits 0 after printing the list of commands for --help without a command, and 2 when a
        command is needed and none is named.
        """
        named = {command.name: command for command in self.commands}
        helping = any(word in ("-h", "--help") for word in argv)
        at = self.named_at(argv)
        if at is None and (self.default is None or (helping and len(self.commands) > 1)):
            self.print_help()
            if not helping:
                print(f"\n{self.prog}: name a command: {', '.join(named)}", file=sys.stderr)
            sys.exit(0 if helping else 2)
        command = named[argv[at]] if at is not None else named[self.default or ""]
        return command, [word for index, word in enumerate(argv) if index != at]

    def runbook_of(self, command: Command, argv: list[str]) -> tuple[Runbook, list[str]]:
        """The runbook `command` builds from its own flags in `argv`, and the rest of `argv`; exit 2 when its
        flags' values are refused."""
        assert command.runbook is not None, f"{command.name} runs no runbook"
        own = argparse.ArgumentParser(prog=self.usage(command), add_help=False, allow_abbrev=False)
        for item in command.flags:
            item.add_to(own)
        known, rest = own.parse_known_args(argv)
        problem = self.misplaced(command, rest) or (command.check(known) if command.check else "")
        if problem:
            own.error(problem)
        runbook = command.runbook(known)
        runbook.prog, runbook.flags = self.usage(command), command.flags
        return runbook, rest

    def misplaced(self, command: Command, rest: Sequence[str]) -> str:
        """A flag in `rest` that only other commands take, named with the commands that do ("" if none)."""
        for word in rest:
            name = word.split("=")[0]
            owners = [other.name for other in self.commands for item in other.flags if name in item.names]
            if owners:
                return f"{name} belongs to {', '.join(owners)}, not to {command.name or 'this runbook'}"
        return ""

    def named_at(self, argv: Sequence[str]) -> int | None:
        """Where `argv` names a command: the first word that is not an option or an option's value (exit 2 if it
        names none); None when there is no such word."""
        takes = value_options() | {
            name for command in self.commands for item in command.flags if item.takes_value for name in item.names
        }
        named = {command.name for command in self.commands if command.name}
        if not named:  # a runbook without sub-commands: a stray word is the runbook parser's to refuse
            return None
        value_next = False
        for index, word in enumerate(argv):
            if not value_next and word in named:
                return index
            if not value_next and not word.startswith("-"):  # the runbook options take no other word
                print(f"{self.prog}: {word}: no such command; use one of {', '.join(named)}", file=sys.stderr)
                sys.exit(2)
            value_next = not value_next and word in takes
        return None

    def usage(self, command: Command) -> str:
        return f"{self.prog} {command.name}".rstrip()

    def print_help(self) -> None:
        """The runbook's description, then every command with what it does and its own flags."""
        shown = "[COMMAND] " if self.default is not None else "COMMAND "
        print(f"usage: {self.prog} {shown}[options]\n\n{self.doc.strip()}\n\ncommands:")
        names = {
            command.name: command.name + (" (default)" if command.name == self.default else "")
            for command in self.commands
        }
        width = max(len(name) for name in names.values())
        for command in self.commands:
            name = names[command.name]
            indent = " " * (width + 4)
            print(textwrap.fill(command.summary, 100, initial_indent=f"  {name:{width}}  ", subsequent_indent=indent))
            for item in command.flags:
                print(f"{indent}{item.usage}: {item.options.get('help', '')}")
        print(
            f"\n{self.prog} COMMAND --help shows the command's flags, the runbook options\n"
            "(--lab, --plan, --check, --limit, …: before or after the command) and its steps."
        )
