"""Where a benchmark's markdown result goes."""

from __future__ import annotations

from pathlib import Path

__all__ = ["emit"]


def emit(text: str, out: str | Path | None) -> None:
    """Print ``text`` and, when ``out`` names a file, append it there (earlier results in
    that file are kept)."""
    print(text)
    if out:
        with Path(out).open("a", encoding="utf-8") as fh:
            fh.write(text + "\n")
