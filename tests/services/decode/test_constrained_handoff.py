"""A constrained request across P/D on tiny engines: the grammar travels in the proto as data, the
prefill side samples token 1 under it, the decode worker rebuilds the matcher, replays that token
and continues under the grammar."""

from __future__ import annotations

import json

import pytest

from protos.tandem.v1 import worker_pb2 as pb
from services import wire
from services.engine import EngineConfig, LLMEngine, SamplingParams
from services.engine.grammar import GrammarSpec, ToolSpec
from tests.services.decode.test_server import FakePrefill, FakePuller, decode_worker, held_reply

ENUM = json.dumps({"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["unit"], "additionalProperties": False})
SPEC = GrammarSpec("json_schema", schema=ENUM)


@pytest.fixture(scope="module")
def engines(tiny_model_dir, tmp_path_factory):
    make = lambda name: LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20, block_size=4),  # noqa: E731
                                  tmp_path_factory.mktemp(name))
    return make("prefill"), make("decode")


def test_a_grammar_survives_the_proto_as_data():
    spec = GrammarSpec("tool_calls", tools=(ToolSpec("f", ENUM), ToolSpec("g")), tool_mode="auto", parallel=False)
    params = SamplingParams(max_tokens=5, grammar=spec)
    msg = wire.sampling_to_proto(params)
    assert pb.SamplingParams.FromString(msg.SerializeToString()).grammar.tools[0].parameters_json == ENUM
    assert wire.sampling_from_proto(msg) == params
    assert wire.sampling_from_proto(wire.sampling_to_proto(SamplingParams())).grammar is None


def test_decode_replays_the_prefill_token_and_continues_under_the_grammar(engines):
    prefill_engine, decode_engine = engines
    prompt = decode_engine.chat_prompt("hi")
    params = SamplingParams(max_tokens=40, temperature=0, grammar=SPEC)
    prefill_engine.add_request("pd1", prompt, params, prefill_only=True)
    while prefill_engine.has_unfinished():
        [first] = prefill_engine.step() or [None]
    kv = prefill_engine.take_held("pd1")
    reply = held_reply(decode_engine, len(prompt))
    reply.first_token_id, reply.text = first.new_token_ids[0], first.text
    prefill = RecordingPrefill(reply)
    req = pb.GenerateRequest(request_id="pd1", prompt_token_ids=prompt, prefill_address="prefill:1",
                             sampling=wire.sampling_to_proto(params))
    with decode_worker(decode_engine, FakePuller(prefill, kv=kv)) as stub:
        events = list(stub.Generate(req, timeout=60))
    assert prefill.requests[0].sampling.grammar.json_schema == ENUM   # passed on to prefill
    text = "".join(e.text for e in events)
    assert json.loads(text)["unit"] in ("celsius", "fahrenheit")
    assert events[-1].finish_reason == pb.FINISH_REASON_STOP


class RecordingPrefill(FakePrefill):
    def __init__(self, reply):
        super().__init__(reply)
        self.requests = []

    def _future(self, request, timeout):
        self.requests.append(request)
        return super()._future(request, timeout)
