"""Conversions between protobuf messages (protos/tandem/v1) and the engine's dataclasses."""

from __future__ import annotations

from protos.tandem.v1 import worker_pb2 as pb
from services.engine import RequestOutput, SamplingParams
from services.engine.grammar import GrammarSpec, ToolSpec

FINISH_REASONS = {None: pb.FINISH_REASON_UNSPECIFIED, "stop": pb.FINISH_REASON_STOP,
                  "length": pb.FINISH_REASON_LENGTH, "abort": pb.FINISH_REASON_ABORT,
                  "error": pb.FINISH_REASON_ERROR, "grammar": pb.FINISH_REASON_GRAMMAR}
FINISH_NAMES = {v: k for k, v in FINISH_REASONS.items()}
GRAMMAR_KINDS = {"json_schema": pb.GRAMMAR_KIND_JSON_SCHEMA, "json_object": pb.GRAMMAR_KIND_JSON_OBJECT,
                 "tool_calls": pb.GRAMMAR_KIND_TOOL_CALLS}
TOOL_MODES = {"auto": pb.TOOL_MODE_AUTO, "required": pb.TOOL_MODE_REQUIRED, "none": pb.TOOL_MODE_NONE}

# gRPC trailing-metadata key naming the request field an INVALID_ARGUMENT is about.
PARAM_KEY = "tandem-param"
# On a decode worker's UNAVAILABLE: which worker failed. "prefill" when its prefill worker's call
# ended UNAVAILABLE (dead or failing), "none" when the prefill worker refused for another reason;
# absent when the decode worker itself failed.
FAILED_KEY = "tandem-failed"


def sampling_to_proto(p: SamplingParams) -> pb.SamplingParams:
    msg = pb.SamplingParams(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, stop=list(p.stop),
                            stop_token_ids=list(p.stop_token_ids), ignore_eos=p.ignore_eos)
    if p.max_tokens is not None:
        msg.max_tokens = p.max_tokens
    if p.seed is not None:
        msg.seed = p.seed
    if p.grammar is not None:
        msg.grammar.CopyFrom(grammar_to_proto(p.grammar))
    return msg


def sampling_from_proto(msg: pb.SamplingParams) -> SamplingParams:
    return SamplingParams(
        max_tokens=msg.max_tokens if msg.HasField("max_tokens") else None,
        temperature=msg.temperature, top_p=msg.top_p, top_k=msg.top_k,
        seed=msg.seed if msg.HasField("seed") else None, stop=tuple(msg.stop),
        stop_token_ids=tuple(msg.stop_token_ids), ignore_eos=msg.ignore_eos,
        grammar=grammar_from_proto(msg.grammar) if msg.grammar.kind else None)


def grammar_to_proto(g: GrammarSpec) -> pb.Grammar:
    return pb.Grammar(kind=GRAMMAR_KINDS[g.kind], json_schema=g.schema,
                      tools=[pb.ToolSchema(name=t.name, parameters_json=t.parameters) for t in g.tools],
                      tool_mode=TOOL_MODES[g.tool_mode], parallel_tool_calls=g.parallel)


def grammar_from_proto(msg: pb.Grammar) -> GrammarSpec:
    kind = {v: k for k, v in GRAMMAR_KINDS.items()}[msg.kind]
    mode = {v: k for k, v in TOOL_MODES.items()}.get(msg.tool_mode, "required")
    return GrammarSpec(kind, schema=msg.json_schema, tools=tuple(ToolSpec(t.name, t.parameters_json) for t in msg.tools),
                       tool_mode=mode, parallel=msg.parallel_tool_calls)


def token_event(out: RequestOutput) -> pb.TokenEvent:
    """A TokenEvent for one engine output (totals are filled in by the caller on the last one)."""
    return pb.TokenEvent(token_ids=out.new_token_ids, text=out.text, finished=out.finished and not out.kv_held,
                         finish_reason=FINISH_REASONS[out.finish_reason], error=out.error)
