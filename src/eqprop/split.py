"""The conservative / non-conservative split of a field, as a declared interface (design §1).

``F(z) = c(z) + n(z)``: ``c`` the conservative part (``-∇E_c``, for the LM the leak
and the drive, ``-(1 + γ) z + x``), ``n`` the non-conservative part (attention and
feed-forward). Solvers and regularizers that treat the two parts differently
(IMEX takes ``c`` implicitly, jacreg penalises ``∂n/∂z``, the solver bench keeps
the split of the field it wraps) ask for a :class:`SplitField` by type, never for
an attribute that happens to be called ``c``.
"""

from __future__ import annotations

from abc import abstractmethod

from torch import Tensor

from .errors import ConfigError
from .fields import Field

__all__ = ["SplitField", "require_split"]


class SplitField(Field):
    """A :class:`~eqprop.fields.Field` that declares ``F = conservative + nonconservative``.

    Subclasses define :meth:`__call__` (the fast ``F``), :meth:`conservative` and
    :meth:`nonconservative`; the two parts must add up to ``F``.
    """

    @abstractmethod
    def conservative(self, z: Tensor) -> Tensor:
        """``c(z)``, shape of ``z`` ``(B, ...)``: affine in ``z``, ``-z + d(z)`` with a drive
        ``d`` that holds no attention or feed-forward (IMEX solves it implicitly)."""

    @abstractmethod
    def nonconservative(self, z: Tensor) -> Tensor:
        """``n(z) = F(z) - c(z)``, shape of ``z`` ``(B, ...)``, forward-mode differentiable."""


def require_split(field: object, who: str) -> SplitField:
    """``field`` if it is a :class:`SplitField`, else a ConfigError naming ``who`` needs one."""
    if not isinstance(field, SplitField):
        raise ConfigError(f"{who} needs a field that declares its conservative / "
                          f"non-conservative split (an eqprop.SplitField, as LMField); "
                          f"{type(field).__name__} is not one")
    return field
