"""Typed sections of the settings files, and the checks that say exactly what is wrong in them.

A section is a class whose annotated attributes are its keys (`core.config`, `core.inventory`):

    class PgBouncer(Section):
        port: Port = Field(6432, description="PgBouncer listen port, e.g. 6432")

`Section.parse(data)` checks a mapping read from YAML against it and returns a frozen instance, or
raises `Invalid` with every problem found: the key path, what is wrong and how to fix it (the
field's description, written to double as that fix). Made here rather than with pydantic, which
did the same: validating the settings is on the path of every run before its first remote command,
and pydantic's import and model building were a third of that start-up (issue 25), where these
files need only a few kinds of value, optional values, lists, mappings, bounds, patterns and a
parse function for addresses and networks.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, ClassVar

REQUIRED: Any = ...  # the default of a key that must be given
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Field:
    """A key's default and limits, as the default of an attribute or inside `Annotated[...]`."""

    default: Any = REQUIRED
    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    pattern: str | None = None  # searched in the value; the settings' patterns are anchored
    min_length: int | None = None
    max_length: int | None = None
    description: str = ""


@dataclass(frozen=True)
class Parse:
    """`Annotated[T, Parse(function)]`: the value is `function(raw value)`; its ValueError says what is wrong."""

    function: Callable[[Any], Any]


@dataclass(frozen=True)
class Problem:
    """One thing wrong: the key path to it, what is wrong, and how to fix it."""

    loc: Loc
    message: str
    fix: str


class Invalid(Exception):
    """The problems of a mapping that did not parse."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, p.loc))}: {p.message}" for p in problems))
        self.problems = problems


Check = Callable[[Any, Loc, list[Problem], str], Any]  # value, where, found problems, fix -> value or _BAD
_BAD: Any = object()
_DEFAULT_FIX = "see the shipped example file for the expected form"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What YAML gives for a yes/no that was quoted, as pydantic took it before.
_TRUE, _FALSE = {"true", "yes", "on", "y", "t", "1"}, {"false", "no", "off", "n", "f", "0"}


@dataclass(frozen=True)
class Key:
    """One key of a section: its type (Annotated removed), default, description and check."""

    name: str
    annotation: Any
    default: Any
    description: str
    check: Check

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class Section:
    """A mapping of a settings file with a fixed set of keys; instances are frozen."""

    _keys: ClassVar[dict[str, Key]]

    def __init__(self, **values: Any) -> None:
        problems: list[Problem] = []
        checked = type(self)._checked(values, (), problems)
        if problems:
            raise Invalid(problems)
        self.__dict__.update(checked)

    @classmethod
    def parse(cls, data: Any, loc: Loc = ()) -> Any:
        """`data` as this section; raises Invalid naming every problem, their keys from `loc` on."""
        problems: list[Problem] = []
        value = _section(cls)(data, loc, problems, _DEFAULT_FIX)
        if problems:
            raise Invalid(problems)
        return value

    @classmethod
    def keys(cls) -> dict[str, Key]:
        """The section's keys in the order they are declared (worked out on first use)."""
        if "_keys" not in cls.__dict__:
            hints, plain = typing.get_type_hints(cls, include_extras=True), typing.get_type_hints(cls)
            keys = {}
            for name, hint in hints.items():
                if name.startswith("_") or typing.get_origin(hint) is ClassVar:
                    continue
                declared = getattr(cls, name, REQUIRED)
                field = declared if isinstance(declared, Field) else Field(declared)
                keys[name] = Key(name, plain[name], field.default, field.description, _check(hint, [field]))
            cls._keys = keys
        return cls.__dict__["_keys"]

    @classmethod
    def _checked(cls, data: dict[Any, Any], loc: Loc, problems: list[Problem]) -> dict[str, Any]:
        keys = cls.keys()
        out: dict[str, Any] = {}
        for name in data:
            if name not in keys:
                allowed = ", ".join(keys)
                problems.append(
                    Problem(
                        (*loc, name), "unknown key", f"remove it or correct its spelling; keys allowed here: {allowed}"
                    )
                )
        for name, key in keys.items():
            fix = key.description or _DEFAULT_FIX
            if name in data:
                out[name] = key.check(data[name], (*loc, name), problems, fix)
            elif key.required:
                problems.append(Problem((*loc, name), "required key is missing", fix))
            else:
                out[name] = key.default.copy() if isinstance(key.default, list | dict) else key.default
        return out

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: use replace()")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    __hash__ = None  # type: ignore[assignment]  # lists inside: not hashable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"

    def replace(self, **changes: Any) -> Any:
        """A copy with `changes` (not checked again: for values that came from a parsed section)."""
        unknown = set(changes) - set(self.keys())
        if unknown:
            raise TypeError(f"{type(self).__name__} has no key {', '.join(sorted(unknown))}")
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__, **changes)
        return copy

    def dump(self) -> dict[str, Any]:
        """The section as YAML/JSON values (addresses and networks as text)."""
        return {name: _dumped(value) for name, value in self.__dict__.items()}


def _dumped(value: Any) -> Any:
    if isinstance(value, Section):
        return value.dump()
    if isinstance(value, list):
        return [_dumped(v) for v in value]
    if isinstance(value, dict):
        return {k: _dumped(v) for k, v in value.items()}
    if isinstance(value, IPv4Address | IPv6Address | IPv4Network | IPv6Network):
        return str(value)
    return value


def _bad(problems: list[Problem], loc: Loc, message: str, fix: str, raw: Any) -> Any:
    if isinstance(raw, int | float | bool) or (isinstance(raw, str) and repr(raw) not in message):
        message += f" (got {raw!r})"
    problems.append(Problem(loc, message, fix))
    return _BAD


def _check(hint: Any, fields: list[Field]) -> Check:
    """The check of a value of type `hint` with the limits in `fields` (and in its Annotated)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        parsers = [m for m in hint.__metadata__ if isinstance(m, Parse)]
        limits = [*fields, *(m for m in hint.__metadata__ if isinstance(m, Field))]
        if parsers:
            return _parsed(parsers[0].function)
        return _check(args[0], limits)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1 or len(args) != 2:
            raise TypeError(f"only 'X | None' unions are supported, not {hint}")
        inner = _check(options[0], fields)
        return lambda raw, loc, problems, fix: None if raw is None else inner(raw, loc, problems, fix)
    if origin is typing.Literal:
        return _choice(args)
    if origin is list:
        return _limited(_list(_check(args[0], [])), fields, "item")
    if origin is dict:
        return _mapping(_check(args[1], []))
    if hint is Any:
        return lambda raw, loc, problems, fix: raw
    if isinstance(hint, type) and issubclass(hint, Section):
        return _section(hint)
    scalar = _SCALARS.get(hint)
    if scalar is None:
        raise TypeError(f"no check for {hint}")
    return _limited(scalar, fields, "character")


def _parsed(function: Callable[[Any], Any]) -> Check:
    def check(raw: Any, loc: Loc, problems: list[Problem], fix: str) -> Any:
        try:
            return function(raw)
        except ValueError as error:
            return _bad(problems, loc, str(error), fix, raw)

    return check


def _choice(options: tuple[Any, ...]) -> Check:
    listed = repr(options[0]) if len(options) == 1 else f"one of {', '.join(repr(o) for o in options)}"

    def check(raw: Any, loc: Loc, problems: list[Problem], fix: str) -> Any:
        if any(raw == o and type(raw) is type(o) for o in options):
            return raw
        return _bad(problems, loc, f"expected {listed}", fix, raw)

    return check


def _list(item: Check) -> Check:
    def check(raw: Any, loc: Loc, problems: list[Problem], fix: str) -> Any:
        if not isinstance(raw, list):
            return _bad(problems, loc, "expected a list", fix, raw)
        items = [item(value, (*loc, index), problems, fix) for index, value in enumerate(raw)]
        return _BAD if any(i is _BAD for i in items) else items

    return check


def _mapping(value_check: Check) -> Check:
    def check(raw: Any, loc: Loc, problems: list[Problem], fix: str) -> Any:
        if not isinstance(raw, dict):
            return _bad(problems, loc, "expected a mapping of keys to values", fix, raw)
        out = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                _bad(problems, (*loc, str(key)), "expected a name (text) as key", fix, key)
                continue
            out[key] = value_check(value, (*loc, key), problems, fix)
        return _BAD if any(v is _BAD for v in out.values()) else out

    return check


def _section(cls: type[Section]) -> Check:
    def check(raw: Any, loc: Loc, problems: list[Problem], fix: str) -> Any:
        if not isinstance(raw, dict):
            return _bad(problems, loc, "expected a mapping of keys to values", fix, raw)
        before = len(problems)
        values = cls._checked(raw, loc, problems)
        if len(problems) > before:
            return _BAD
        made = object.__new__(cls)
        made.__dict__.update(values)
        return made

    return check


def _text(raw: Any, loc: Loc, problems: list[Problem], fix: str) -> Any:
    """One line of text: every setting is rendered into some file, where a line break would start a line of its own."""
    if not isinstance(raw, str):
        return _bad(problems, loc, "expected text", fix, raw)
    if _CONTROL.search(raw):
        return _bad(problems, loc, "must be one line of text, without control characters", fix, raw)
    return raw


def _whole(raw: Any, loc: Loc, problems: list[Problem], fix: str) -> Any:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
        return int(raw)
    return _bad(problems, loc, "expected a whole number", fix, raw)


def _number(raw: Any, loc: Loc, problems: list[Problem], fix: str) -> Any:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            pass
    return _bad(problems, loc, "expected a number", fix, raw)


def _yes_no(raw: Any, loc: Loc, problems: list[Problem], fix: str) -> Any:
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower() if isinstance(raw, str | int) else None
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    return _bad(problems, loc, "expected true or false", fix, raw)


_SCALARS: dict[Any, Check] = {str: _text, int: _whole, float: _number, bool: _yes_no}


def _limited(base: Check, fields: list[Field], unit: str) -> Check:
    """`base`, then the bounds, lengths and pattern the fields set (an unset one is left out)."""
    tests: list[tuple[Callable[[Any], bool], str]] = []
    for field in fields:
        if field.ge is not None:
            tests.append((lambda v, n=field.ge: v >= n, f"must be at least {field.ge}"))
        if field.gt is not None:
            tests.append((lambda v, n=field.gt: v > n, f"must be more than {field.gt}"))
        if field.le is not None:
            tests.append((lambda v, n=field.le: v <= n, f"must be at most {field.le}"))
        if field.min_length is not None:
            tests.append((lambda v, n=field.min_length: len(v) >= n, f"needs at least {field.min_length} {unit}(s)"))
        if field.max_length is not None:
            tests.append((lambda v, n=field.max_length: len(v) <= n, f"takes at most {field.max_length} {unit}(s)"))
        if field.pattern is not None:
            pattern = re.compile(field.pattern)  # `$` also matches before a final line break: _text refused those
            tests.append((lambda v, p=pattern: p.search(v) is not None, f"must match {field.pattern}"))
    if not tests:
        return base

    def check(raw: Any, loc: Loc, problems: list[Problem], fix: str) -> Any:
        value = base(raw, loc, problems, fix)
        if value is _BAD:
            return value
        for passes, message in tests:
            if not passes(value):
                return _bad(problems, loc, message, fix, raw if isinstance(raw, str | int | float) else value)
        return value

    return check
