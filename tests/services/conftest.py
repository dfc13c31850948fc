"""Fixtures for service tests that need a model-shaped directory but not the real model."""

from __future__ import annotations

import pytest

from tests.services import tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-weight 2-layer Llama with a tiny byte-level BPE tokenizer (see tiny_model.py)."""
    return tiny_model.build(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from services.engine.tokenizer import Tokenizer

    return Tokenizer(tiny_model_dir)
