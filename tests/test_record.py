"""noports.record classes behave as the dataclasses they replace (issue 11, target 4): the same
repr, equality, hashing, frozen-ness, replace and copies, checked against the stdlib on the
same values; and the converted start-path classes keep their constructors' defaults."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any

import pytest

from noports.at.commands import Metadata
from noports.at.protocol import Closed, Data, Notification, Prompt
from noports.crypto.stream import CtrKeys
from noports.record import Frozen, FrozenError, Record, set_field
from noports.session.features import DaemonInfo
from noports.session.handshake import SessionSpec
from noports.tunnel.keys import AeadKeys
from noports.tunnel.multi import MultiStats


class Point(Frozen):
    __slots__ = ("x", "y", "note", "raw")
    _hidden = ("raw",)
    x: int
    y: int
    note: str
    raw: Any

    def __init__(self, x: int, y: int = 0, note: str = "", raw: Any = None) -> None:
        set_field(self, "x", x)
        set_field(self, "y", y)
        set_field(self, "note", note)
        set_field(self, "raw", {} if raw is None else raw)


@dataclasses.dataclass(frozen=True)
class DPoint:  # the dataclass Point stands in for
    x: int
    y: int = 0
    note: str = ""
    raw: Any = dataclasses.field(default_factory=dict, compare=False, repr=False)


class Counter(Record):
    __slots__ = ("n", "items")
    n: int
    items: list[str]

    def __init__(self, n: int = 0, items: list[str] | None = None) -> None:
        self.n = n
        self.items = [] if items is None else items


@dataclasses.dataclass
class DCounter:
    n: int = 0
    items: list[str] = dataclasses.field(default_factory=list)


def _strip(text: str) -> str:
    return text.split("(", 1)[1]  # the class name differs by design


@pytest.mark.parametrize(
    "args",
    [(1,), (1, 2), (3, 4, "a'b\n"), (0, -1, "", {"k": 1}), (None, (1, [2]), "x", [1])],
)
def test_frozen_record_matches_a_frozen_dataclass(args: tuple[Any, ...]) -> None:
    ours, std = Point(*args), DPoint(*args)
    assert _strip(repr(ours)) == _strip(repr(std))
    assert ours == Point(*args) and std == DPoint(*args)
    # the hidden field is not compared, the others are
    shown = dict(zip(("x", "y", "note"), args[:3], strict=False))
    assert ours == Point(**shown, raw={"other": 1}) and std == DPoint(**shown, raw={"o": 1})
    assert (ours != Point(7, *args[1:])) is (std != DPoint(7, *args[1:]))
    assert ours != DPoint(*args) and ours.__eq__(DPoint(*args)) is NotImplemented
    try:
        expected: Any = hash(std)
    except TypeError:
        expected = TypeError
    if expected is TypeError:
        with pytest.raises(TypeError):
            hash(ours)
    else:
        assert hash(ours) == hash(Point(*args))
        assert {ours: 1}[Point(*args)] == 1
    with pytest.raises(AttributeError) as exc:
        ours.x = 5  # type: ignore[misc]
    assert isinstance(exc.value, FrozenError)
    with pytest.raises(dataclasses.FrozenInstanceError):
        std.x = 5  # type: ignore[misc]
    with pytest.raises(FrozenError):
        del ours.y
    assert ours.x == args[0]


def test_replace_and_copies_match_dataclasses() -> None:
    ours, std = Point(1, 2, "n", {"r": 1}), DPoint(1, 2, "n", {"r": 1})
    assert _strip(repr(ours.replace(y=9))) == _strip(repr(dataclasses.replace(std, y=9)))
    assert ours.replace(y=9).raw is ours.raw  # as dataclasses.replace: the same objects
    assert ours.replace() == ours and ours.replace() is not ours
    with pytest.raises(TypeError):
        ours.replace(z=1)
    for dup in (copy.copy(ours), copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert dup == ours and dup.raw == ours.raw and type(dup) is Point
    assert Point._fields == ("x", "y", "note", "raw") and Point._shown == ("x", "y", "note")


def test_mutable_record_matches_a_dataclass() -> None:
    ours, std = Counter(), DCounter()
    assert _strip(repr(ours)) == _strip(repr(std))
    assert Counter().items is not ours.items  # a fresh default per instance
    ours.n += 2
    ours.items.append("a")
    std.n += 2
    std.items.append("a")
    assert _strip(repr(ours)) == _strip(repr(std)) == "n=2, items=['a'])"
    assert ours == Counter(2, ["a"]) and ours != Counter(2, [])
    with pytest.raises(TypeError):
        hash(ours)  # unhashable, as a mutable dataclass with eq
    with pytest.raises(TypeError):
        hash(std)
    with pytest.raises(AttributeError):
        ours.other = 1  # type: ignore[attr-defined]  # __slots__: no stray attributes
    assert pickle.loads(pickle.dumps(ours)) == ours


def test_start_path_classes_keep_their_constructors() -> None:
    assert Metadata() == Metadata(*([None] * 17))
    assert Metadata(ttl=5).merged(Metadata(ttr=-1, ttl=7)) == Metadata(ttl=7, ttr=-1)
    assert repr(Metadata(ttl=1)).startswith("Metadata(ttl=1, ttb=None, ttr=None, ccd=None,")
    n = Notification("1", "@a", "@b", "k", "v", "update", 0, "MessageType.key", False, Metadata())
    assert n.raw == {} and n.decrypted is False and "raw=" not in repr(n)
    assert n == n.replace(raw={"x": 1}) and n != n.replace(decrypted=True)
    assert n.replace(value="p", decrypted=True).value == "p"
    assert Prompt("@") == Prompt("@") and Data("x") == Data("x", None) != Data("x", "scan")
    assert Closed() == Closed() and hash(Closed()) == hash(Closed())
    info = DaemonInfo({"a": True}, raw={"x": 1})
    assert info == DaemonInfo({"a": True}) and info.allowed_services == () and not info.legacy
    assert "raw" not in repr(info)
    assert MultiStats().errors == [] and MultiStats().errors is not MultiStats().errors
    with pytest.raises(Exception, match="32 bytes"):
        AeadKeys(b"short")
    k = AeadKeys(bytes(32), "s1")
    assert k.replace(session_id="s2").session_id == "s2" and k.suite is None
    assert "secret" not in repr(k) and bytes(32).hex() not in repr(k)
    with pytest.raises(Exception, match="32"):
        CtrKeys(b"x", bytes(16))


def test_session_spec_validates_on_construction_and_replace() -> None:
    spec = SessionSpec(kind="npt", daemon="b", device="dev", relay="r")
    assert spec.daemon == "@b" and spec.relay == "@r" and spec.remote_port == 22
    assert spec.required  # escr: the daemon feature it needs was added, as before
    again = spec.replace(relay="q")
    assert again.relay == "@q" and again.required == spec.required and again.kind == "npt"
    with pytest.raises(ValueError):
        spec.replace(kind="other")
