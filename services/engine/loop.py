"""The thread that drives an engine inside a worker process.

One ``EngineLoop`` per worker owns the only thread that calls ``engine.step()``. Request handlers
(gRPC threads) ``subscribe`` before adding a request and read that request's ``RequestOutput``s from
their own queue; outputs of requests nobody listens to are dropped. ``housekeeping`` runs about
once a second on the loop thread (the prefill worker expires unclaimed KV there).
``last_beat`` (``time.monotonic()``) is stamped at every turn of the loop, busy or idle (at least
every 0.5 s): a stale beat means a step is stuck, which the worker's gRPC health reports.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from .engine import LLMEngine
from .sequence import RequestOutput

log = logging.getLogger(__name__)


class EngineLoop:
    def __init__(self, engine: LLMEngine, housekeeping: Callable[[], None] | None = None):
        self.engine = engine
        self.housekeeping = housekeeping
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
            for out in self._guarded(self.engine.step) or []:
                q = self._queues.get(out.request_id)
                if q is not None:
                    q.put(out)

    @staticmethod
    def _guarded(fn):
        try:
            return fn()
        except Exception:  # a bug in one step must not kill the worker silently
            log.exception("engine loop: %s failed", getattr(fn, "__name__", fn))
            time.sleep(0.1)
            return None
