"""Frozen value records without ``dataclasses``.

``import dataclasses`` pulls in ``inspect`` and costs about 8 ms, on every plugin start,
for the five small value types the launch path uses. This gives them what they need:
keyword or positional construction with defaults, immutability, equality and hashing
over the compared fields, a readable repr, and ``replace()``.
"""

from __future__ import annotations


class Record:
    __slots__ = ()
    _fields: tuple = ()
    _defaults: dict = {}
    _uncompared: tuple = ()

    def __init__(self, *args, **kwargs):
        if len(args) > len(self._fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(self._fields)} positional arguments")
        values = dict(zip(self._fields, args))
        for key, value in kwargs.items():
            if key not in self._fields or key in values:
                raise TypeError(f"{type(self).__name__}: unexpected or repeated argument {key!r}")
            values[key] = value
        for name in self._fields:
            if name not in values:
                if name not in self._defaults:
                    raise TypeError(f"{type(self).__name__}: missing argument {name!r}")
                values[name] = self._defaults[name]
            object.__setattr__(self, name, values[name])
        self._validate()

    def _validate(self) -> None:
        """Subclasses check their invariants here."""

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _key(self) -> tuple:
        return tuple(getattr(self, f) for f in self._fields if f not in self._uncompared)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self._fields)})"

    def replace(self, **changes):
        return type(self)(**{**{f: getattr(self, f) for f in self._fields}, **changes})
