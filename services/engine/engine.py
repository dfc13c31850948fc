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
from dataclasses import dataclass
from pathlib import Path

import torch

from . import sampler
from .block_manager import BlockManager
from .checkpoint import load_state_dict, model_name_for, resolve_model_dir, default_model_path
from .config import EngineConfig, ModelConfig
from .errors import InvalidRequestError
from .kv_cache import KVCache, kv_bytes_per_token
from .model import LlamaForCausalLM
from .model_runner import ModelRunner
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
        self.device = torch.device(config.device)
        self.model_dir = resolve_model_dir(config.model or None, cache_dir)
        self.model_name = model_name_for(config.model or default_model_path())
        self.model_config = ModelConfig.from_json(self.model_dir / "config.json")
        mc = self.model_config
        self.max_model_len = min(config.max_model_len or mc.max_position_embeddings,
                                 mc.max_position_embeddings)
        self.tokenizer = Tokenizer(self.model_dir)
        self.model = LlamaForCausalLM(mc, config.torch_dtype, self.max_model_len).to(self.device)
        self.model.load_hf_state_dict(load_state_dict(self.model_dir))
        num_blocks = config.kv_cache_bytes // (kv_bytes_per_token(mc, config.torch_dtype) * config.block_size)
        self.cache = KVCache(mc, num_blocks, config.block_size, config.torch_dtype, self.device)
        self.blocks = BlockManager(num_blocks, config.block_size)
        self.scheduler = Scheduler(config, self.blocks)
        self.runner = ModelRunner(self.model, self.cache, self.device)
        eos = set(mc.eos_token_ids) | ({self.tokenizer.eos_token_id} - {None})
        self.eos_token_ids = frozenset(eos)
        self._live: dict[str, _Live] = {}
        self._lock = threading.RLock()

    # -- requests -------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    arrival_time: float | None = None) -> Sequence:
        """Validate and queue a request; raise ``InvalidRequestError`` naming the bad field."""
        params.validate()
        max_tokens = self._check_lengths(prompt_token_ids, params)
        seq = Sequence(request_id, list(prompt_token_ids), params, max_tokens)
        if arrival_time is not None:
            seq.arrival_time = arrival_time
        if params.seed is not None:
            seq.seed = params.seed
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_token_ids)
        with self._lock:
            if request_id in self._live:
                raise InvalidRequestError("request_id", f"request {request_id!r} is already running")
            self._live[request_id] = _Live(seq, Detokenizer(self.tokenizer, params.stop), frozenset(stop_ids))
            self.scheduler.add(seq)
        return seq

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
        """Stop a request and free its KV blocks; False if it is not running here."""
        with self._lock:
            live = self._live.pop(request_id, None)
            if live is None:
                return False
            self.scheduler.finish(live.seq, "abort")
            return True

    def has_unfinished(self) -> bool:
        with self._lock:
            return self.scheduler.has_unfinished()

    # -- the loop -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run the model, sample, and post-process; one output per sampled request."""
        with self._lock:
            batch = self.scheduler.schedule()
            if not batch.scheduled:
                return []
            sampled, logits = self.runner.run(batch)
            for s in batch.scheduled:
                s.seq.num_computed_tokens = s.start + s.num_tokens
            seqs = [s.seq for s in sampled]
            tokens = sampler.sample(logits, seqs) if seqs else []
            now = time.perf_counter()
            return [self._postprocess(seq, token, now) for seq, token in zip(seqs, tokens)]

    def _postprocess(self, seq: Sequence, token: int, now: float) -> RequestOutput:
        live = self._live[seq.request_id]
        seq.record_token(token, now)
        text = live.detok.push(token)
        reason = None
        if live.detok.stopped or token in live.stop_ids:
            reason = "stop"
        elif len(seq.output_token_ids) >= seq.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = "length"
        if reason:
            text += live.detok.flush()
            self.scheduler.finish(seq, reason)
            del self._live[seq.request_id]
        return RequestOutput(
            request_id=seq.request_id, new_token_ids=[token], text=text, finished=reason is not None,
            finish_reason=reason, prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=len(seq.output_token_ids), prefill_time=seq.prefill_time,
            decode_time_arr=list(seq.decode_times) if reason else [], token_time=now)

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


@dataclass
class Completion:
    """A finished request gathered from its outputs (used by ``generate``, tests and the CLI)."""

    request_id: str
    text: str = ""
    token_ids: list[int] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    prefill_time: float | None = None
    decode_time_arr: list[float] | None = None

    def add(self, out: RequestOutput) -> None:
        self.text += out.text
        self.token_ids = (self.token_ids or []) + out.new_token_ids
        self.prompt_tokens = out.prompt_tokens
        if out.finished:
            self.finish_reason = out.finish_reason
            self.prefill_time = out.prefill_time
            self.decode_time_arr = out.decode_time_arr

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids or [])
