"""Constrained decoding in the engine, on the tiny random model (its free text is noise, so any
valid output proves the mask): grammars, batching, replay across engines, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from services.engine import EngineConfig, InvalidRequestError, LLMEngine, SamplingParams
from services.engine.grammar import GrammarSpec, ToolSpec

ENUM = json.dumps({"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["unit"], "additionalProperties": False})
GREEDY = SamplingParams(max_tokens=40, temperature=0)


def constrained(spec: GrammarSpec, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=kw.pop("max_tokens", 40), temperature=kw.pop("temperature", 0),
                          grammar=spec, **kw)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory) -> LLMEngine:
    config = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20, block_size=4)
    return LLMEngine(config, tmp_path_factory.mktemp("cache"))


def prompts(engine, n):
    return [engine.tokenizer.encode(f"Hello world {i} " * (i + 1)) for i in range(n)]


def test_schema_output_matches_the_schema(engine):
    [c] = engine.generate(prompts(engine, 1), constrained(GrammarSpec("json_schema", schema=ENUM)))
    assert json.loads(c.text)["unit"] in ("celsius", "fahrenheit")
    assert c.finish_reason == "stop"


def test_sampled_constrained_rows_stay_valid(engine):
    spec = GrammarSpec("json_schema", schema=ENUM)
    outs = engine.generate(prompts(engine, 4), [constrained(spec, temperature=1.0, seed=i) for i in range(4)])
    assert all(json.loads(c.text)["unit"] in ("celsius", "fahrenheit") for c in outs)


def test_unconstrained_rows_are_token_identical_to_solo(engine):
    ps = prompts(engine, 6)
    alone = [engine.generate([p], GREEDY)[0].token_ids for p in ps]
    spec = GrammarSpec("json_schema", schema=ENUM)
    mixed = engine.generate(ps, [GREEDY if i % 2 else constrained(spec) for i in range(6)])
    for i in range(1, 6, 2):
        assert mixed[i].token_ids == alone[i]
    for i in range(0, 6, 2):
        assert json.loads(mixed[i].text)["unit"] in ("celsius", "fahrenheit")


def test_required_tool_call_is_forced_from_the_first_token(engine):
    spec = GrammarSpec("tool_calls", tools=(ToolSpec("get_unit", ENUM),), tool_mode="required", parallel=False)
    [c] = engine.generate(prompts(engine, 1), constrained(spec, max_tokens=120))
    assert c.text.startswith("<tool_call>[") and c.text.endswith("]</tool_call>")
    [call] = json.loads(c.text.removeprefix("<tool_call>").removesuffix("</tool_call>"))
    assert call["name"] == "get_unit" and call["arguments"]["unit"] in ("celsius", "fahrenheit")


def test_a_request_waits_for_its_grammar_without_stalling_others(engine):
    spec = GrammarSpec("json_schema", schema=json.dumps({"type": "object", "properties": {
        f"k{i}": {"enum": ["x"]} for i in range(3)}, "required": ["k0", "k1", "k2"]}))
    engine.add_request("slow-grammar", prompts(engine, 1)[0], constrained(spec, max_tokens=60))
    engine.add_request("free", prompts(engine, 2)[1], GREEDY)
    first = engine.step()          # the unconstrained request runs while the grammar may compile
    assert "free" in {o.request_id for o in first}
    done = {}
    for out in first:
        done.setdefault(out.request_id, []).append(out)
    while engine.has_unfinished():
        for out in engine.step():
            done.setdefault(out.request_id, []).append(out)
    text = "".join(o.text for o in done["slow-grammar"])
    assert json.loads(text) == {"k0": "x", "k1": "x", "k2": "x"}


def test_an_adopted_request_replays_its_first_token(engine, tmp_path_factory, tiny_model_dir):
    """The decode side: a second engine adopts the first token sampled elsewhere under the grammar."""
    spec = GrammarSpec("json_schema", schema=ENUM)
    prompt = prompts(engine, 1)[0]
    engine.add_request("p1", prompt, constrained(spec), prefill_only=True)
    [first] = [o for o in _drain(engine) if o.request_id == "p1"]
    kv = engine.take_held("p1")
    decode = LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20, block_size=4),
                       tmp_path_factory.mktemp("cache2"))
    out = decode.adopt("p1", prompt, constrained(spec), first.new_token_ids[0])
    assert decode.reserve_kv("p1") == 0
    decode.import_kv("p1", kv)
    text = out.text + "".join(o.text for o in _drain(decode))
    assert json.loads(text)["unit"] in ("celsius", "fahrenheit")


def test_a_refused_token_ends_the_request_without_its_text(engine):
    spec = GrammarSpec("json_schema", schema=ENUM)
    prompt = engine.tokenizer.encode("the quick brown fox, refused")   # not in the prefix cache
    out = engine.adopt("refused", prompt, constrained(spec), engine.tokenizer.encode("x")[0])
    assert not out.finished            # no matcher yet: the replay decides
    cached = engine.reserve_kv("refused")         # the prefix cache may hold part of the prompt
    kv = torch.zeros(engine.kv_shape(len(prompt) - cached), dtype=engine.config.torch_dtype)
    engine.import_kv("refused", kv, start_token=cached)
    [end] = [o for o in _drain(engine) if o.request_id == "refused"]
    assert end.finished and end.finish_reason == "grammar" and end.new_token_ids == [] and end.text == ""


def test_bad_schemas_are_refused_by_validate(engine):
    with pytest.raises(InvalidRequestError) as err:
        engine.validate([1, 2], constrained(GrammarSpec("json_schema", schema='{"type": "strin"}')))
    assert err.value.field == "grammar" and "strin" in err.value.message


def accepts(engine, spec: GrammarSpec, text: str) -> bool:
    import xgrammar as xgr

    matcher = xgr.GrammarMatcher(engine.grammars.compile(spec).result())
    eos = min(engine.eos_token_ids)
    return all(matcher.accept_token(t) for t in engine.tokenizer.encode(text)) and matcher.accept_token(eos)


CALL = '<tool_call>[{"name": "f", "arguments": {"unit": "celsius"}}]</tool_call>'
TWO = CALL.replace("}}]", '}}, {"name": "g", "arguments": {}}]')


@pytest.mark.parametrize("mode, text, ok", [
    ("none", "plain < text <tool_cal", True), ("none", "a <tool_call> b", False), ("none", CALL, False),
    ("auto", "text", True), ("auto", "I will call. " + CALL, True), ("auto", CALL + " more", False),
    ("auto", '<tool_call>[{"name": "h", "arguments": {}}]</tool_call>', False),
    ("required", CALL, True), ("required", TWO, True), ("required", "x" + CALL, False),
    ("required", '<tool_call>[]</tool_call>', False),
])
def test_tool_modes(engine, mode, text, ok):
    spec = GrammarSpec("tool_calls", tools=(ToolSpec("f", ENUM), ToolSpec("g")), tool_mode=mode)
    assert accepts(engine, spec, text) is ok


def test_parallel_false_allows_exactly_one_call(engine):
    spec = GrammarSpec("tool_calls", tools=(ToolSpec("f", ENUM), ToolSpec("g")), parallel=False)
    assert accepts(engine, spec, CALL) and not accepts(engine, spec, TWO)


def test_json_object_takes_any_object_only(engine):
    assert accepts(engine, GrammarSpec("json_object"), '{"a": [1, {"b": null}]}')
    assert not accepts(engine, GrammarSpec("json_object"), "[1]")


def _drain(engine):
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    return outs
