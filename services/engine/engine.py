"""The engine: one model, one paged KV cache, continuous batching.

A request's life here: ``add_request`` validates it and queues a ``Sequence``; each ``step``
schedules tokens for running and waiting sequences, runs the model once, samples a token for every
sequence whose computed tokens reached its end, detokenizes, checks stop conditions, and frees the
blocks of finished sequences. ``abort`` frees a request's blocks at once. The prefill and decode
workers are two uses of this class.

Thread safety: every public method takes the engine lock, so a server thread may add or abort
requests while another thread drives ``step``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from . import packed as onednn, sampler
from .block_manager import BlockManager
from .checkpoint import load_state_dict, model_name_for, resolve_model_dir, default_model_path
from .config import EngineConfig, ModelConfig
from .cpu import CpuFeatures, check as check_native
from .constrained import GrammarCompilerPool, RequestGrammar, mask_logits
from .errors import InvalidRequestError
from .grammar import build_grammar
from .kv_cache import KVCache, kv_bytes_per_token
from .model import LlamaForCausalLM
from .model_runner import ModelRunner
from .prefix_cache import PrefixCacheStats
from .scheduler import Scheduler
from .sequence import RequestOutput, SamplingParams, Sequence, SequenceStatus
from .tokenizer import Detokenizer, Tokenizer

log = logging.getLogger(__name__)


@dataclass
class _Live:
    seq: Sequence
    detok: Detokenizer
    stop_ids: frozenset[int]


class LLMEngine:
    def __init__(self, config: EngineConfig, cache_dir: Path):
        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.num_threads = torch.get_num_threads()   # what the thread stepping it uses (omp.py)
        self.cpu = CpuFeatures.detect()
        check_native(config.dtype, config.weights, config.device, self.cpu)
        self.device = torch.device(config.device)
        self.model_dir = resolve_model_dir(config.model or None, cache_dir)
        self.model_name = model_name_for(config.model or default_model_path())
        self.model_config = ModelConfig.from_json(self.model_dir / "config.json")
        mc = self.model_config
        self.max_model_len = min(config.max_model_len or mc.max_position_embeddings,
                                 mc.max_position_embeddings)
        self.tokenizer = Tokenizer(self.model_dir)
        self.model = LlamaForCausalLM(mc, config.torch_dtype, self.max_model_len,
                                      script_decode=config.script_decode,
                                      fused_norm=config.fused_norm,
                                      pack_rows=min(onednn.MAX_ROWS, config.max_num_seqs)
                                      if onednn.available(config.torch_dtype, self.device) else 0).to(self.device)
        self.model.load_hf_state_dict(load_state_dict(self.model_dir))
        if config.weights == "int4":
            self.model.quantize()
        self.model.pack()   # bf16: steps of few rows use weights packed for oneDNN (packed.py)
        num_blocks = config.kv_cache_bytes // (kv_bytes_per_token(mc, config.torch_dtype) * config.block_size)
        self.cache = KVCache(mc, num_blocks, config.block_size, config.torch_dtype, self.device)
        self.blocks = BlockManager(num_blocks, config.block_size,
                                   f"{self.model_dir.name}|{config.torch_dtype}|{config.weights}"
                                   + ("|fused-norm" if config.fused_norm else ""),
                                   config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.blocks)
        self.runner = ModelRunner(self.model, self.cache, self.device)
        eos = set(mc.eos_token_ids) | ({self.tokenizer.eos_token_id} - {None})
        self.eos_token_ids = frozenset(eos)
        self.grammars = GrammarCompilerPool(self.tokenizer, mc.vocab_size, list(eos))
        self._awaiting_grammar: list[Sequence] = []   # constrained requests whose grammar compiles
        self._live: dict[str, _Live] = {}
        self._lock = threading.RLock()
        # Prefill side: prompt KV copied out after the first token, waiting to be sent. Guarded by
        # its own lock so a KV send never waits for a model step.
        self._handoffs: dict[str, tuple[torch.Tensor, float]] = {}
        self._handoff_lock = threading.Lock()

    # -- requests -------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    prefill_only: bool = False) -> Sequence:
        """Validate and queue a request; raise ``InvalidRequestError`` naming the bad field.

        ``prefill_only`` (prefill workers): after its first token the request is not decoded
        here; at the end of that step its prompt KV is copied out of its blocks (which are freed)
        and waits for ``take_held``, ``abort`` or ``expire_held``.
        """
        with self._lock:
            seq = self._new_sequence(request_id, prompt_token_ids, params)
            seq.prefill_only = prefill_only
            self._admit(seq)
        return seq

    def _new_sequence(self, request_id: str, prompt: list[int], params: SamplingParams) -> Sequence:
        params.validate()
        max_tokens = self._check_lengths(prompt, params)
        if request_id in self._live:
            raise InvalidRequestError("request_id", f"request {request_id!r} is already running")
        seq = Sequence(request_id, list(prompt), params, max_tokens)
        if params.seed is not None:
            seq.seed = params.seed
        if params.grammar is not None:
            seq.grammar = RequestGrammar(self.grammars.compile(params.grammar))
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_token_ids)
        self._live[request_id] = _Live(seq, Detokenizer(self.tokenizer, params.stop), frozenset(stop_ids))
        return seq

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ``InvalidRequestError`` if ``add_request`` would refuse this request."""
        params.validate()
        self._check_lengths(prompt_token_ids, params)
        if params.grammar is not None:
            build_grammar(params.grammar)

    def _check_lengths(self, prompt: list[int], params: SamplingParams) -> int:
        n = len(prompt)
        if n == 0:
            raise InvalidRequestError("prompt", "the prompt is empty")
        if any(not 0 <= t < self.model_config.vocab_size for t in prompt):
            raise InvalidRequestError("prompt", "the prompt has token ids outside the vocabulary")
        if n >= self.max_model_len:
            raise InvalidRequestError(
                "prompt", f"the prompt has {n} tokens; this model's context is {self.max_model_len} "
                          "tokens, and at least one must be left to generate")
        room = self.max_model_len - n
        if params.max_tokens is not None and params.max_tokens > room:
            raise InvalidRequestError(
                "max_tokens", f"max_tokens {params.max_tokens} + {n} prompt tokens exceeds the "
                              f"context length {self.max_model_len}")
        max_tokens = params.max_tokens or room
        if not self.scheduler.fits_ever(n + 1):
            raise InvalidRequestError("prompt", "the prompt can never fit in this engine's KV cache")
        return max_tokens

    def abort(self, request_id: str) -> bool:
        """Stop a request (queued, running, awaiting its KV, or with held KV) and free its KV; False if unknown."""
        with self._handoff_lock:
            if self._handoffs.pop(request_id, None) is not None:
                return True
        with self._lock:
            live = self._live.pop(request_id, None)
            if live is None:
                return False
            if live.seq in self._awaiting_grammar:
                self._awaiting_grammar.remove(live.seq)
            self.scheduler.finish(live.seq, "abort")
            return True

    def request_counts(self) -> "RequestCounts":
        """How many requests hold state here now (``Status``; leak checks after churn).

        Like ``prefix_cache_stats``, read without the engine lock: the heartbeat asks, and must
        never wait for a model step (a long prefill batch would let the worker's registry entry
        expire); a count may be one step old."""
        live = list(self._live.values())    # one atomic copy (a C-level loop under the GIL)
        awaiting = sum(e.seq.status is SequenceStatus.AWAITING_KV for e in live)
        with self._handoff_lock:
            held = len(self._handoffs)
            held_bytes = sum(kv.nbytes for kv, _ in self._handoffs.values())
        return RequestCounts(len(live), awaiting, held, held_bytes)

    def has_unfinished(self) -> bool:
        with self._lock:
            return self.scheduler.has_unfinished() or bool(self._awaiting_grammar)

    def prefix_cache_stats(self) -> PrefixCacheStats:
        """Prefix-cache counters: tokens looked up and found, blocks cached now, evictions.
        Read without the engine lock (see ``request_counts``)."""
        return self.blocks.stats()

    # -- the loop -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run the model, sample, and post-process; one output per sampled request."""
        with self._lock:
            failed = self._admit_compiled()
            batch = self.scheduler.schedule()
            if self.config.test_fail_step and batch.scheduled:
                raise RuntimeError("test hook: TANDEM_TEST_FAIL_STEP makes every engine step fail")
            compiling = [s.grammar.future for s in self._awaiting_grammar]
            if batch.scheduled:
                started = time.perf_counter()
                sampled, logits = self.runner.run(batch)
                self.scheduler.mark_computed(batch)
                for s in batch.scheduled:
                    s.seq.scheduled_time = s.seq.scheduled_time or started
                seqs = [s.seq for s in sampled]
                mask_logits(logits, [seq.grammar for seq in seqs])
                tokens = sampler.sample(logits, seqs) if seqs else []
                now = time.perf_counter()
                return failed + [self._postprocess(seq, token, now) for seq, token in zip(seqs, tokens)]
        if compiling and not failed:   # nothing to run but grammars compiling: wait for one
            wait(compiling, timeout=0.01, return_when=FIRST_COMPLETED)
        return failed

    def fail_unfinished(self, error: str) -> list[RequestOutput]:
        """End every request in the engine with ``finish_reason="error"`` and free its blocks
        (after a failed step nothing in the batch can be trusted). Held KV is left to its owner."""
        with self._lock:
            live, self._live = self._live, {}
            self._awaiting_grammar.clear()
            outs = []
            for rid, entry in live.items():
                seq = entry.seq
                self.scheduler.finish(seq, "error")
                outs.append(RequestOutput(
                    request_id=rid, new_token_ids=[], text="", finished=True, finish_reason="error",
                    prompt_tokens=seq.num_prompt_tokens, completion_tokens=len(seq.output_token_ids),
                    prefill_time=seq.prefill_time, decode_time_arr=list(seq.decode_times), error=error))
            return outs

    # -- constrained requests -------------------------------------------------------------------
    def _admit(self, seq: Sequence) -> None:
        """Queue ``seq`` for the scheduler, or hold it while its grammar compiles."""
        if seq.grammar is not None and seq.grammar.matcher is None:
            seq.status = SequenceStatus.AWAITING_GRAMMAR
            self._awaiting_grammar.append(seq)
        else:
            seq.status = SequenceStatus.WAITING
            self.scheduler.add(seq)

    def _admit_compiled(self) -> list[RequestOutput]:
        """Queue the held requests whose grammar is ready (their matcher replays their output so
        far); end those whose grammar failed."""
        failed = []
        for seq in [s for s in self._awaiting_grammar if s.grammar.ready]:
            self._awaiting_grammar.remove(seq)
            if seq.grammar.start(seq.output_token_ids):
                self._admit(seq)
            else:
                failed.append(self._end_refused(seq, time.perf_counter()))
        return failed

    def _end_refused(self, seq: Sequence, now: float) -> RequestOutput:
        log.warning("request %s ends: %s", seq.request_id, seq.grammar.error)
        self.scheduler.finish(seq, "grammar")
        del self._live[seq.request_id]
        return RequestOutput(
            request_id=seq.request_id, new_token_ids=[], text="", finished=True, finish_reason="grammar",
            prompt_tokens=seq.num_prompt_tokens, completion_tokens=len(seq.output_token_ids),
            prefill_time=seq.prefill_time, decode_time_arr=list(seq.decode_times))

    def _postprocess(self, seq: Sequence, token: int, now: float) -> RequestOutput:
        if seq.grammar is not None and not seq.grammar.accept(token):
            return self._end_refused(seq, now)
        live = self._live[seq.request_id]
        seq.record_token(token, now)
        text = live.detok.push(token)
        reason = None
        if live.detok.stopped or token in live.stop_ids:
            reason = "stop"
        elif len(seq.output_token_ids) >= seq.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = "length"
        held = reason is None and seq.prefill_only
        if reason:
            text += live.detok.flush()
            self.scheduler.finish(seq, reason)
            del self._live[seq.request_id]
        elif held:
            kv = self.cache.export(seq.block_table, seq.num_prompt_tokens)
            self.scheduler.finish(seq, "handoff")
            del self._live[seq.request_id]
            with self._handoff_lock:
                self._handoffs[seq.request_id] = (kv, now)
        return RequestOutput(
            request_id=seq.request_id, new_token_ids=[token], text=text, finished=reason is not None or held,
            finish_reason=reason, prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=len(seq.output_token_ids), prefill_time=seq.prefill_time,
            decode_time_arr=list(seq.decode_times) if reason else [], kv_held=held,
            cached_tokens=seq.num_cached_tokens,
            timings=seq.timings() if reason or held else None)

    # -- disaggregation: the prefill side -------------------------------------------------------
    def take_held(self, request_id: str) -> torch.Tensor:
        """Hand over (and forget) a held prompt KV, ``[layers, 2, prompt_tokens, kv_heads, head_dim]``.

        Never waits for a model step. Raises ``KeyError`` if nothing is held for ``request_id``.
        """
        with self._handoff_lock:
            entry = self._handoffs.pop(request_id, None)
        if entry is None:
            raise KeyError(f"request {request_id!r} holds no KV here")
        return entry[0]

    def held_kv_bytes(self) -> int:
        """Bytes of prompt KV copied out and waiting for ``take_held``."""
        with self._handoff_lock:
            return sum(kv.nbytes for kv, _ in self._handoffs.values())

    def expire_held(self, max_age: float) -> list[str]:
        """Drop held KV older than ``max_age`` seconds (no decode worker came for it)."""
        now = time.perf_counter()
        with self._handoff_lock:
            old = [rid for rid, (_, since) in self._handoffs.items() if now - since > max_age]
            for rid in old:
                del self._handoffs[rid]
        return old

    # -- disaggregation: the decode side --------------------------------------------------------
    def adopt(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
              first_token: int) -> RequestOutput:
        """Take over a request prefilled elsewhere: record its first token; it then awaits its KV.

        The request owns no blocks until ``reserve_kv`` and is not scheduled until ``import_kv``.
        """
        with self._lock:
            seq = self._new_sequence(request_id, prompt_token_ids, params)
            seq.status = SequenceStatus.AWAITING_KV
            out = self._postprocess(seq, first_token, time.perf_counter())
            return out

    def reserve_kv(self, request_id: str) -> int | None:
        """Allocate blocks for an adopted request's prompt and first token, if they are free now;
        None if not. The prompt's longest cached prefix is reused, not allocated: the result is
        how many leading prompt tokens already have their KV here (whole blocks), so only the KV
        after them has to be pulled (``import_kv(..., start_token=that)``)."""
        with self._lock:
            seq = self._awaiting_kv(request_id)
            # at least one prompt token is pulled: a wholly cached prompt would ask for 0 tokens,
            # which the prefill worker refuses (start_token must lie inside the prompt)
            hits = self.blocks.match_prefix(seq)[:(seq.num_prompt_tokens - 1) // self.blocks.block_size]
            if not self.blocks.can_admit(seq, hits):
                return None
            self.blocks.take_prefix(seq, hits)
            self.blocks.grow(seq.block_table, seq.num_tokens)
            seq.num_cached_tokens = len(hits) * self.blocks.block_size
            return seq.num_cached_tokens

    def import_kv(self, request_id: str, kv: torch.Tensor, start_token: int = 0) -> None:
        """Write a verified prompt KV — tokens ``[start_token, prompt)``, the rest being the cached
        prefix ``reserve_kv`` reported — into the reserved blocks and queue the request."""
        with self._lock:
            seq = self._awaiting_kv(request_id)
            if start_token != seq.num_cached_tokens:
                raise ValueError(f"KV starts at token {start_token}, {seq.num_cached_tokens} are "
                                 "cached here")
            if start_token + kv.shape[2] != seq.num_prompt_tokens:
                raise ValueError(f"KV covers tokens {start_token}..{start_token + kv.shape[2]}, "
                                 f"prompt has {seq.num_prompt_tokens}")
            self.cache.import_(seq.block_table, kv, start_token)
            seq.num_computed_tokens = seq.num_prompt_tokens
            self.blocks.cache_full_blocks(seq, start_token, seq.num_prompt_tokens)
            seq.queued_time = time.perf_counter()
            self._admit(seq)

    def _awaiting_kv(self, request_id: str) -> Sequence:
        live = self._live.get(request_id)
        if live is None or live.seq.status is not SequenceStatus.AWAITING_KV:
            raise KeyError(f"request {request_id!r} is not awaiting its KV here")
        return live.seq

    def kv_shape(self, num_tokens: int) -> tuple[int, ...]:
        mc = self.model_config
        return (mc.num_layers, 2, num_tokens, mc.num_kv_heads, mc.head_dim)

    # -- convenience ----------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
                 ) -> list["Completion"]:
        """Run prompts to completion together (continuous batching) and return their results."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"gen-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
        results = {i: Completion(i) for i in ids}
        for rid, prompt, p in zip(ids, prompts, params_list):
            self.add_request(rid, prompt, p)
        while self.has_unfinished():
            for out in self.step():
                results[out.request_id].add(out)
        return [results[i] for i in ids]

    def chat_prompt(self, user_text: str, system: str | None = None) -> list[int]:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user_text}]
        return self.tokenizer.apply_chat_template(messages)


@dataclass(frozen=True)
class RequestCounts:
    """Requests holding state in an engine: ``live`` (queued, running, awaiting KV or grammar),
    of which ``awaiting_kv``; ``held`` prompt KVs waiting for ``take_held`` and their bytes."""

    live: int
    awaiting_kv: int
    held: int
    held_bytes: int


@dataclass
class Completion:
    """A finished request gathered from its outputs (used by ``generate``, tests and the CLI)."""

    request_id: str
    text: str = ""
    token_ids: list[int] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefill_time: float | None = None
    decode_time_arr: list[float] | None = None

    def add(self, out: RequestOutput) -> None:
        self.text += out.text
        self.token_ids = (self.token_ids or []) + out.new_token_ids
        self.prompt_tokens = out.prompt_tokens
        self.cached_tokens = out.cached_tokens
        if out.finished:
            self.finish_reason = out.finish_reason
            self.prefill_time = out.prefill_time
            self.decode_time_arr = out.decode_time_arr

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids or [])
