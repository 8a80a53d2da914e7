"""The top-level API: explicit, lazy (``import eqprop`` and ``eqprop --help`` stay light)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import eqprop

ROOT = Path(__file__).parent.parent


def modules_after(code: str) -> set[str]:
    """The modules loaded after running ``code`` in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(*sys.modules)"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return set(out.split())


@pytest.mark.parametrize("code", [
    "import eqprop",
    "import contextlib, io\nfrom eqprop.cli.main import main\n"
    "with contextlib.redirect_stdout(io.StringIO()): assert main(['--help']) == 0",
])
def test_no_torch_on_import_and_help(code):
    loaded = modules_after(code)
    assert "eqprop" in loaded
    assert "torch" not in loaded and "numpy" not in loaded


def test_every_name_in_all_resolves_to_its_subpackage_object():
    assert len(set(eqprop.__all__)) == len(eqprop.__all__)
    for name in eqprop.__all__:
        value = getattr(eqprop, name)
        where = importlib.import_module(f"eqprop.{eqprop._WHERE[name]}")
        assert value is (where if name == eqprop._WHERE[name] else getattr(where, name)), name
        assert name in getattr(where, "__all__", ()) or value is where, name
    for name in ("train", "TrainConfig", "load_run", "generate"):
        assert name in eqprop.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        eqprop.nope  # noqa: B018


def test_train_is_the_package_and_its_function():
    """``eqprop.train`` is bound to the subpackage by the import system; calling it trains."""
    import eqprop.train.run
    from eqprop import train

    assert train is sys.modules["eqprop.train"] and train.run is eqprop.train.run
    assert type(train).__call__ is eqprop.train.run.train
