"""``TANDEM_PREFILL_WEIGHTS=dense`` with ``TANDEM_WEIGHTS=int4``: the prefill worker runs dense
bf16 weights, the decode worker 4-bit ones, and the KV handed between them serves real answers
(the default model, the openai SDK, a stream with usage). Needs a CPU with native bf16 (both modes
do); elsewhere the engine refuses them, which tests/services/engine/test_cpu.py covers."""

from __future__ import annotations

import re

import pytest

from services.engine.cpu import CpuFeatures

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CpuFeatures.detect().native("bfloat16"),
                                 reason="int4 and bf16 need a CPU with native bf16 (avx512_bf16/AMX)")]
MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    from tests.e2e.conftest import start_up, stop_up

    s = start_up(tmp_path_factory.mktemp("mixed"), extra_env={
        "TANDEM_DTYPE": "bfloat16", "TANDEM_WEIGHTS": "int4", "TANDEM_PREFILL_WEIGHTS": "dense"})
    yield s
    stop_up(s)


def test_prefill_runs_dense_and_decode_int4_weights(mixed):
    text = "".join(mixed.lines)
    assert re.search(r"prefill worker \S+ serving on \S+ \(bfloat16, dense weights\)", text), text[-3000:]
    assert re.search(r"decode worker \S+ serving on \S+ \(bfloat16, int4 weights[;)]", text), text[-3000:]


def test_the_handoff_between_them_serves_answers(mixed):
    client = mixed.client()
    r = client.chat.completions.create(model=MODEL, max_tokens=24, temperature=0,
                                       messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in r.choices[0].message.content
    assert r.usage.completion_tokens >= 2 and r.usage.prefill_time > 0

    chunks = list(client.chat.completions.create(model=MODEL, max_tokens=16, temperature=0, stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "Name a color."}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and chunks[-1].usage.completion_tokens == 16
