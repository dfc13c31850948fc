"""Responses end to end in one process: the real SmolLM2 engine (LocalBackend), a real Redis,
uvicorn and the OpenAI SDK. The disaggregated path is tested in tests/e2e/test_responses_pd.py."""

from __future__ import annotations

import httpx
import openai
import pytest

from gateway.app import create_app
from tests.gateway.local_backend import LocalBackend
from gateway.config import GatewaySettings
from tandem.redis_server import EmbeddedRedis

from .responses_support import SyncStore
from .serving import serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from services.engine import EngineConfig, LLMEngine
    from tandem.settings import Settings

    engine = LLMEngine(EngineConfig(kv_cache_bytes=256 << 20), Settings.from_env().cache_dir)
    settings = GatewaySettings(served_model_name=engine.model_name, request_timeout_s=120)
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        store = SyncStore(server.url, namespace="tandem", ttl_seconds=600)
        with serve(create_app(LocalBackend(engine), settings, store.for_app())) as url:
            yield url, engine.model_name, store


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=f"{stack[0]}/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def model(stack):
    return stack[1]


def test_paris_streamed_and_not_agree(client, model, stack):
    r = client.responses.create(model=model, input="What is the capital of France?", temperature=0,
                                max_output_tokens=16)
    assert "Paris" in r.output_text and r.status in ("completed", "incomplete")
    usage = r.usage.model_extra
    assert len(usage["decode_time_arr"]) == r.usage.output_tokens - 1 and usage["prefill_time"] > 0
    with client.responses.stream(model=model, input="What is the capital of France?", temperature=0,
                                 max_output_tokens=16) as stream:
        final = stream.get_final_response()
    assert final.output_text == r.output_text and final.usage.output_tokens == r.usage.output_tokens
    assert 0 < stack[2].ttl(final.id) <= 600


def test_max_output_tokens_is_incomplete_with_exact_counts(client, model):
    r = client.responses.create(model=model, input="Write a long essay about the sea.",
                                temperature=0, max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3 and len(r.usage.model_extra["decode_time_arr"]) == 2


def test_chain_input_tokens_cover_the_history(client, model):
    r1 = client.responses.create(model=model, input="My name is Ada.", temperature=0,
                                 max_output_tokens=8)
    r2 = client.responses.create(model=model, input="What is my name?", temperature=0,
                                 max_output_tokens=8, previous_response_id=r1.id)
    alone = client.responses.create(model=model, input="What is my name?", temperature=0,
                                    max_output_tokens=8, store=False)
    assert r2.usage.input_tokens > alone.usage.input_tokens + r1.usage.output_tokens


def test_context_overflow_disabled_is_400_and_auto_truncates(client, model, stack):
    r1 = client.responses.create(model=model, input="word " * 1500, max_output_tokens=2,
                                 temperature=0)
    assert r1.usage.input_tokens > 1500
    turn = {"model": model, "input": "Say hi.", "previous_response_id": r1.id,
            "max_output_tokens": 7000, "temperature": 0}        # the history leaves no room
    r = httpx.post(f"{stack[0]}/v1/responses", timeout=60, json=turn)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.text
    r2 = client.responses.create(truncation="auto", **turn)      # drops the long first turn
    assert r2.status == "completed" and r2.usage.input_tokens < 100
