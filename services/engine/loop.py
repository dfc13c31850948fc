"""The thread that drives an engine inside a worker process.

One ``EngineLoop`` per worker owns the only thread that calls ``engine.step()``. Request handlers
(gRPC threads) ``subscribe`` before adding a request and read that request's ``RequestOutput``s from
their own queue; outputs of requests nobody listens to are dropped. ``housekeeping`` runs about
once a second on the loop thread (the prefill worker expires unclaimed KV there).
``last_beat`` (``time.monotonic()``) is stamped at every turn of the loop, busy or idle (at least
every 0.5 s): a stale beat means a step is stuck, which the worker's gRPC health reports.
``threads``, when given, says before each step how many torch threads the step may use (a decode
worker gives up the cores it shares with a busy prefill worker: ``DecodeServicer.step_threads``).

Failure rule: a step that raises ends every request in the engine with ``finish_reason="error"``
(each waiter gets that final output at once; their KV blocks are freed). After
``max_step_failures`` failed steps in a row the loop stops for good and sets ``failed``: the
worker then leaves the registry and exits non-zero (services/worker.py ``run_until_signal``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

import torch

from .engine import LLMEngine
from .sequence import RequestOutput

log = logging.getLogger(__name__)


class EngineLoop:
    def __init__(self, engine: LLMEngine, housekeeping: Callable[[], None] | None = None,
                 max_step_failures: int = 3, threads: Callable[[], int] | None = None):
        self.engine = engine
        self.housekeeping = housekeeping
        self.threads = threads
        self.last_threads = engine.num_threads   # what the last step ran with
        self.max_step_failures = max_step_failures
        self.failed = threading.Event()   # set once the loop gave up after repeated step failures
        self._failures = 0
        self._queues: dict[str, queue.Queue[RequestOutput]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="engine-loop")
        self.last_beat = time.monotonic()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def start(self) -> "EngineLoop":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def subscribe(self, request_id: str) -> "queue.Queue[RequestOutput]":
        q: queue.Queue[RequestOutput] = queue.Queue()
        self._queues[request_id] = q
        return q

    def unsubscribe(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    @property
    def subscribers(self) -> int:
        """Output queues handed out and not yet given back (one per request being waited on)."""
        return len(self._queues)

    def abort(self, request_id: str) -> bool:
        """Abort ``request_id`` in the engine (freeing its KV) and hand its waiter, if any, a final
        ``abort`` output at once, so nobody sits until a timeout. False if the engine did not know it."""
        found = self.engine.abort(request_id)
        q = self._queues.get(request_id)
        if found and q is not None:
            q.put(RequestOutput(request_id=request_id, new_token_ids=[], text="", finished=True,
                                finish_reason="abort", prompt_tokens=0, completion_tokens=0,
                                prefill_time=None, decode_time_arr=[]))
        return found

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        last_housekeeping = time.monotonic()
        while not self._stop.is_set():
            self.last_beat = time.monotonic()
            if time.monotonic() - last_housekeeping > 1.0 and self.housekeeping:
                last_housekeeping = time.monotonic()
                self._guarded(self.housekeeping)
            if not self.engine.has_unfinished():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            if self.threads is not None and (n := self.threads()) != self.last_threads:
                torch.set_num_threads(n)   # this thread's OpenMP team: the loop's (omp.py)
                self.last_threads = n
            self._deliver(self._step())

    def _step(self) -> list[RequestOutput]:
        """One engine step; on failure, the error outputs of every request it ended."""
        try:
            outputs = self.engine.step()
        except Exception as exc:
            self._failures += 1
            log.exception("engine step failed (%d in a row)", self._failures)
            return self._fail(f"engine step failed: {exc!r}")
        self._failures = 0
        return outputs

    def _fail(self, error: str) -> list[RequestOutput]:
        try:
            outputs = self.engine.fail_unfinished(error)
        except Exception:
            log.exception("could not end the requests of a failed step")
            outputs, self._failures = [], self.max_step_failures
        if self._failures >= self.max_step_failures:
            log.critical("engine failed %d steps in a row; this worker stops serving", self._failures)
            self.failed.set()
            self._stop.set()
        return outputs

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            q = self._queues.get(out.request_id)
            if q is not None:
                q.put(out)

    @staticmethod
    def _guarded(fn):
        try:
            return fn()
        except Exception:  # a bug in housekeeping must not kill the worker silently
            log.exception("engine loop: %s failed", getattr(fn, "__name__", fn))
            time.sleep(0.1)
            return None
