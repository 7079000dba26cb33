"""Argument checks shared by every course_lib module: one home for "is this input allowed?".

Each function returns the value (normalised: ``positive_float`` returns a
``float``) or raises ``TypeError`` (wrong kind of object) / ``ValueError``
(right kind, value not allowed) with a message that names the argument, what
was passed and what is allowed. ``bool`` is never accepted as a number, and
``allow_none=True`` lets ``None`` through unchanged.

Example:
    >>> positive_int("epochs", 3)
    3
    >>> positive_float("lr", 1e-3)
    0.001
    >>> one_of("precision", "fp32", ("fp32", "bf16"))
    'fp32'
    >>> positive_int("epochs", 0)
    Traceback (most recent call last):
    ...
    ValueError: epochs must be a positive int, got 0
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Iterable

__all__ = ["positive_int", "non_negative_int", "positive_float", "non_negative_float",
           "fraction", "one_of", "instance_of", "callable_or_none"]


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _kind(value) -> str:
    return f"{type(value).__name__} ({value!r})"


def positive_int(name: str, value, *, allow_none: bool = False) -> int | None:
    """``value`` as an int >= 1 (``None`` too when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not _is_int(value):
        raise TypeError(f"{name} must be a positive int{' or None' if allow_none else ''}, "
                        f"got {_kind(value)}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def non_negative_int(name: str, value, *, allow_none: bool = False) -> int | None:
    """``value`` as an int >= 0 (``None`` too when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not _is_int(value):
        raise TypeError(f"{name} must be a non-negative int{' or None' if allow_none else ''}, "
                        f"got {_kind(value)}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def positive_float(name: str, value, *, allow_none: bool = False) -> float | None:
    """``value`` as a finite float > 0 (``None`` too when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not _is_real(value):
        raise TypeError(f"{name} must be a positive float{' or None' if allow_none else ''}, "
                        f"got {_kind(value)}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive, finite float, got {value!r}")
    return float(value)


def non_negative_float(name: str, value, *, allow_none: bool = False) -> float | None:
    """``value`` as a finite float >= 0 (``None`` too when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not _is_real(value):
        raise TypeError(f"{name} must be a non-negative float{' or None' if allow_none else ''}, "
                        f"got {_kind(value)}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative, finite float, got {value!r}")
    return float(value)


def fraction(name: str, value, *, closed: bool = False) -> float:
    """``value`` as a float in ``(0, 1)`` (``[0, 1]`` when ``closed``)."""
    interval = "[0, 1]" if closed else "(0, 1)"
    if not _is_real(value):
        raise TypeError(f"{name} must be a float in {interval}, got {_kind(value)}")
    ok = 0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0
    if not ok:
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def one_of(name: str, value, allowed: Iterable[Any]):
    """``value`` if it is one of ``allowed`` (strings, usually), else a ``ValueError`` listing them."""
    allowed = list(allowed)
    try:
        ok = value in allowed
    except TypeError:  # unhashable / incomparable
        ok = False
    if not ok:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")
    return value


def instance_of(name: str, value, types, what: str | None = None):
    """``value`` if ``isinstance(value, types)``, else a ``TypeError`` saying what is expected."""
    if not isinstance(value, types):
        if what is None:
            names = types if isinstance(types, tuple) else (types,)
            what = " or ".join(t.__name__ for t in names)
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return value


def callable_or_none(name: str, value):
    """``value`` if it is callable or ``None``."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
    return value
