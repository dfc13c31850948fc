"""Input limits of both APIs (issue 13 item 4; the table is in docs/api.md): each over-limit
request is an OpenAI-style 400 (413 for the body) naming its field, and nothing runs.

The prompt is counted by the real SmolLM2 tokenizer and chat template against the real model's
context (8192 tokens); the generation is scripted (FakeBackend), so no engine is loaded."""

from __future__ import annotations

import httpx
import pytest

from services.engine.checkpoint import default_model_path, resolve_model_dir
from services.engine.config import ModelConfig
from services.engine.tokenizer import Tokenizer
from tandem.settings import Settings

from .fakes import FakeBackend
from .responses_support import MODEL, assert_error, gateway

MAX_ITEMS = 8
CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "name": "f", "parameters": {"type": "object"}}


class TokenizerBackend(FakeBackend):
    """Scripted generation; prompts through the real model's chat template and its context."""

    def __init__(self) -> None:
        super().__init__()
        model_dir = resolve_model_dir(str(default_model_path()), Settings.from_env().cache_dir)
        self.tokenizer = Tokenizer(model_dir)
        self.max_model_len = ModelConfig.from_json(model_dir / "config.json").max_position_embeddings

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        self.prompts.append(messages)
        return self.tokenizer.apply_chat_template(messages)


@pytest.fixture(scope="module")
def backend():
    return TokenizerBackend()


@pytest.fixture(scope="module")
def base_url(backend, store):
    with gateway(backend, store, max_input_items=MAX_ITEMS, max_body_bytes=64 << 10) as url:
        yield url


@pytest.fixture
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield c


@pytest.fixture
def fake(backend):
    backend.reset()
    return backend


def chat(http, **body):
    return http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 4, **body})


def responses(http, **body):
    return http.post("/v1/responses", json={"model": MODEL, "input": "Hi", **body})


def long_text(tokens: int) -> str:
    return "word " * tokens      # one token per " word"


def test_the_real_context_is_what_is_checked(backend):
    assert backend.max_model_len == 8192
    assert len(backend.chat_prompt([{"role": "user", "content": long_text(100)}])) in range(100, 140)


# -- count of messages / input items ---------------------------------------------------------------
def test_messages_over_the_limit(http, fake):
    assert chat(http, messages=HI * MAX_ITEMS).status_code == 200
    err = assert_error(chat(http, messages=HI * (MAX_ITEMS + 1)), 400, "messages", "array_above_max_length")
    assert f"maximum length {MAX_ITEMS}" in err["message"] and f"length {MAX_ITEMS + 1}" in err["message"]
    assert len(fake.params) == 1


def test_input_items_over_the_limit(http, fake):
    items = [{"role": "user", "content": "Hi"}]
    assert responses(http, input=items * MAX_ITEMS).status_code == 200
    err = assert_error(responses(http, input=items * (MAX_ITEMS + 1)), 400, "input", "array_above_max_length")
    assert f"length {MAX_ITEMS + 1}" in err["message"]
    assert len(fake.params) == 1


# -- tools, stop, metadata -------------------------------------------------------------------------
def test_at_most_128_tools(http, fake):
    chat_tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]
    assert_error(chat(http, tools=chat_tools), 400, "tools", "invalid_value")
    tools = [{**TOOL, "name": f"f{i}"} for i in range(129)]
    assert_error(responses(http, tools=tools), 400, "tools", "invalid_value")
    assert fake.params == []


def test_at_most_4_stop_sequences(http, fake):
    assert chat(http, stop=["a", "b", "c", "d"]).status_code == 200
    assert_error(chat(http, stop=["a", "b", "c", "d", "e"]), 400, "stop", "invalid_value")


@pytest.mark.parametrize("metadata", [{f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"},
                                      {"k": "v" * 513}], ids=["17-pairs", "key-65", "value-513"])
def test_metadata_limits(http, fake, metadata):
    err = assert_error(responses(http, metadata=metadata), 400, "metadata", "invalid_value")
    assert any(n in err["message"] for n in ("16", "64", "512"))


def test_metadata_at_the_limits_is_kept(http, fake):
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    r = responses(http, metadata=metadata)
    assert r.status_code == 200 and r.json()["metadata"] == metadata


# -- token limits ----------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_chat_token_limit_bounds(http, fake, field):
    assert_error(chat(http, **{"max_tokens": None, field: 0}), 400, field, "invalid_value")
    err = assert_error(chat(http, **{"max_tokens": None, field: 8192}), 400, field, "invalid_value")
    assert "8192" in err["message"]
    assert fake.params == []


def test_max_output_tokens_bounds(http, fake):
    assert_error(responses(http, max_output_tokens=0), 400, "max_output_tokens", "invalid_value")
    err = assert_error(responses(http, max_output_tokens=8192), 400, "max_output_tokens", "invalid_value")
    assert "8192" in err["message"]
    assert responses(http, max_output_tokens=8000).status_code == 200


# -- prompt over the context -----------------------------------------------------------------------
def test_chat_prompt_over_the_context_names_messages_with_the_counts(http, fake):
    big = [{"role": "user", "content": long_text(8300)}]
    err = assert_error(chat(http, messages=big, max_tokens=None), 400, "messages", "context_length_exceeded")
    assert "8192" in err["message"] and "prompt has 83" in err["message"]
    fits = [{"role": "user", "content": long_text(8000)}]
    err = assert_error(chat(http, messages=fits, max_tokens=500), 400, "messages", "context_length_exceeded")
    assert "max_tokens 500" in err["message"]
    assert chat(http, messages=fits, max_tokens=100).status_code == 200
    assert len(fake.params) == 1


def test_responses_input_over_the_context_names_input(http, fake):
    err = assert_error(responses(http, input=long_text(8300)), 400, "input", "context_length_exceeded")
    assert "8192" in err["message"]
    assert fake.params == []


def test_a_chain_is_counted_whole(http, fake):
    """Each turn fits alone; the chain through previous_response_id does not."""
    first = responses(http, input=long_text(3000), max_output_tokens=4)
    second = responses(http, input=long_text(3000), max_output_tokens=4,
                       previous_response_id=first.json()["id"])
    assert second.status_code == 200
    err = assert_error(responses(http, input=long_text(3000), max_output_tokens=4,
                                 previous_response_id=second.json()["id"]),
                       400, "input", "context_length_exceeded")
    assert "8192" in err["message"] and "conversation has 9" in err["message"]
    assert len(fake.params) == 2


def test_body_over_the_limit_is_413(http, fake):
    r = chat(http, messages=[{"role": "user", "content": "x" * (64 << 10)}])
    assert_error(r, 413, None, "request_too_large")
    assert fake.params == []



def test_integral_numbers_are_integers_as_json_schema_says(http, fake):
    """Found by fuzzing: the document says ``integer``, which JSON Schema takes 4.0 to be."""
    r = responses(http, max_output_tokens=4.0, seed=7.0, top_k=0.0)
    assert r.status_code == 200 and r.json()["max_output_tokens"] == 4
    assert fake.params[-1].sampling.max_tokens == 4 and fake.params[-1].sampling.seed == 7
    assert chat(http, max_tokens=2.0).status_code == 200
    assert_error(chat(http, max_tokens=2.5), 400, "max_tokens", "invalid_type")
    assert_error(chat(http, max_tokens="2"), 400, "max_tokens", "invalid_type")
