"""Small immutable record classes without per-class code generation.

``dataclasses`` compiles an ``__init__``, ``__repr__``, ``__eq__`` … for every class, which
for the ~80 message and event classes of this library cost a noticeable share of a
command-line client's start-up. :class:`Record` implements those once, generically, from
the class's ``__slots__``; subclasses are declared with :func:`record`.
"""
from __future__ import annotations

from typing import Any

_MISSING = object()


class Record:
    """Base of frozen, slotted records: ``_names`` are the fields, ``_defaults`` their defaults."""

    __slots__ = ()
    _names: tuple[str, ...] = ()
    _defaults: dict[str, Any] = {}
    _hidden: frozenset[str] = frozenset()   # left out of repr (secrets)

    def __init__(self, *args: Any, **kwargs: Any):
        names = self._names
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes {len(names)} arguments")
        setter = object.__setattr__
        for name, value in zip(names, args):
            setter(self, name, value)
        for name in names[len(args):]:
            value = kwargs.pop(name, _MISSING)
            if value is _MISSING:
                value = self._defaults.get(name, _MISSING)
                if value is _MISSING:
                    raise TypeError(f"{type(self).__name__} is missing {name!r}")
            setter(self, name, value)
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected or repeated {', '.join(kwargs)}")

    def _values(self) -> tuple:
        return tuple(getattr(self, n) for n in self._names)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._names if n not in self._hidden)
        return f"{type(self).__name__}({shown})"

    def replace(self, **changes: Any) -> "Record":
        """A copy with some fields changed (like ``dataclasses.replace``)."""
        values = dict(zip(self._names, self._values()))
        values.update(changes)
        return type(self)(**values)


def record(cls: type, base: type = Record, names: tuple[str, ...] | None = None,
           defaults: dict[str, Any] | None = None, hidden: frozenset[str] = frozenset()) -> type:
    """Make a :class:`Record` subclass named like ``cls`` with ``names`` as its slots.

    Without ``names``, the fields are ``cls``'s annotations in order, with class-level
    values as defaults.
    """
    if names is None:
        annotations = cls.__dict__.get("__annotations__", {})
        names = tuple(annotations)
        defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
    ns = {k: v for k, v in cls.__dict__.items()
          if k not in ("__dict__", "__weakref__", "__annotations__") and k not in names}
    ns.update(__slots__=names, _names=names, _defaults=dict(defaults or {}), _hidden=frozenset(hidden))
    bases = tuple(b for b in cls.__bases__ if b is not object) or (base,)
    if base not in bases and not any(issubclass(b, base) for b in bases):
        bases = bases + (base,)
    return type(cls.__name__, bases, ns)
