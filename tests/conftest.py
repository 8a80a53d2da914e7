"""Shared fixtures: tiny float64 models for exactness checks, a text file to train on."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_problem, write_text


@pytest.fixture
def asym_problem():
    return tiny_problem("asym")


@pytest.fixture
def energy_problem():
    return tiny_problem("energy")


@pytest.fixture
def one_thread():
    """Tiny float64 models: intra-op threads only add synchronisation (10x slower on a
    busy 2-core machine); use with ``pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def text_file(tmp_path) -> str:
    """A small training text (:data:`tests.helpers.TEXT`) in a file of the test's own."""
    return write_text(tmp_path)
