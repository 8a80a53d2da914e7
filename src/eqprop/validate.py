"""Small validators of settings: each raises one :class:`~eqprop.errors.ConfigError` line
that names the value and says what is allowed (design §7).

``owner`` says whose setting it is: a section name (``"model"`` gives
``model.d_model=3: ...``) or the object being validated (an instance gives
``Anderson(m=0): ...``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .errors import ConfigError

__all__ = ["boolean", "choice", "integer", "interval", "label", "positive"]


def label(owner: object, name: str, value: object) -> str:
    """``section.name=value`` for a section name, ``Class(name=value)`` for an object."""
    if isinstance(owner, str):
        return f"{owner}.{name}={value!r}" if owner else f"{name}={value!r}"
    return f"{type(owner).__name__}({name}={value!r})"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive(owner: object, name: str, value: object) -> None:
    """A finite number > 0."""
    if not (_is_number(value) and 0 < value < math.inf):
        raise ConfigError(f"{label(owner, name, value)}: must be a finite number > 0")


def interval(owner: object, name: str, value: object, lo: float, hi: float, *,
             lo_open: bool = False, hi_open: bool = False) -> None:
    """A number in ``[lo, hi]``; ``lo_open`` / ``hi_open`` exclude an end."""
    ok = _is_number(value) and not math.isnan(value) and (
        value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        span = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{label(owner, name, value)}: must be a number in {span}")


def integer(owner: object, name: str, value: object, minimum: int = 1,
            maximum: int | None = None) -> None:
    """An integer (not a bool) ``≥ minimum`` (and ``≤ maximum`` if given)."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum
            and (maximum is None or value <= maximum)):
        allowed = f"in [{minimum}, {maximum}]" if maximum is not None else f"≥ {minimum}"
        raise ConfigError(f"{label(owner, name, value)}: must be an integer {allowed}")


def choice(owner: object, name: str, value: object, allowed: Iterable[str]) -> None:
    """One of ``allowed``."""
    allowed = tuple(allowed)
    if not (isinstance(value, str) and value in allowed):
        raise ConfigError(f"{label(owner, name, value)}: allowed values are {', '.join(allowed)}")


def boolean(owner: object, name: str, value: object) -> None:
    """True or False."""
    if not isinstance(value, bool):
        raise ConfigError(f"{label(owner, name, value)}: must be true or false")
