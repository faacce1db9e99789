"""The shell every runbook shares: flags, settings, steps, gates, display, report, exit codes.

A runbook is a list of named steps. Each step targets inventory groups, runs in parallel
across their hosts (or one host at a time when order matters) and may end in a health
gate. Nornir records failures silently (`raise_on_error` is off and `failed_hosts` is
shared between filtered copies), so the shell checks every step's result itself and
stops before any step that depends on a failed one.

Exit codes: 0 all good, 1 some host failed, 2 bad input before any host was touched.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import gc
import io
import json
import logging
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from nornir.core import Nornir
from nornir.core.configuration import Config
from nornir.core.inventory import Group, Groups, Host, Hosts, Inventory, ParentGroups
from nornir.core.plugins.connections import ConnectionPluginRegister
from nornir.core.plugins.runners import RunnerPlugin
from nornir.core.state import GlobalState
from nornir.core.task import AggregatedResult, MultiResult, Task
from nornir.plugins.inventory.simple import _get_defaults, _get_inventory_element  # nornir is pinned
from nornir.plugins.runners import ThreadedRunner
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from core import artifacts
from core.connection import CONNECTION, RUN_READS, CommandRecord, FabricConnection, RunReads, current
from core.errors import InputError, InputProblem
from core.mode import Mode
from core.paths import real, unwritable
from core.provenance import commit, settings_digest
from core.secrets import Redactor
from core.settings import Settings, load_settings
from core.step import Step, direct_needs, waits_for
from core.yamlsource import SafeLoader
from runbooks.display import (
    HostOutcome,
    Progress,
    Running,
    StepOutcome,
    checklist_table,
    checklist_verdict,
    failure_text,
    grouped,
    host_outcome,
    summary_table,
)
from runbooks.host_board import FAILED, LOST, HostBoard, HostRunner
from runbooks.offline import default_paths
from runbooks.report_html import render as render_html
from runbooks.terminal import terminal
from tasks import site_identity
from tasks.facts import Reading
from tasks.registry import CATALOG

if TYPE_CHECKING:
    from runbooks.commands import Flag

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2
MAX_THREADS = 100


class RollingRunner:
    """One host at a time, in a step's order, stopping at the first host that fails: the
    hosts after it are left untouched (a rolling restart must not go past a host that did
    not come back healthy)."""

    def __init__(self, key: Callable[[Host], Any]) -> None:
        self.key = key

    def run(self, task: Task, hosts: list[Host]) -> AggregatedResult:
        result = AggregatedResult(task.name)
        for host in sorted(hosts, key=self.key):
            result[host.name] = task.copy().start(host)
            if result[host.name].failed:
                break
        return result


class StepTag:
    """Nornir processor naming the step in the thread a host's task runs in, so that the host's
    connection records each command with its step also while other steps run at once."""

    def __init__(self, step: str) -> None:
        self.step = step

    def task_started(self, task: Task) -> None:
        return None

    def task_completed(self, task: Task, result: AggregatedResult) -> None:
        return None

    def task_instance_started(self, task: Task, host: Host) -> None:
        current.step = self.step

    def task_instance_completed(self, task: Task, host: Host, result: MultiResult) -> None:
        return None

    def subtask_instance_started(self, task: Task, host: Host) -> None:
        return None

    def subtask_instance_completed(self, task: Task, host: Host, result: MultiResult) -> None:
        return None


IDENTITY_STEP = Step(
    "site-identity",
    "the servers carry this run's site id and the fingerprints of its secrets and CA",
    site_identity.read_identity,
)


@dataclass(frozen=True)
class Options:
    config: Path
    inventory: Path
    mode: Mode
    steps: list[Step]
    limit: list[str]
    verbose: bool
    report: Path | None
    plan_dir: Path
    lab: bool
    serial: bool = False  # one step after another even where the runbook's steps form a graph
    argv: tuple[str, ...] = ()  # as given, for the command that finishes hosts that dropped out


@dataclass(frozen=True)
class Dropped:
    """A host that left the run: it stopped answering, or a step on it needed a peer that did."""

    host: str
    address: str
    step: str
    reason: str
    at: float  # when the run gave up on it (seconds since the epoch)


class Runbook:
    def __init__(
        self,
        name: str,
        description: str,
        steps: list[Step],
        *,
        confirm: bool = False,
        checklist: bool = False,
        graph: bool = False,
        prepare: Callable[[Settings, Mode], Settings] | None = None,
    ) -> None:
        self.name = name
        # Steps run as soon as those they are `after` are done, independent ones at the same
        # time (the deploy); otherwise, or with --serial, one after another in the list's order.
        self.graph = graph
        self.description = description
        self.steps = steps
        self.confirm = confirm
        # A change of the settings' own the runbook makes once its input is valid, before any
        # host is contacted (rotate_secret.py: a new value for one secret).
        self.prepare = prepare
        # A checklist (validate.py) runs every step whatever failed before: each is a check of its own.
        self.checklist = checklist
        self.console = terminal()
        self.changed_steps: set[str] = set()  # the steps that changed something in the run under way
        self.provenance: dict[str, str] = {}  # what the run under way is, for its report
        self.running: Running | None = None  # the graph's steps under way, on a terminal's live line
        # How the operator calls it, and the flags of its command (runbooks.commands), shown in --help.
        self.prog = f"python runbooks/{name}.py"
        self.flags: Sequence[Flag] = ()

    def parser(self) -> argparse.ArgumentParser:
        width = max(len(s.name) for s in self.steps)
        needs = direct_needs(self.steps) if self.graph else {}
        lines = []
        for number, step in enumerate(self.steps, 1):
            head = f"  {number}. {step.name:{width}}  "
            lines.append(head + step.summary)
            if needs.get(step.name):
                lines.append(f"{'':{len(head)}}after: {', '.join(needs[step.name])}")
        listing = "\n".join(lines)
        heading = (
            "steps (each starts once the steps it is after are done; --serial: one after another, in this order)"
            if self.graph
            else "steps, in order"
        )
        parser = argparse.ArgumentParser(
            prog=self.prog,
            allow_abbrev=False,
            description=self.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=f"{heading}:\n{listing}\n\nexit codes: 0 all good, 1 a host failed, "
            "2 bad input (nothing was touched)",
        )
        add_runbook_options(parser, serial=self.graph)
        if self.flags:
            own = parser.add_argument_group(f"{self.prog} options")
            for item in self.flags:
                item.add_to(own)
        return parser

    def main(self, argv: list[str] | None = None) -> int:
        given = list(sys.argv[1:] if argv is None else argv)
        args = self.parser().parse_args(given)
        try:
            options = self._options(args, given)
            # The lab is a test bed: the example values of config.yaml are fine there.
            if args.secrets and not args.secrets.is_file():
                raise InputError(
                    [
                        InputProblem(
                            "--secrets",
                            str(args.secrets),
                            "not a file" if args.secrets.exists() else "no such file",
                            "name the site's existing secrets file (a new site's file is made by a run without it)",
                        )
                    ]
                )
            settings, warnings = load_settings(
                options.config,
                options.inventory,
                catalog=CATALOG,
                allow_placeholders=options.mode is Mode.PLAN or options.lab,
                secrets_file=real(args.secrets) if args.secrets else None,
            )
            missing = [
                p
                for name in sorted({a for s in options.steps if s.used(settings) for a in s.artifacts})
                for p in artifacts.problems(artifacts.manifest()[name])
            ]
            missing += [p for s in options.steps if s.used(settings) and s.requires for p in s.requires(settings)]
            if missing and options.mode is not Mode.PLAN:
                raise InputError(missing)
            warnings += [f"{p.key}: {p.message} ({p.fix})" for p in missing]
            written = [
                unwritable(options.report, "--report", folder=False) if options.report else None,
                unwritable(plan_folder(options, settings), "--plan-dir", folder=True)
                if options.mode is Mode.PLAN
                else None,
            ]
            if any(written):
                raise InputError([problem for problem in written if problem])
            options = replace(options, limit=limit_hosts(options.limit, settings, options.inventory))
        except InputError as exc:
            self.console.print(f"[bold red]{self.name}: refusing to start, nothing was touched:[/bold red]")
            for problem in exc.problems:
                self.console.print(escape(str(problem)))
            return EXIT_INPUT
        # A runbook may pause the cyclic garbage collector while its modules and settings load: what
        # they make lives as long as the run, and collecting among it cost the deploy's start 25 ms.
        # Frozen, those objects are left out of every later collection too.
        gc.freeze()
        gc.enable()
        for warning in warnings:
            self.console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
        if self.confirm and options.mode is Mode.APPLY and not args.yes and not self._confirmed(settings):
            return EXIT_INPUT
        if self.prepare:
            settings = self.prepare(settings, options.mode)
        if options.lab and options.mode is not Mode.PLAN and not self._lab_up(settings):
            return EXIT_FAILED
        return self.execute(settings, options)

    def _lab_up(self, settings: Settings) -> bool:
        from lab.lab import Lab, lab_hosts
        from lab.shell import LabError

        try:
            lab = Lab(lab_hosts(settings))
            if not lab.all_running():
                self.console.print("[cyan]bringing the lab up (python runbooks/lab.py up)…[/cyan]")
                report = lab.up()
                self.console.print(f"lab up in {report.seconds:.1f}s")
        except LabError as exc:
            self.console.print(f"[bold red]lab: {escape(str(exc))}[/bold red]")
            return False
        return True

    def _options(self, args: argparse.Namespace, given: list[str]) -> Options:
        names = [s.name for s in self.steps]
        bad = [n for n in args.step + args.skip_step if n not in names]
        if bad:
            raise InputError(
                [InputProblem("--step/--skip-step", ", ".join(bad), "no such step", f"use one of: {', '.join(names)}")]
            )
        steps = [s for s in self.steps if (not args.step or s.name in args.step) and s.name not in args.skip_step]
        mode = Mode.PLAN if args.plan else Mode.CHECK if args.check else Mode.APPLY
        default_config, default_inventory = default_paths(args.lab)
        return Options(
            config=real(args.config or default_config),
            inventory=real(args.inventory or default_inventory),
            lab=args.lab,
            mode=mode,
            steps=steps,
            limit=limited(args.limit),
            verbose=args.verbose,
            report=args.report,
            plan_dir=args.plan_dir or Path(""),
            serial=getattr(args, "serial", False),
            argv=tuple(given),
        )

    def _confirmed(self, settings: Settings) -> bool:
        if not sys.stdin.isatty():
            self.console.print(
                f"{self.name} changes running services on {len(settings.hosts)} hosts of site "
                f"'{settings.site}': pass --yes to run it without a terminal"
            )
            return False
        answer = input(f"Run {self.name} against site '{settings.site}' ({len(settings.hosts)} hosts)? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    def execute(self, settings: Settings, options: Options) -> int:
        """Run the selected steps against the inventory; returns the exit code."""
        plan_dir = plan_folder(options, settings)
        nr = make_nornir(settings, options.mode, plan_dir=plan_dir)
        if options.limit:
            nr = nr.filter(filter_func=lambda host: host.name in options.limit)
        redact: Redactor = nr.config.user_defined["redact"]
        if options.mode is not Mode.PLAN:
            nr.config.user_defined[RUN_READS] = RunReads(lambda host: step_readings(options.steps, settings, host))
        outcomes: list[StepOutcome] = []
        commands: dict[str, list[CommandRecord]] = {}
        reached: dict[str, float] = {}  # when the run began connecting to each host (seconds since the epoch)
        started = time.monotonic()
        mode_note = {
            Mode.PLAN: f"plan mode: writing rendered files to {plan_dir}; no host is contacted",
            Mode.CHECK: "check mode: reading host state only, nothing is changed",
            Mode.APPLY: "",
        }[options.mode]
        if mode_note:
            self.console.print(f"[cyan]{mode_note}[/cyan]")
        dropped: dict[str, Dropped] = {}
        refused: list[str] = []
        self.changed_steps.clear()
        self.provenance = {
            "command": " ".join([self.prog, *map(shlex.quote, options.argv)]),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": commit(),
            "settings_sha256": settings_digest(options.config, options.inventory) if options.report else "",
        }
        new_ca = not settings.ca.cert_path.exists()  # made by this run if it is refused: removed again
        try:
            blocked_by = ""
            if options.mode is not Mode.PLAN:
                identity = self._site_identity(nr, settings, options, redact)
                outcomes.append(identity)
                refused = identity.problems
                blocked_by = "site-identity" if refused else ""
                self._drop(nr, IDENTITY_STEP, identity, settings, dropped)
            if blocked_by:
                outcomes += [
                    StepOutcome(s.name, "not run", note=f"after failure in {blocked_by}") for s in options.steps
                ]
            elif self.graph and not options.serial and options.mode is not Mode.PLAN:
                outcomes += self._run_graph(nr, settings, options, redact, dropped)
            else:
                outcomes += self._run_in_order(nr, settings, options, redact, dropped)
        finally:
            # Every host, not only --limit's: a step may have read a fact from a peer.
            for host in nr.config.user_defined["hosts"].values():
                conn = host.connections.get(CONNECTION)
                if conn is not None:
                    commands[host.name] = list(conn.log)
                    reached[host.name] = conn.opened_at
                host.close_connections()
        elapsed = time.monotonic() - started
        if refused:
            return self._refuse(settings, options, refused, outcomes, (commands, reached), elapsed, redact, new_ca)
        self.console.print(checklist_table(outcomes) if self.checklist else summary_table(outcomes))
        failed = any(o.status == "failed" for o in outcomes)
        changed = any(o.status == "changed" for o in outcomes)
        verdict = (
            checklist_verdict(outcomes)
            if self.checklist
            else "[bold red]FAILED[/bold red]"
            if failed
            else "[yellow]changes made[/yellow]"
            if changed and options.mode is Mode.APPLY
            else "[yellow]changes pending[/yellow]"
            if changed
            else "[green]no changes[/green]"
        )
        if dropped:
            verdict += f", [bold magenta]{len(dropped)} host(s) dropped out[/bold magenta]"
            self._print_dropped(dropped, options, redact)
        self.console.print(f"{self.name}: {verdict} in {elapsed:.1f}s")
        if options.verbose:
            self._print_commands(commands, redact)
        code = EXIT_FAILED if failed or dropped else EXIT_OK
        if options.report:
            self._write_report(options, settings, outcomes, (commands, reached), elapsed, code, redact, dropped)
        return code

    def _run_in_order(
        self, nr: Nornir, settings: Settings, options: Options, redact: Redactor, dropped: dict[str, Dropped]
    ) -> list[StepOutcome]:
        """The steps one after another; after a failure the rest are not run (a checklist runs each but
        those after a failed step that blocks)."""
        outcomes: list[StepOutcome] = []
        blocked_by = ""
        for index, step in enumerate(options.steps, 1):
            if blocked_by:
                outcomes.append(StepOutcome(step.name, "not run", note=f"after failure in {blocked_by}"))
                continue
            staying = nr.filter(filter_func=lambda host: host.name not in dropped)
            outcome, _ = self._run_step(
                staying, step, index, len(options.steps), settings, options, self.console, redact
            )
            outcomes.append(outcome)
            self._drop(nr, step, outcome, settings, dropped)
            if outcome.status == "failed" and (step.blocks or not self.checklist):
                blocked_by = step.name
        return outcomes

    def _run_graph(
        self, nr: Nornir, settings: Settings, options: Options, redact: Redactor, dropped: dict[str, Dropped]
    ) -> list[StepOutcome]:
        """Each step as soon as the steps it is `after` are done, steps that do not depend on each other at once.

        A step after a `per_host` step (runbooks/host_board.py) needs it done on its own hosts
        only: a `per_host` step starts with it and takes each host as it is ready there, a cluster
        step starts once it is done on all of its hosts. A failed step stops only the steps that
        need it, directly or through others, and a `per_host` step's failure on a host only what
        needs that host. Each step prints into a buffer of its own, shown whole when it ends, so
        the output of steps running at once never interleaves; a line says when each starts.
        """
        steps = options.steps
        by_name = {step.name: step for step in steps}
        index = {step.name: number for number, step in enumerate(steps, 1)}
        needs = {step.name: [name for name in step.after if name in index] for step in steps}
        outcomes: dict[str, StepOutcome] = {}
        stopped: dict[str, str] = {}  # step → what stopped it: a failed step (on a host, for a per-host one)
        pending = list(steps)
        running: dict[Future[tuple[StepOutcome, str]], Step] = {}
        wake = threading.Event()
        board = HostBoard(told=wake.set)
        idle = {step.name for step in steps if not step.used(settings) or step.missing()}

        def hosts_of(step: Step) -> list[str]:
            return [name for name, host in nr.inventory.hosts.items() if name not in dropped and runs_on(step, host)]

        def verdict(step: Step) -> str | None:
            """Why `step` must not run ("" while it must wait, None once it may start).

            A step that will be skipped (not used with these settings, its artifacts missing) starts at once:
            it does nothing that needs the steps before it, and what waits for it need not wait for those.
            """
            if step.name in idle:
                return None
            waiting = False
            for name in needs[step.name]:
                if name in stopped:
                    return stopped[name]
                if by_name[name].per_host and board.began(name):
                    if step.per_host:  # its runner takes each host once it is done there
                        continue
                    states = board.states(name, hosts_of(step))
                    failed = sorted(host for host, state in states.items() if state == FAILED)
                    if failed:
                        return f"{name} on {', '.join(failed)}"
                    waiting |= None in states.values() or (LOST in states.values() and name not in outcomes)
                elif name not in outcomes:
                    waiting = True
                elif outcomes[name].status == "failed":
                    return name
            return "" if waiting else None

        self.running = Running() if self.console.is_terminal else None
        live = Live(self.running, console=self.console, refresh_per_second=2, transient=True) if self.running else None
        with (
            ThreadPoolExecutor(max_workers=len(steps), thread_name_prefix="step") as pool,
            live or contextlib.nullcontext(),
        ):
            while pending or running:
                wake.clear()
                for future in [future for future in running if future.done()]:
                    step = running.pop(future)
                    outcome, shown = future.result()
                    if live:  # above the live line
                        self.console.print(Text.from_ansi(shown), end="")
                    else:
                        self.console.file.write(shown)
                        self.console.file.flush()
                    outcomes[step.name] = outcome
                    self._drop(nr, step, outcome, settings, dropped)
                for step in list(pending):
                    why = verdict(step)
                    if why:
                        pending.remove(step)
                        stopped[step.name] = why
                        outcomes[step.name] = StepOutcome(step.name, "not run", note=f"after failure in {why}")
                    elif why is None:
                        pending.remove(step)
                        staying = nr.filter(filter_func=lambda host: host.name not in dropped)
                        under_way = ", ".join(name for name in needs[step.name] if board.under_way(name))
                        each = (
                            ""
                            if not under_way
                            else f" (each host once {under_way} is done there)"
                            if step.per_host
                            else f" ({under_way} done on its hosts, still under way on others)"
                        )
                        self.console.print(f"[dim]… {index[step.name]}/{len(steps)} {step.name} started{each}[/dim]")
                        future = pool.submit(
                            self._buffered_step, staying, step, index[step.name], settings, options, redact, board
                        )
                        future.add_done_callback(lambda _: wake.set())
                        running[future] = step
                if pending or running:
                    wake.wait()
        return [outcomes[step.name] for step in steps]

    def _buffered_step(
        self,
        nr: Nornir,
        step: Step,
        index: int,
        settings: Settings,
        options: Options,
        redact: Redactor,
        board: HostBoard,
    ) -> tuple[StepOutcome, str]:
        """`_run_step` into a console of its own: the outcome, and what it printed (styled as the terminal's)."""
        buffer = io.StringIO()
        console = terminal(
            file=buffer,
            width=self.console.width,
            force_terminal=self.console.is_terminal,
            color_system=self.console.color_system,
        )
        try:
            outcome, _ = self._run_step(nr, step, index, len(options.steps), settings, options, console, redact, board)
        finally:
            if step.per_host:
                board.end(step.name)
            if self.running:
                self.running.finish(step.name)
        return outcome, buffer.getvalue()

    def _site_identity(self, nr: Nornir, settings: Settings, options: Options, redact: Redactor) -> StepOutcome:
        """Read every server's site identity; refuse (problems) when it is another site's, else write it where missing.

        Runs before any step, so a wrong secrets file or CA is refused before anything changes.
        """
        mine = site_identity.ours(settings)
        read = self._progress(self.console, options, redact, IDENTITY_STEP.name, hold_ok=True)
        outcome, result = self._run_step(
            nr, IDENTITY_STEP, 0, len(options.steps), settings, options, self.console, redact, progress=read
        )
        answers = {name: multi[0].identity for name, multi in (result or {}).items() if not multi.failed}
        outcome.problems = grouped(site_identity.problems(answers, settings, mine))
        new = [] if outcome.problems else site_identity.stale(answers, mine)
        if outcome.problems:
            outcome.status, outcome.note = "failed", "another site's secrets or CA"
        elif new and options.mode is Mode.APPLY:
            written = (
                nr.filter(filter_func=lambda h: h.name in new)
                .with_processors([StepTag(IDENTITY_STEP.name), self._progress(self.console, options, redact)])
                .run(task=site_identity.write_identity, name="site-identity", identity=mine, on_failed=True)
            )
            for name, multi in written.items():
                outcome.hosts[name] = host_outcome(multi, 0.0, redact)
            if written.failed:
                outcome.status, outcome.note = "failed", f"{len(written.failed_hosts)} host(s) failed"
        elif new:
            pending = HostOutcome("changed", 0.0, diff=f"{site_identity.IDENTITY_PATH}: to be written")
            outcome.hosts.update(dict.fromkeys(new, pending))
            read.release(dict.fromkeys(new, pending))
        if not outcome.problems:  # a refused run changes nothing, but its servers are not "nothing to do" either
            read.release(
                {name: host for name, host in outcome.hosts.items() if name not in new and host.status == "ok"}
            )
        if outcome.status == "ok" and any(h.status == "changed" for h in outcome.hosts.values()):
            outcome.status = "changed"
        return outcome

    def _refuse(
        self,
        settings: Settings,
        options: Options,
        problems: list[str],
        outcomes: list[StepOutcome],
        hosts: tuple[dict[str, list[CommandRecord]], dict[str, float]],
        elapsed: float,
        redact: Redactor,
        new_ca: bool,
    ) -> int:
        """Another site's servers: say which file this run used and what the servers expect; exit 2, nothing changed."""
        secrets = settings.secrets
        self.console.print(
            f"[bold red]{self.name}: refusing to start, nothing was changed:[/bold red] the servers belong to "
            "another secrets file or CA than this run's"
        )
        for problem in problems:
            self.console.print(f"  {escape(redact(problem))}")
        made = " (made by this run: there was none; removed again)"
        self.console.print(
            f"  this run used {secrets.path}{made if secrets.created else ''} "
            f"and the CA in {settings.ca.folder}{made if new_ca else ''}\n"
            "  fix: run with --secrets FILE naming the site's secrets file (or set secrets_file in the config),\n"
            "  with its CA folder beside it; another file never replaces the site's secrets"
        )
        if new_ca:
            shutil.rmtree(settings.ca.folder, ignore_errors=True)
        if secrets.created:
            secrets.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the folder it made for it, if nothing else is there
                secrets.path.parent.rmdir()
        if options.report:
            self._write_report(options, settings, outcomes, hosts, elapsed, EXIT_INPUT, redact, {})
        return EXIT_INPUT

    @staticmethod
    def _drop(nr: Nornir, step: Step, outcome: StepOutcome, settings: Settings, dropped: dict[str, Dropped]) -> None:
        """Take the hosts this step lost out of the run: each host whose task met a lost host, and that host.

        A host whose task failed because a peer stopped answering (the backup host reading
        a replica) leaves too: its step is not done, and the finish command must name it.
        Later steps skip them (`dropped`), and so does any task reaching for them as a peer
        (`tasks.remote.lost_hosts`).
        """
        by_address = {h.address: h.name for h in settings.hosts.values()}
        for name, host in outcome.hosts.items():
            if host.status != "lost":
                continue
            peer = by_address.get(host.lost_address, name)
            first = host.message.splitlines()[0]
            if peer != name and peer not in dropped:
                dropped[peer] = Dropped(peer, settings.hosts[peer].address, step.name, first, host.at)
            reason = first if peer == name else f"its step needs {peer}, which stopped answering"
            dropped[name] = Dropped(name, settings.hosts[name].address, step.name, reason, host.at)
        for gone in dropped.values():
            nr.config.user_defined["lost"][gone.host] = f"{gone.reason} (in step {gone.step})"

    def _print_dropped(self, dropped: dict[str, Dropped], options: Options, redact: Redactor) -> None:
        """Which hosts left the run and why, and the command that finishes them once they answer."""
        self.console.print("[bold magenta]Hosts that dropped out of this run[/bold magenta] (the others went on):")
        for gone in dropped.values():
            reason = escape(redact(gone.reason))
            self.console.print(f"  {escape(gone.host)} ({gone.address}) in step {gone.step}: {reason}")
        self.console.print("Once they answer again, finish them with:")
        self.console.print(f"  {escape(self.finish_command(options, list(dropped)))}")

    def finish_command(self, options: Options, hosts: list[str]) -> str:
        """This run's command line, limited to `hosts`."""
        kept: list[str] = []
        skip = False
        for arg in options.argv:
            if skip:
                skip = False
            elif arg == "--limit":
                skip = True
            elif not arg.startswith("--limit="):
                kept.append(arg)
        return " ".join([self.prog, *map(shlex.quote, kept), "--limit", ",".join(hosts)])

    def _run_step(
        self,
        nr: Nornir,
        step: Step,
        index: int,
        total: int,
        settings: Settings,
        options: Options,
        console: Console,
        redact: Redactor,
        board: HostBoard | None = None,
        progress: Progress | None = None,
    ) -> tuple[StepOutcome, AggregatedResult | None]:
        """Run one step on its hosts (and its health check); the outcome, and the hosts' results when it ran.

        In a graph run (`board`) its hosts wait for the `per_host` steps it is after to be done on them,
        and a `per_host` step tells the board of each host as it ends there. `progress` prints the hosts'
        outcomes (by default, each as it ends).
        """
        groups = step.groups
        targets = nr.filter(filter_func=lambda h: runs_on(step, h))
        count = len(targets.inventory.hosts)
        lost = nr.config.user_defined["lost"]
        where = "all hosts" if groups is None else ", ".join(groups)
        console.print(
            f"[bold]▶ {index}/{total} {step.name}[/bold] — {step.summary} "
            f"[dim]({count} hosts: {where}{', one at a time' if step.serial else ''})[/dim]"
        )
        if count == 0:
            return StepOutcome(step.name, "skipped", note="every host dropped out" if lost else "no hosts"), None
        if not step.used(settings):
            note = (step.applies.__doc__ or "not used with these settings").strip() if step.applies else ""
            console.print(f"  [dim]skipped: {escape(note)}[/dim]")
            return StepOutcome(step.name, "skipped", note=note), None
        if step.live and options.mode is Mode.PLAN:
            note = "not run in plan mode: it reads the running platform"
            console.print(f"  [dim]skipped: {note}[/dim]")
            return StepOutcome(step.name, "skipped", note=note), None
        absent = step.missing()
        if absent and options.mode is not Mode.PLAN:
            for problem in absent:
                console.print(f"  [yellow]skipped: {escape(str(problem))}[/yellow]")
            return StepOutcome(step.name, "skipped", note=f"artifact {absent[0].key}: {absent[0].message}"), None
        for problem in absent:  # plan mode renders the configuration all the same, to be reviewed
            console.print(f"  [yellow]binary missing, configuration only: {escape(str(problem))}[/yellow]")
        order = step.order
        key = (lambda host: order(host.name, settings)) if order else None
        waits = [name for name in step.after if board and board.began(name)]
        runner: RunnerPlugin
        if step.serial:
            runner = RollingRunner(key or (lambda host: 0))
        else:
            at_once = (step.at_once(settings) if step.at_once else None) or count
            record = step.name if board and step.per_host else ""
            runner = HostRunner(min(count, at_once, MAX_THREADS), key, board, waits, record)
            if board and record:
                board.begin(record, targets.inventory.hosts)
        started, at = time.monotonic(), time.time()
        if self.running:
            self.running.start(step.name, count)
        progress = progress or self._progress(console, options, redact, step.name)
        # on_failed: Nornir would leave out hosts that failed in any step so far, also in steps that do not need them.
        result = (
            targets.with_runner(runner)
            .with_processors([StepTag(step.name), progress])
            .run(task=step.task, name=step.name, settings=settings, on_failed=True)
        )
        if waits and progress.started:  # the time its hosts waited for the steps before is not this step's
            first = min(progress.started.values())
            started, at = first, at + first - started
        hosts = {
            name: progress.outcomes.get(name) or host_outcome(multi, 0.0, redact) for name, multi in result.items()
        }
        outcome = StepOutcome(step.name, "ok", hosts=hosts, at=at)
        if step.serial:  # a rolling step stops at a lost host: the hosts after it were not done
            for host in hosts.values():
                host.status = "failed" if host.status == "lost" else host.status
        failed = [name for name, host in hosts.items() if host.status == "failed"]
        losing = [name for name, host in hosts.items() if host.status == "lost"]
        if step.report and not failed:
            outcome.report = redact(step.report(result, settings))
            console.print(escape(outcome.report), highlight=False)
        if failed:
            outcome.status = "failed"
            outcome.note = f"{len(failed)} host(s) failed"
        else:
            outcome.note = f"{len(losing)} host(s) dropped out" if losing else ""
            if absent:
                outcome.note = f"configuration only: artifact {absent[0].key}: {absent[0].message}"
            staying = targets.filter(filter_func=lambda h: h.name not in losing)
            if any(h.status == "changed" for h in hosts.values()):
                self.changed_steps.add(step.name)
            changed = self.changed_steps | (board.changed if board else set())
            steady = not changed & {step.name, *waits_for(options.steps).get(step.name, ())}
            problems = self._health(step, staying, result, settings, steady) if options.mode is Mode.APPLY else []
            if problems:
                outcome.status, outcome.note = "failed", "health gate"
                outcome.problems = [redact(p) for p in problems]
                console.print("[bold red]  health gate failed:[/bold red]")
                for problem in problems:
                    console.print(f"    {escape(redact(problem))}", style="red")
            elif any(h.status == "changed" for h in hosts.values()):
                outcome.status = "changed"
        if step.per_host and waits and not outcome.note:  # why its time spans the steps before it
            outcome.note = f"each host once {', '.join(waits)} was done there"
        outcome.seconds = time.monotonic() - started
        return outcome, result

    def _progress(
        self, console: Console, options: Options, redact: Redactor, step: str = "", *, hold_ok: bool = False
    ) -> Progress:
        # Hosts in the inventory's order where nobody watches them finish: a step shown whole when it ends
        # (its own console), and plan mode, whose output is compared from one run to the next.
        ordered = console is not self.console or options.mode is Mode.PLAN
        running = self.running
        return Progress(
            console,
            redact,
            options.verbose,
            show_diffs=options.mode is not Mode.APPLY,
            ordered=ordered,
            host_done=(lambda: running.host_done(step)) if running and step else None,
            hold_ok=hold_ok,
        )

    def _health(
        self, step: Step, targets: Nornir, result: AggregatedResult, settings: Settings, steady: bool
    ) -> list[str]:
        """Problems found by the step's health check (on every host still in the run) and its cross-host gate.

        `steady`: nothing changed in this step or the steps it waits for; its steady check, if it has one, will do.
        """
        problems = []
        check = step.steady_check if steady and step.steady_check else step.check
        if check and targets.inventory.hosts:
            checked = targets.with_processors([StepTag(step.name)]).run(
                task=check, name=f"{step.name} health", settings=settings, on_failed=True
            )
            problems += [failure_text(multi) for multi in checked.values() if multi.failed]
        if step.gate and not problems:
            problems += step.gate(result, settings)
        return problems

    def _print_commands(self, commands: dict[str, list[CommandRecord]], redact: Redactor) -> None:
        self.console.print("[bold]Commands run[/bold] (host, user, directory, expected result, exit status):")
        for host, records in commands.items():
            for record in records:
                user = f"{record.user}{'+sudo' if record.sudo else ''}"
                first = redact(record.command).strip().splitlines()[0][:120] if record.command.strip() else ""
                self.console.print(
                    f"  {escape(host)} {user} {record.cwd} exit={record.exit_code} "
                    f"[dim]expect: {escape(record.expect)}[/dim]\n    {escape(first)}"
                )

    def _write_report(
        self,
        options: Options,
        settings: Settings,
        outcomes: list[StepOutcome],
        hosts: tuple[dict[str, list[CommandRecord]], dict[str, float]],
        elapsed: float,
        code: int,
        redact: Redactor,
        dropped: dict[str, Dropped],
    ) -> None:
        """The run as JSON: how it was called, when, by which commit of the tool and with which settings (a digest
        of the config and inventory files); each step's outcome, the hosts that dropped out, and per host when the
        run began connecting to it and every command it ran (benchmarks read the timings from it)."""
        commands, reached = hosts
        report: dict[str, Any] = {
            "runbook": self.name,
            **self.provenance,
            "site": settings.site,
            "mode": options.mode.value,
            "exit_code": code,
            "seconds": round(elapsed, 3),
            "steps": [asdict(o) for o in outcomes],
            "dropped": [asdict(d) for d in dropped.values()],
            "finish": self.finish_command(options, list(dropped)) if dropped else "",
            "connecting_at": reached,
            "commands": {host: [asdict(r) for r in records] for host, records in commands.items()},
        }
        options.report.parent.mkdir(parents=True, exist_ok=True)
        text = redact(json.dumps(report, indent=2, default=str))
        # .html: one page made from the redacted JSON (runbooks/report_html.py); anything else: the JSON.
        options.report.write_text(render_html(json.loads(text)) if options.report.suffix == ".html" else text + "\n")


def runs_on(step: Step, host: Host) -> bool:
    """Whether `step` targets `host`: a host of one of its groups (every host when it names none)."""
    return step.groups is None or any(group.name in step.groups for group in host.groups)


def add_runbook_options(parser: argparse.ArgumentParser, *, serial: bool) -> None:
    """The options every runbook takes (`serial`: --serial, for a runbook run as a graph)."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="deployment settings file (default: config.yaml; config.lab.yaml with --lab)",
    )
    parser.add_argument(
        "--inventory",
        type=Path,
        default=None,
        help="inventory folder with hosts.yaml, groups.yaml, defaults.yaml (default: inventory)",
    )
    parser.add_argument(
        "--lab",
        action="store_true",
        help="use config.lab.yaml and inventory/lab, and bring the lab up first if needed (python runbooks/lab.py)",
    )
    parser.add_argument(
        "--limit", default=None, help="only these hosts, comma-separated: host names, group names or globs ('haproxy*')"
    )
    parser.add_argument("--step", action="append", default=[], metavar="NAME", help="run only this step (repeatable)")
    parser.add_argument("--skip-step", action="append", default=[], metavar="NAME", help="skip this step (repeatable)")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--plan",
        action="store_true",
        help="render every file for every host into --plan-dir and list the changes; connects to no host",
    )
    modes.add_argument(
        "--check",
        action="store_true",
        help="connect and read each host's state, show what would change, change nothing",
    )
    parser.add_argument(
        "--plan-dir",
        type=Path,
        default=None,
        help="where --plan writes (default plan/<site> beside the config file)",
    )
    parser.add_argument(
        "--secrets",
        type=Path,
        default=None,
        metavar="FILE",
        help="the site's secrets file (default: the config's secrets_file, else .secrets/<site>.yaml beside it); "
        "servers remember the secrets and CA they were deployed with and refuse others",
    )
    if serial:
        parser.add_argument(
            "--serial",
            action="store_true",
            help="run the steps one after another in the order listed below, instead of each as soon as the "
            "steps it needs are done (--plan always renders in that order)",
        )
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--verbose", action="store_true", help="show diffs, each host's detail and every command")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the run's report here: JSON, or one self-contained HTML page when FILE ends in .html",
    )


def value_options() -> set[str]:
    """The runbook options that take a value (--limit X): the word after one is never a sub-command."""
    parser = argparse.ArgumentParser(add_help=False)
    add_runbook_options(parser, serial=True)
    return {name for action in parser._actions if action.nargs != 0 for name in action.option_strings}


def limited(given: str | None) -> list[str]:
    """--limit's host names; [] without --limit. A --limit that names no host is refused: run as given, an
    empty shell variable would have meant every host."""
    if given is None:
        return []
    names = [name.strip() for name in given.split(",") if name.strip()]
    if not names:
        raise InputError([InputProblem("--limit", repr(given), "names no host", "give host names, comma-separated")])
    return names


def limit_hosts(words: list[str], settings: Settings, inventory: Path) -> list[str]:
    """The hosts --limit's words select, in the inventory's order: each word a host name, a group name (its
    hosts) or a glob over host names ('haproxy*'). A word that selects no host is refused."""
    chosen: set[str] = set()
    unknown = []
    for word in words:
        found = {
            name
            for name, host in settings.hosts.items()
            if name == word or word in host.groups or fnmatch.fnmatchcase(name, word)
        }
        chosen |= found
        unknown += [] if found else [word]
    if unknown:
        groups = sorted({group for host in settings.hosts.values() for group in host.groups})
        raise InputError(
            [
                InputProblem(
                    "--limit",
                    ",".join(unknown),
                    "not a host, group or pattern of the inventory",
                    f"use host names from {inventory / 'hosts.yaml'} ({', '.join(settings.hosts)}), "
                    f"groups ({', '.join(groups)}) or a glob such as 'haproxy*'",
                )
            ]
        )
    return [name for name in settings.hosts if name in chosen]


def plan_folder(options: Options, settings: Settings) -> Path:
    """Where --plan writes: --plan-dir, else plan/<site> beside the config file."""
    chosen = options.plan_dir if options.plan_dir != Path("") else settings.config_path.parent / "plan" / settings.site
    return real(chosen)


def make_nornir(settings: Settings, mode: Mode, plan_dir: Path | None = None) -> Nornir:
    """A Nornir over the settings' inventory, with the run's mode, redactor and timeouts."""
    inventory = settings.inventory_dir
    options = {
        "mode": mode.value,
        "plan_dir": str(plan_dir) if plan_dir else "",
        "redact": Redactor(settings.secrets),
        "inventory_dir": str(inventory),
        "connect_timeout": settings.config.ssh.connect_timeout,
        "command_timeout": settings.config.ssh.command_timeout,
        "lost_after": settings.config.ssh.lost_after,
        "lost": {},  # hosts that dropped out of the run, with why (tasks.remote.lost_hosts)
    }
    return inventory_nornir(inventory, max(1, min(len(settings.hosts), MAX_THREADS)), options)


def step_readings(steps: Sequence[Step], settings: Settings, host: str) -> list[Reading]:
    """What the `steps` that will run on `host` read first there, in their order: those its groups take
    part in, that the settings use and whose artifacts are here (the others are skipped)."""
    groups = set(settings.hosts[host].groups)
    readings = []
    for step in steps:
        elsewhere = step.groups is not None and not groups & set(step.groups)
        if step.reading is None or elsewhere or not step.used(settings) or step.missing():
            continue
        reading = step.reading(settings, host)
        if reading:
            readings.append(reading)
    return readings


def inventory_nornir(inventory: Path, threads: int, options: dict[str, Any]) -> Nornir:
    """A Nornir over the YAML inventory in `inventory`, with the framework's connection plugin.

    Built directly rather than by InitNornir, which imports every connection plugin
    installed (netmiko's alone took 52 ms of every run's start) to register them.
    """
    ConnectionPluginRegister.register(CONNECTION, FabricConnection)
    # Failures reach the operator through the runbook's display, not as logged tracebacks.
    logging.getLogger("nornir").addHandler(logging.NullHandler())
    logging.getLogger("nornir").propagate = False
    config = Config.from_dict(logging={"enabled": False}, user_defined=options)
    nornir = Nornir(
        inventory=simple_inventory(inventory),
        runner=ThreadedRunner(num_workers=threads),
        config=config,
        data=GlobalState(),
    )
    # A step that needs a fact from a peer host reaches it through every host (and its
    # connection), also from the filtered copy a step runs on.
    nornir.config.user_defined["hosts"] = nornir.inventory.hosts
    return nornir


def simple_inventory(folder: Path) -> Inventory:
    """What Nornir's SimpleInventory makes of the folder's hosts, groups and defaults files.

    Parsed with libyaml (core.yamlsource) instead of SimpleInventory's ruamel, whose pure-Python
    parser cost every run's start 15 ms; the entries are built by SimpleInventory's own helpers.
    """

    def read(name: str) -> dict[str, Any]:
        path = folder / name
        return (yaml.load(path.read_text(), Loader=SafeLoader) or {}) if path.exists() else {}

    defaults = _get_defaults(read("defaults.yaml"))
    groups = Groups(
        {name: _get_inventory_element(Group, entry, name, defaults) for name, entry in read("groups.yaml").items()}
    )
    for group in groups.values():
        group.groups = ParentGroups([groups[parent] for parent in group.groups])
    hosts = Hosts(
        {name: _get_inventory_element(Host, entry, name, defaults) for name, entry in read("hosts.yaml").items()}
    )
    for host in hosts.values():
        host.groups = ParentGroups([groups[parent] for parent in host.groups])
    return Inventory(hosts=hosts, groups=groups, defaults=defaults)
