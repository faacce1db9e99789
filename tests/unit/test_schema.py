"""The settings schema: what a section accepts, what it turns values into, and what it says of the rest."""

from __future__ import annotations

from ipaddress import IPv4Network, ip_network
from typing import Annotated, Any, Literal

import pytest

from core.schema import Field, Invalid, Parse, Problem, Section


def _network(value: object) -> Any:
    try:
        return ip_network(str(value))
    except ValueError:
        raise ValueError(f"'{value}' is not a network") from None


Port = Annotated[int, Field(ge=1, le=65535)]
Duration = Annotated[str, Field(pattern=r"^[1-9][0-9]*[smhd]$")]


class Inner(Section):
    port: Port = Field(6432, description="the port, e.g. 6432")
    mode: Literal["transaction", "session"] = "transaction"


class Outer(Section):
    name: str = Field(description="a name, e.g. main")
    ratio: float = Field(1, gt=0)
    enabled: bool = True
    keep: Duration | None = Field(None, description="how long, e.g. 30d")
    networks: list[Annotated[IPv4Network, Parse(_network)]] = Field(
        min_length=1, description="networks, e.g. [10.0.0.0/8]"
    )
    inner: Inner = Inner()
    by_name: dict[str, Inner] = Field({})


def problems(data: Any) -> list[Problem]:
    with pytest.raises(Invalid) as raised:
        Outer.parse(data, ("top",))
    return raised.value.problems


def test_a_valid_mapping_becomes_a_frozen_section_with_its_defaults() -> None:
    outer = Outer.parse({"name": "main", "ratio": 2, "networks": ["10.0.0.0/8"], "by_name": {"a": {"port": "5432"}}})
    assert outer.name == "main" and outer.enabled is True and outer.keep is None
    assert outer.ratio == 2.0 and isinstance(outer.ratio, float)
    assert outer.networks == [ip_network("10.0.0.0/8")]
    assert outer.inner == Inner() and outer.by_name["a"].port == 5432
    with pytest.raises(AttributeError):
        outer.name = "other"  # type: ignore[misc]
    assert outer.replace(name="other").name == "other" and outer.name == "main"
    assert outer.dump()["networks"] == ["10.0.0.0/8"] and outer.dump()["inner"] == {"port": 6432, "mode": "transaction"}


def test_every_problem_is_named_with_its_key_and_its_fix() -> None:
    found = problems(
        {
            "nmae": "main",
            "ratio": 0,
            "keep": "30 days",
            "networks": ["10.0.0.0/8", "10.0.0.1/33"],
            "inner": {"port": 70000, "mode": "statement"},
            "by_name": {"a": {"port": "many"}},
        }
    )
    assert [(p.loc, p.message) for p in found] == [
        (("top", "nmae"), "unknown key"),
        (("top", "name"), "required key is missing"),
        (("top", "ratio"), "must be more than 0 (got 0)"),
        (("top", "keep"), "must match ^[1-9][0-9]*[smhd]$ (got '30 days')"),
        (("top", "networks", 1), "'10.0.0.1/33' is not a network"),
        (("top", "inner", "port"), "must be at most 65535 (got 70000)"),
        (("top", "inner", "mode"), "expected one of 'transaction', 'session' (got 'statement')"),
        (("top", "by_name", "a", "port"), "expected a whole number (got 'many')"),
    ]
    fixes = {p.loc[-1]: p.fix for p in found}
    assert fixes["nmae"] == (
        "remove it or correct its spelling; keys allowed here: name, ratio, enabled, keep, networks, inner, by_name"
    )
    assert fixes["name"] == "a name, e.g. main" and fixes["keep"] == "how long, e.g. 30d"
    assert fixes[1] == "networks, e.g. [10.0.0.0/8]" and fixes["port"] == "the port, e.g. 6432"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": 5}, "expected text (got 5)"),
        ({"name": "x", "enabled": "maybe"}, "expected true or false (got 'maybe')"),
        ({"name": "x", "ratio": True}, "expected a number (got True)"),
        ({"name": "x", "networks": []}, "needs at least 1 item(s)"),
        ({"name": "x", "networks": "10.0.0.0/8"}, "expected a list (got '10.0.0.0/8')"),
        ({"name": "x", "inner": 5}, "expected a mapping of keys to values (got 5)"),
        ({"name": "x", "keep": "30d\n"}, "must be one line of text, without control characters (got '30d\\n')"),
        ({"name": "main\tx"}, "must be one line of text, without control characters (got 'main\\tx')"),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused(data: dict[str, Any], message: str) -> None:
    assert message in [p.message for p in problems({"networks": ["10.0.0.0/8"], **data})]


def test_quoted_numbers_and_yes_no_words_are_read_as_their_kind() -> None:
    outer = Outer.parse({"name": "x", "networks": ["10.0.0.0/8"], "enabled": "no", "inner": {"port": "22"}})
    assert outer.enabled is False and outer.inner.port == 22


def test_a_list_or_mapping_default_is_not_shared_between_entries() -> None:
    first, second = (Outer.parse({"name": n, "networks": ["10.0.0.0/8"]}) for n in ("a", "b"))
    assert first.by_name == {} and first.by_name is not second.by_name


def test_a_union_other_than_optional_is_a_programming_error() -> None:
    class Wrong(Section):
        value: int | str = 1

    with pytest.raises(TypeError, match=r"only 'X \| None'"):
        Wrong.keys()
