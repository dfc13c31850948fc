"""The engine on the real SmolLM2 model: answers, batching invariance, KV accounting, bad input."""

import pytest
import torch

from services.engine import EngineConfig, InvalidRequestError, LLMEngine, SamplingParams
from services.engine.kv_cache import kv_bytes_per_token

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(max_tokens=24, temperature=0)

QUESTIONS = [
    "What is the capital of France?", "Name three colors.", "What is 2+2?", "Say hello.",
    "Write a haiku about the sea.", "What is the largest planet in the solar system?",
    "Give me a synonym for happy.", "How many legs does a spider have?",
    "Explain photosynthesis in one sentence.", "What is the boiling point of water in Celsius?",
    "Translate 'thank you' into French.", "List two programming languages.",
    "What color is the sky on a clear day?", "Who wrote Romeo and Juliet?",
    "What is the opposite of cold?", "Describe a cat in five words.",
    "Why do birds migrate? Answer in detail, covering food, climate and breeding. " * 3,
    "Hi",
]


def run_alone(engine, prompt, params=GREEDY):
    [c] = engine.generate([prompt], params)
    return c


def test_capital_of_france_is_paris(engine):
    c = run_alone(engine, engine.chat_prompt("What is the capital of France?"))
    assert "Paris" in c.text
    assert c.finish_reason == "stop"


def test_greedy_is_batch_invariant_under_continuous_batching(engine):
    prompts = [engine.chat_prompt(q) for q in QUESTIONS]
    assert len(prompts) >= 16 and len({len(p) for p in prompts}) >= 10
    alone = [run_alone(engine, p).token_ids for p in prompts]
    # Requests arrive over several steps: two every step, so prefills mix with running decodes.
    outputs = {i: [] for i in range(len(prompts))}
    pending = list(enumerate(prompts))
    step = 0
    max_batch = 0
    while pending or engine.has_unfinished():
        for _ in range(2 if step % 3 else 0):
            if pending:
                i, p = pending.pop(0)
                engine.add_request(f"batch-{i}", p, GREEDY)
        max_batch = max(max_batch, len(engine.scheduler.running))
        for out in engine.step():
            outputs[int(out.request_id.split("-")[1])] += out.new_token_ids
        step += 1
    assert max_batch >= 8
    for i, want in enumerate(alone):
        assert outputs[i] == want, f"request {i} ({QUESTIONS[i][:30]!r}) differs in a batch"


def test_decode_groups_of_very_different_contexts_match_running_alone(engine, monkeypatch):
    # One ~600-token prompt among short ones: decode queries split into context-length groups.
    passage = "The river bends past the old mill, where the miller counts his sacks of flour. " * 40
    prompts = [engine.chat_prompt(passage + "Summarize this.")] + \
        [engine.chat_prompt(q) for q in QUESTIONS[:7]]
    assert len(prompts[0]) > 500 > 60 > max(len(p) for p in prompts[1:])
    alone = [run_alone(engine, p).token_ids for p in prompts]
    runner = engine.runner
    seen = []
    original = runner._metadata

    def spy(decode, prefill, slot_mapping):
        meta = original(decode, prefill, slot_mapping)
        seen.append([(g.end - g.start, g.blocks.shape[1]) for g in meta.decode_groups])
        return meta

    monkeypatch.setattr(runner, "_metadata", spy)
    together = [c.token_ids for c in engine.generate(prompts, GREEDY)]
    assert together == alone
    assert max(len(groups) for groups in seen) >= 2, seen   # the long context was split off


def test_seed_reproducible_and_seeds_differ(engine):
    prompt = engine.chat_prompt("Tell me a story about a dragon.")
    p = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, seed=1234)
    a, b = run_alone(engine, prompt, p), run_alone(engine, prompt, p)
    assert a.token_ids == b.token_ids
    others = {tuple(run_alone(engine, prompt, SamplingParams(max_tokens=16, temperature=1.0,
                                                             seed=s)).token_ids) for s in range(4)}
    assert len(others) > 1


def test_seeded_sampling_is_batch_invariant(engine):
    prompts = [engine.chat_prompt(q) for q in QUESTIONS[:6]]
    params = [SamplingParams(max_tokens=12, temperature=0.8, top_k=50, seed=i) for i in range(6)]
    alone = [run_alone(engine, p, q).token_ids for p, q in zip(prompts, params)]
    together = [c.token_ids for c in engine.generate(prompts, params)]
    assert together == alone


def test_max_tokens_finishes_with_length(engine):
    c = run_alone(engine, engine.chat_prompt("Count from one to one hundred in words."),
                  SamplingParams(max_tokens=5, temperature=0))
    assert c.finish_reason == "length" and c.completion_tokens == 5


def test_timings_have_one_decode_entry_per_later_token(engine):
    c = run_alone(engine, engine.chat_prompt("Count from one to ten."), SamplingParams(max_tokens=12, temperature=0))
    assert c.prefill_time > 0
    assert len(c.decode_time_arr) == c.completion_tokens - 1
    assert all(t > 0 for t in c.decode_time_arr)


def test_stop_string_ends_output_and_is_not_included(engine):
    prompt = engine.chat_prompt("What is the capital of France?")
    full = run_alone(engine, prompt).text
    assert "Paris" in full
    c = run_alone(engine, prompt, SamplingParams(max_tokens=24, temperature=0, stop=("Paris",)))
    assert c.finish_reason == "stop"
    assert c.text == full[:full.index("Paris")]


def test_stop_token_id_and_ignore_eos(engine):
    prompt = engine.chat_prompt("What is the capital of France?")
    first = run_alone(engine, prompt).token_ids
    c = run_alone(engine, prompt, SamplingParams(max_tokens=24, temperature=0, stop_token_ids=(first[2],)))
    assert c.finish_reason == "stop" and c.token_ids == first[:3]
    assert first[-1] in engine.eos_token_ids
    c = run_alone(engine, prompt, SamplingParams(max_tokens=len(first) + 3, temperature=0, ignore_eos=True))
    assert c.finish_reason == "length" and c.completion_tokens == len(first) + 3


def test_kv_blocks_all_return_after_finishes_and_aborts(engine):
    total = engine.blocks.num_blocks
    assert engine.blocks.num_free == total
    prompts = [engine.chat_prompt(q) for q in QUESTIONS[:10]]
    for i, p in enumerate(prompts):
        engine.add_request(f"acct-{i}", p, SamplingParams(max_tokens=8 + i, temperature=0))
    engine.add_request("acct-never-run", prompts[0], GREEDY)
    assert engine.abort("acct-never-run")          # aborted while waiting
    engine.step()
    engine.step()
    assert engine.blocks.num_free < total
    for i in (1, 4, 7):
        assert engine.abort(f"acct-{i}")            # aborted while running
    assert not engine.abort("acct-1")               # twice is a no-op
    while engine.has_unfinished():
        engine.step()
    assert engine.blocks.num_free == total


def test_preemption_under_a_tiny_cache_still_gives_the_same_answers(engine, settings):
    # 12 blocks of 16 tokens: three ~40-token prompts fit, but not with 40 generated tokens each.
    per_block = kv_bytes_per_token(engine.model_config, torch.float32) * 16
    small = LLMEngine(EngineConfig(kv_cache_bytes=12 * per_block), settings.cache_dir)
    assert small.blocks.num_blocks == 12
    prompts = [small.chat_prompt(q) for q in QUESTIONS[:3]]
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    alone = [run_alone(small, p, params).token_ids for p in prompts]
    ids = [f"pre-{i}" for i in range(3)]
    got = {i: [] for i in ids}
    for i, p in zip(ids, prompts):
        small.add_request(i, p, params)
    preempted = 0
    while small.has_unfinished():
        for out in small.step():
            got[out.request_id] += out.new_token_ids
        preempted = max(preempted, sum(s.num_preemptions for s in small.scheduler.waiting))
    assert preempted > 0
    assert [got[i] for i in ids] == alone
    assert small.blocks.num_free == small.blocks.num_blocks


@pytest.mark.parametrize("field,prompt,params", [
    ("prompt", [], SamplingParams(max_tokens=4)),
    ("prompt", [1] * 9000, SamplingParams(max_tokens=4)),
    ("max_tokens", [1, 2, 3], SamplingParams(max_tokens=0)),
    ("max_tokens", [1, 2, 3], SamplingParams(max_tokens=-3)),
    ("max_tokens", [1, 2, 3], SamplingParams(max_tokens=9000)),
    ("temperature", [1, 2, 3], SamplingParams(temperature=-0.1)),
    ("top_p", [1, 2, 3], SamplingParams(top_p=0.0)),
    ("top_p", [1, 2, 3], SamplingParams(top_p=1.5)),
    ("top_k", [1, 2, 3], SamplingParams(top_k=-2)),
    ("prompt", [10**6], SamplingParams(max_tokens=4)),
])
def test_bad_input_is_rejected_naming_the_field_and_serving_continues(engine, field, prompt, params):
    engine.add_request("ok-before", engine.chat_prompt("Say hello."), SamplingParams(max_tokens=4, temperature=0))
    with pytest.raises(InvalidRequestError) as e:
        engine.add_request("bad", prompt, params)
    assert e.value.field == field and field in str(e.value)
    assert "bad" not in engine._live
    done = []
    while engine.has_unfinished():
        done += [o for o in engine.step() if o.finished]
    assert [o.request_id for o in done] == ["ok-before"] and done[0].completion_tokens == 4
