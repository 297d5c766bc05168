"""Typed attrs converters.

``attrs.field(converter=tuple)`` works at run time, but mypy's attrs plugin cannot solve
the type variable of the generic ``tuple`` constructor and types the ``__init__``
argument as ``Iterable[_T_co]``, which no argument matches. These converters do the
same as ``tuple`` with a concrete element type.

Examples:
    >>> int_tuple(range(3)), str_tuple(["a", "b"])
    ((0, 1, 2), ('a', 'b'))
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["int_tuple", "str_tuple"]


def int_tuple(values: Iterable[int]) -> tuple[int, ...]:
    """``tuple(values)``, typed for integers."""
    return tuple(values)


def str_tuple(values: Iterable[str]) -> tuple[str, ...]:
    """``tuple(values)``, typed for strings."""
    return tuple(values)
