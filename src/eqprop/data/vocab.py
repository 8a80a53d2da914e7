"""Character-level vocabulary: the map between text and token ids."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

__all__ = ["Vocab"]


def _show(chars: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(c) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


class Vocab:
    """An ordered set of characters; token ``i`` is ``chars[i]``.

    Args:
        chars: the distinct characters, in token order.
    """

    def __init__(self, chars: str | list[str]):
        chars = "".join(chars)
        if not chars:
            raise DataError("a vocabulary needs at least one character")
        if len(set(chars)) != len(chars):
            raise DataError("a vocabulary lists every character once")
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars)}
        # sorted code points -> token ids, for a vectorised encode
        codes = np.array([ord(c) for c in chars], dtype=np.int64)
        self._order = np.argsort(codes)
        self._codes = codes[self._order]

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """The sorted set of characters that ``text`` uses."""
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"Vocab({len(self)} characters)"

    def encode(self, text: str, what: str = "text") -> Tensor:
        """``text`` -> token ids ``(N,)`` long.

        Raises:
            DataError: ``text`` has characters outside the vocabulary (``what`` names it).
        """
        if not text:
            return torch.zeros(0, dtype=torch.long)
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        pos = np.searchsorted(self._codes, points).clip(max=len(self._codes) - 1)
        known = self._codes[pos] == points
        if not known.all():
            unknown = sorted({chr(p) for p in points[~known]})
            raise DataError(f"{what} has characters outside the vocabulary: {_show(unknown)}; "
                            f"allowed are the {len(self)} characters the model was trained on")
        return torch.from_numpy(self._order[pos].astype(np.int64))

    def decode(self, ids: Tensor) -> str:
        """Token ids ``(N,)`` -> text."""
        return "".join(self.chars[i] for i in ids.reshape(-1).tolist())

    def to_dict(self) -> dict[str, str]:
        """Plain form stored with checkpoints."""
        return {"chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> Vocab:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or not isinstance(d.get("chars"), str):
            raise DataError("a stored vocabulary must be {'chars': str}")
        return cls(d["chars"])
