"""Plain value classes for the start-up path, in place of ``@dataclass`` (issue 11, target 4).

Making a dataclass costs 0.9-1.7 ms of CPU at import in Python 3.11 (it compiles each
generated method with ``exec``); ``npt`` and ``sshnp`` import about thirty of them before
their first packet. A class here writes its own ``__init__`` (so its signature stays plain
and checked) and lists its fields in ``__slots__``; :class:`Record` gives it what
``@dataclass`` gave: ``__repr__`` and ``__eq__`` over the fields (in ``__slots__`` order, like
the dataclass's field order), ``replace(**changes)`` (as ``dataclasses.replace``) and pickling
and copying through the constructor. :class:`Frozen` adds the frozen behaviour: assignment
raises :class:`FrozenError` (an ``AttributeError``, like ``dataclasses.FrozenInstanceError``),
and instances hash by their fields. ``__init__`` of a frozen class sets its fields with
``set_field(self, name, value)`` (``object.__setattr__``, what a frozen dataclass does).

A field left out of the repr or the comparison (``field(repr=False, compare=False)``) is
listed in the class's ``_hidden`` tuple.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

set_field = object.__setattr__  # what __init__ of a Frozen class sets its fields with
T = TypeVar("T", bound="Record")


class FrozenError(AttributeError):
    """Assignment to a field of a frozen record."""


class Record:
    """A value class: ``__repr__``, ``__eq__`` and ``replace`` over ``__slots__``; unhashable."""

    __slots__ = ()
    _hidden: ClassVar[tuple[str, ...]] = ()
    _fields: ClassVar[tuple[str, ...]] = ()  # every field, in order
    _shown: ClassVar[tuple[str, ...]] = ()  # those in the repr and the comparison

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            names.extend(klass.__dict__.get("__slots__", ()))
        cls._fields = tuple(names)
        cls._shown = tuple(n for n in names if n not in cls._hidden)

    def __repr__(self) -> str:
        body = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._shown)
        return f"{type(self).__qualname__}({body})"

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in self._shown)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._key() == other._key()  # type: ignore[attr-defined]
        return NotImplemented

    # (defining __eq__ without __hash__ leaves the class unhashable, as a mutable dataclass)

    def replace(self: T, **changes: Any) -> T:
        """A copy with ``changes`` (the constructor runs again, as ``dataclasses.replace``)."""
        values = {n: getattr(self, n) for n in self._fields}
        values.update(changes)
        return type(self)(**values)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), {n: getattr(self, n) for n in self._fields}))


def _rebuild(cls: type[T], values: dict[str, Any]) -> T:
    return cls(**values)


class Frozen(Record):
    """A :class:`Record` whose fields cannot be assigned after ``__init__``; hashable."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenError(f"cannot delete field {name!r}")

    def __hash__(self) -> int:
        return hash(self._key())
