"""systemd units and services: restart only when something changed, then check health."""

from __future__ import annotations

import contextlib
import shlex
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from nornir.core.task import Result, Task

from core.connection import current_step
from core.errors import HostError
from tasks.files import FileSpec, put_files
from tasks.remote import Expectation, Mode, known, mode, primitive, run

UNIT_DIR = "/etc/systemd/system"


@dataclass(frozen=True)
class ServiceFact:
    """`systemctl show` of a unit."""

    load_state: str
    active_state: str
    unit_file_state: str

    @property
    def active(self) -> bool:
        return self.active_state in ("active", "activating", "reloading")

    @property
    def enabled(self) -> bool:
        return self.unit_file_state in ("enabled", "enabled-runtime", "static", "alias", "generated")


def parse_show(stdout: str) -> ServiceFact:
    values = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
    return ServiceFact(values.get("LoadState", ""), values.get("ActiveState", ""), values.get("UnitFileState", ""))


def actions(fact: ServiceFact, *, running: bool, enabled: bool, restart: bool, reload: bool = False) -> list[str]:
    """The systemctl verbs that take `fact` to the wanted state.

    A stopped service is started (which reads the new config) rather than restarted; a
    running one is restarted, or reloaded where that suffices, only when `restart`.
    """
    verbs = []
    if enabled and not fact.enabled:
        verbs.append("enable")
    elif not enabled and fact.unit_file_state == "enabled":
        verbs.append("disable")
    if running and not fact.active:
        verbs.append("start")
    elif running and restart:
        verbs.append("reload" if reload else "restart")
    elif not running and fact.active:
        verbs.append("stop")
    return verbs


@primitive
def service(
    task: Task,
    unit: str,
    running: bool = True,
    enabled: bool = True,
    restart: bool = False,
    reload: bool = False,
    daemon_reload: bool = False,
) -> Result:
    """Ensure `unit` is (not) running and (not) enabled; restart it when asked."""
    wanted = {unit: Wanted(running=running, enabled=enabled, restart=restart, reload=reload)}
    done = services(task, wanted, daemon_reload=daemon_reload)
    # One unit: `result` lists the verbs alone ("start", "reload").
    verbs = [action.split(" ", 1)[0] for action in done.result]
    return Result(host=task.host, result=verbs, changed=done.changed, diff=done.diff)


@dataclass(frozen=True)
class Wanted:
    """The state one unit should be left in."""

    running: bool = True
    enabled: bool = True
    restart: bool = False
    reload: bool = False
    rolling: bool = False  # a restart takes turns with the step's other hosts (`Turns`)


def show_script(units: list[str]) -> str:
    names = " ".join(shlex.quote(unit) for unit in units)
    return f"systemctl show -p Id -p LoadState -p ActiveState -p UnitFileState -- {names}"


def parse_show_many(stdout: str) -> dict[str, ServiceFact]:
    """`systemctl show -p Id …` of several units: blocks separated by blank lines, keyed by Id."""
    facts = {}
    for block in stdout.strip().split("\n\n"):
        values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" in values:
            facts[values["Id"]] = parse_show(block)
    return facts


VERB_ORDER = ("enable", "disable", "stop", "start", "restart", "reload")
Waves = tuple[dict[str, Wanted], ...]


@dataclass(frozen=True)
class Systemctl:
    """One command taking a component's units where they should be: a daemon-reload if due, then the verbs."""

    verbs: tuple[tuple[str, tuple[str, ...]], ...]  # (verb, units), in the order they run
    lines: tuple[str, ...] = ()  # per unit, what it was and what is done ("x.service: stopped → start")
    daemon_reload: bool = False
    rolling: tuple[str, ...] = ()  # units it restarts one host at a time (`Turns`)

    def __str__(self) -> str:
        commands = ["systemctl daemon-reload"] if self.daemon_reload else []
        commands += [f"systemctl {verb} -- {' '.join(shlex.quote(u) for u in units)}" for verb, units in self.verbs]
        return " && ".join(commands)


@dataclass(frozen=True)
class UnitsWanted:
    """The units' wanted state when the host was not read (plan mode): nothing can be decided yet."""

    wanted: tuple[tuple[str, Wanted], ...]

    def __str__(self) -> str:
        return "; ".join(f"{unit}: {'running' if w.running else 'stopped'}" for unit, w in self.wanted)


def unit_actions(
    waves: Waves, facts: dict[str, ServiceFact] | None, *, daemon_reload: bool = False
) -> list[Systemctl | UnitsWanted]:
    """What takes the units of `waves` to their wanted state, given `facts` (None: the host was not read).

    Waves change in order (a main process before its workers); the units of one wave are
    peers that systemd starts or restarts together.
    """
    if facts is None:
        return [UnitsWanted(tuple((unit, want) for wave in waves for unit, want in wave.items()))]
    verbs: list[tuple[str, tuple[str, ...]]] = []
    lines: list[str] = []
    rolling: list[str] = []
    for wave in waves:
        by_verb: dict[str, list[str]] = {}
        for unit, want in wave.items():
            fact = facts.get(unit, ServiceFact("", "", ""))
            wanted = actions(fact, running=want.running, enabled=want.enabled, restart=want.restart, reload=want.reload)
            for verb in wanted:
                by_verb.setdefault(verb, []).append(unit)
            turns = want.rolling and "restart" in wanted
            rolling += [unit] if turns else []
            if wanted:
                lines.append(
                    f"{unit}: {'running' if fact.active else 'stopped'} → {', '.join(wanted)}"
                    f"{' (one host at a time)' if turns else ''}"
                )
        verbs += [(verb, tuple(by_verb[verb])) for verb in VERB_ORDER if verb in by_verb]
    if not verbs and not daemon_reload:
        return []
    return [Systemctl(tuple(verbs), tuple(lines), daemon_reload, tuple(rolling))]


class Turns:
    """The hosts of a step restarting a unit one at a time: a rolling restart.

    A step runs its hosts at once, and a changed configuration would restart every etcd member,
    every Redis of a Sentinel group or every PgBouncer at the same moment: the cluster loses its
    quorum, the pool all its members. A unit declared `rolling` restarts on one host at a time;
    the others wait their turn. systemctl returns once the unit is up again (those units tell
    systemd when they are ready), so each member is back before the next goes. After a failed
    restart the hosts still waiting keep theirs running: the cluster keeps the members it has.
    One `Turns` serves a run (kept in its options); a turn is a step and its units.
    """

    def __init__(self) -> None:
        self.failed: dict[tuple[str, ...], str] = {}  # turn -> the host whose restart failed
        self._locks: dict[tuple[str, ...], threading.Lock] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def take(self, turn: tuple[str, ...], host: str) -> Iterator[None]:
        """Wait for `turn`, then hold it; raises HostError, restarting nothing, after another host's restart failed."""
        with self._guard:
            lock = self._locks.setdefault(turn, threading.Lock())
        with lock:
            if turn in self.failed:
                raise HostError(
                    f"{', '.join(turn[1:])} not restarted here: its restart failed on {self.failed[turn]} first, "
                    "and a rolling restart goes no further (this host runs on with its old configuration). "
                    f"Fix it on {self.failed[turn]} (journalctl -u {turn[1]} -n 50), then run the step again"
                )
            try:
                yield
            except BaseException:
                self.failed[turn] = host
                raise


TURNS = "turns"  # the run's Turns, in the options every host's connection shares


@contextlib.contextmanager
def rolling_turn(task: Task, units: tuple[str, ...]) -> Iterator[None]:
    """Hold the run's turn for restarting `units` in the current step (nothing to wait for without `units`)."""
    if not units:
        yield
        return
    turns = task.nornir.config.user_defined.setdefault(TURNS, Turns())
    with turns.take((current_step(), *units), task.host.name):
        yield


def converge_units(task: Task, action: Systemctl | UnitsWanted) -> Result:
    """Carry out `action` in the run's mode: describe it (plan, check) or run its one command (apply)."""
    if isinstance(action, UnitsWanted):
        # The host was not read (plan mode): what the unit would be, not what was done to it.
        diffs = [
            f"{unit}: would be {'running' if want.running else 'stopped'}"
            f"{', restarted where its files differ on the host' if want.restart else ''}"
            for unit, want in action.wanted
        ]
        return Result(
            host=task.host, result=[], changed=any(w.restart for _, w in action.wanted), diff="\n".join(diffs)
        )
    if mode(task) is Mode.APPLY:
        with rolling_turn(task, action.rolling):
            run(
                task,
                str(action),
                what=Expectation(
                    "; ".join(action.lines) or "unit files reloaded",
                    "look at 'journalctl -u <unit> -n 50' on the host for why the unit failed",
                ),
            )
    taken = [f"{verb} {unit}" for verb, units in action.verbs for unit in units]
    return Result(host=task.host, result=taken, changed=bool(taken), diff="\n".join(action.lines))


@primitive
def services(task: Task, *waves: dict[str, Wanted], daemon_reload: bool = False) -> Result:
    """Converge the units of one component: one `systemctl show`, then one command for all actions.

    `result` lists the actions taken.
    """
    wanted = [unit for wave in waves for unit in wave]
    facts = None
    if mode(task) is not Mode.PLAN:
        if daemon_reload and mode(task) is Mode.APPLY:
            run(task, "systemctl daemon-reload", what=Expectation("unit files reloaded"))
        facts = known(task, "unit", wanted)
        if facts is None:
            out = run(
                task,
                show_script(wanted),
                what=Expectation(f"the state of {', '.join(wanted)}", "check that the host runs systemd"),
                reads_only=True,
            )
            facts = parse_show_many(out.stdout)
    decided = unit_actions(waves, facts)
    return converge_units(task, decided[0]) if decided else Result(host=task.host, result=[], changed=False, diff="")


@primitive
def unit_file(task: Task, unit: str, content: str) -> Result:
    """Install a unit file under /etc/systemd/system; `changed` means a daemon-reload is due."""
    return put_files(task, [FileSpec(f"{UNIT_DIR}/{unit}", content)])


@dataclass(frozen=True)
class AddUser:
    """A system account a service runs as (no home, no login), missing on the host."""

    name: str

    @property
    def script(self) -> str:
        user = shlex.quote(self.name)
        return f"id -u {user} >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin {user}"

    def __str__(self) -> str:
        return f"useradd {self.name}"


def user_actions(names: Sequence[str], exists: Mapping[str, bool] | None) -> list[AddUser]:
    """The accounts of `names` the host lacks; none when it was not read (plan mode shows no accounts)."""
    return [] if exists is None else [AddUser(name) for name in names if not exists.get(name)]


def add_user(task: Task, action: AddUser) -> Result:
    """Carry out `action` in the run's mode: described (check) or created (apply)."""
    if mode(task) is Mode.APPLY:
        run(task, action.script, what=Expectation(f"system user {action.name}"))
    return Result(host=task.host, result=[action.name], changed=True, diff=f"system user {action.name}: created")


@primitive
def service_user(task: Task, name: str) -> Result:
    """Create the system account a service runs as (no home, no login) if it is missing."""
    if mode(task) is Mode.PLAN:
        return Result(host=task.host, result=[], changed=False)
    exists = known(task, "user", [name])
    if exists is None:
        out = run(task, f"id -u {shlex.quote(name)} >/dev/null 2>&1 && echo yes; true", reads_only=True)
        exists = {name: out.stdout.strip() == "yes"}
    actions = user_actions([name], exists)
    return add_user(task, actions[0]) if actions else Result(host=task.host, result=[], changed=False)
