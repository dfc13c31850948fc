"""Shared fixtures: one real SmolLM2 engine per test session (loading takes seconds)."""

from __future__ import annotations

import pytest

from tandem.settings import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def engine(settings):
    from services.engine import EngineConfig, LLMEngine

    return LLMEngine(EngineConfig(dtype="float32", kv_cache_bytes=512 << 20), settings.cache_dir)


@pytest.fixture(scope="session")
def tokenizer(engine):
    return engine.tokenizer
