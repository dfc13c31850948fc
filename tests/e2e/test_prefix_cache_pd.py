"""Prefix caching through P/D: a follow-up turn reuses its conversation's KV on both workers.

The prefill worker computes only the new tokens (``cached_tokens`` in usage says how many it took
from its cache) and the decode worker pulls only the blocks it lacks (``x-tandem-kv-start-token``
and ``x-tandem-kv-bytes``), and the answer is the one the model gives computing everything.
"""

from __future__ import annotations

import time

import pytest

from benchmarks.engine_runs import LONG_TEXT
from services.engine import SamplingParams

pytestmark = pytest.mark.slow
MODEL = "SmolLM2-135M-Instruct"
KV_BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 4   # layers x (K,V) x kv_heads x head_dim x fp32
BLOCK = 16


def test_a_follow_up_turn_computes_and_moves_only_its_new_blocks(stack, engine):
    client = stack.client()
    opening = f"Read this:\n{LONG_TEXT[:1500]}\n\nWhat is it about?"
    first = client.responses.create(model=MODEL, input=opening, temperature=0, max_output_tokens=16)
    raw = client.responses.with_raw_response.create(
        model=MODEL, input="Answer in three words.", previous_response_id=first.id, temperature=0,
        max_output_tokens=8)
    second = raw.parse()
    reused = first.usage.input_tokens // BLOCK * BLOCK          # the first turn's full blocks
    assert reused >= 8 * BLOCK
    assert second.usage.input_tokens_details.cached_tokens >= reused          # not recomputed
    start = int(raw.headers["x-tandem-kv-start-token"])
    assert start >= reused                                                    # not re-sent
    moved = second.usage.input_tokens - start
    assert int(raw.headers["x-tandem-kv-bytes"]) == moved * KV_BYTES_PER_TOKEN
    assert moved <= 0.5 * second.usage.input_tokens
    messages = [{"role": "user", "content": opening},
                {"role": "assistant", "content": first.output_text},
                {"role": "user", "content": "Answer in three words."}]
    [want] = engine.generate([engine.tokenizer.apply_chat_template(messages)],
                             SamplingParams(max_tokens=8, temperature=0))
    assert second.output_text == want.text
    [prefill], [decode] = stack.worker_status("prefill"), stack.worker_status("decode")
    for status in (prefill, decode):                  # each worker reports its cache
        assert status.prefix_cache_hits >= reused and status.prefix_cached_blocks > 0
        assert status.prefix_cache_queries >= status.prefix_cache_hits


def test_a_chain_stays_on_its_decode_worker_and_moves_when_that_worker_dies(stack):
    proc = stack.start_decode_worker("decode-aff")
    try:
        time.sleep(1.5)                                   # every gateway view has re-read the registry
        client = stack.client()
        first = None
        for i in range(24):                               # a conversation whose home is decode-aff
            raw = client.responses.with_raw_response.create(
                model=MODEL, input=f"Topic {i}: tell me about rivers.", temperature=0, max_output_tokens=6)
            if raw.headers["x-tandem-decode-worker"] == "decode-aff":
                first = raw.parse()
                break
        assert first is not None, "no conversation was placed on the second decode worker"
        turns = [first]
        for question in ("Name one.", "Where is it?"):
            raw = client.responses.with_raw_response.create(
                model=MODEL, input=question, previous_response_id=turns[-1].id, temperature=0,
                max_output_tokens=6)
            assert raw.headers["x-tandem-decode-worker"] == "decode-aff"        # it stays home
            assert int(raw.headers["x-tandem-kv-start-token"]) > 0              # with its KV
            turns.append(raw.parse())
    finally:
        proc.kill()
        proc.wait(30)
    deadline = time.monotonic() + 15                      # the dead worker's entry expires
    while "decode-aff" in {w.worker_id for w in stack.registry().live("decode")}:
        assert time.monotonic() < deadline, "dead worker still registered"
        time.sleep(0.2)
    time.sleep(1.5)
    raw = client.responses.with_raw_response.create(
        model=MODEL, input="And its length?", previous_response_id=turns[-1].id, temperature=0,
        max_output_tokens=6)
    assert raw.headers["x-tandem-decode-worker"] != "decode-aff"                # moved, and served
    assert raw.parse().status in ("completed", "incomplete")
