"""Constrained decoding at run time: compiling grammars off the engine thread, one matcher per
request, and masking the logits rows of constrained requests only.

Ownership and timing:
- ``GrammarCompilerPool`` (one per engine) owns the xgrammar compiler and a cache of compiled
  grammars keyed by ``GrammarSpec.key()``; compilation runs on its own thread, so the engine thread
  never waits for it. The first request also builds the tokenizer's ``TokenizerInfo`` there (importing
  ``transformers`` for it: the workers' start does not).
- ``RequestGrammar`` (one per constrained ``Sequence``) owns that request's ``GrammarMatcher``. The
  matcher is built when the compiled grammar is ready, by replaying every output token so far (a
  decode worker replays the prefill worker's first token); from then on each sampled token is
  accepted right after sampling.
- ``mask_logits`` fills one bitmask row per constrained row and applies it to those rows only
  (``indices``), so unconstrained rows keep exactly the logits, and tokens, they have alone.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence as Seq

import torch

from .grammar import GrammarSpec, build_grammar
from .tokenizer import Tokenizer

CACHE_SIZE = 256


class GrammarCompilerPool:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_token_ids: list[int], threads: int = 1):
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._stop_token_ids = sorted(stop_token_ids)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="grammar")
        self._compiler = None
        self._cache: OrderedDict[str, Future] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, spec: GrammarSpec) -> Future:
        """A future of the compiled grammar (already done when ``spec`` was compiled before)."""
        key = spec.key()
        with self._lock:
            future = self._cache.get(key)
            if future is not None and not (future.done() and future.exception()):
                self._cache.move_to_end(key)
                return future
            future = self._executor.submit(self._compile, spec)
            self._cache[key] = future
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return future

    def _compile(self, spec: GrammarSpec):
        import xgrammar as xgr

        if self._compiler is None:      # only this pool's thread touches the compiler
            info = xgr.TokenizerInfo.from_huggingface(self._tokenizer.hf, vocab_size=self.vocab_size,
                                                      stop_token_ids=self._stop_token_ids)
            self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        return self._compiler.compile_grammar(build_grammar(spec))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class RequestGrammar:
    """One request's grammar: the compile future, then its matcher."""

    def __init__(self, future: Future):
        self.future = future
        self.matcher = None

    @property
    def ready(self) -> bool:
        return self.future.done()

    def start(self, output_token_ids: list[int]) -> bool:
        """Build the matcher and replay ``output_token_ids``; False if compiling failed or the
        grammar refuses a token already generated."""
        import xgrammar as xgr

        if self.future.exception() is not None:
            return False
        self.matcher = xgr.GrammarMatcher(self.future.result())
        return all(self.matcher.accept_token(t) for t in output_token_ids)

    def accept(self, token: int) -> bool:
        """Advance past a sampled token (a no-op before ``start``: ``start`` replays it)."""
        return self.matcher is None or self.matcher.accept_token(token)

    @property
    def error(self) -> str:
        exc = self.future.exception() if self.future.done() else None
        return f"the grammar could not be compiled: {exc}" if exc else "the grammar refused the sampled token"


def mask_logits(logits: torch.Tensor, grammars: Seq[RequestGrammar | None]) -> None:
    """Mask, in place, the rows of ``logits`` whose request has a grammar; leave the others alone."""
    import xgrammar as xgr

    rows = [i for i, g in enumerate(grammars) if g is not None and g.matcher is not None]
    if not rows:
        return
    bitmask = xgr.allocate_token_bitmask(logits.shape[0], logits.shape[-1])
    for i in rows:
        grammars[i].matcher.fill_next_token_bitmask(bitmask, i)
    xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), vocab_size=logits.shape[-1],
                                    indices=rows)
