"""``tandem up``'s worker supervision: a worker that exits is restarted, with backoff.

Rules: each worker slot (a role and its placement: cores and threads) is watched once per tick. A slot whose process
exited is restarted after a delay that doubles with each restart in a row (``base_s`` up to
``max_s``); a worker that stayed up ``stable_s`` seconds resets that count. Every exit and restart
is printed to stderr and counted (``restarts``, per slot and in total). Requests in flight on the
dead worker end with an error (their gRPC streams break); the gateway stops routing to it when its
registry entry expires (``TANDEM_HEARTBEAT_TTL_S``), and the new worker announces itself.

Shutdown: ``close()`` ends supervision before the stack stops its processes. A tick and ``close``
take one lock, so a restart in progress finishes first and its new process is among those
``close`` returns (to be stopped); after it, nothing is restarted — a worker that dies while the
stack shuts down (Ctrl-C reaches the workers too) stays down. Backoff is a time to restart at,
never a sleep, so nothing waits on it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Slot:
    role: str
    placement: object           # what ``spawn`` needs besides the role (tandem/split.py Placement)
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    in_a_row: int = 0           # restarts since the worker last stayed up ``stable_s``
    restarts: int = 0           # restarts in total
    restart_at: float | None = None


class Supervisor:
    def __init__(self, spawn: Callable[[str, object], subprocess.Popen], slots: list[Slot],
                 base_s: float = 0.5, max_s: float = 30.0, stable_s: float = 60.0):
        self.spawn = spawn
        self.slots = slots
        self.base_s, self.max_s, self.stable_s = base_s, max_s, stable_s
        self._lock = threading.Lock()
        self.closed = False

    @property
    def procs(self) -> list[subprocess.Popen]:
        return [s.proc for s in self.slots]

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self.slots)

    def close(self) -> list[subprocess.Popen]:
        """Stop supervising (no restart after this returns); the processes to stop."""
        with self._lock:
            self.closed = True
            return self.procs

    def tick(self) -> None:
        """Notice exited workers and restart those whose backoff has passed (not once closed)."""
        with self._lock:
            if not self.closed:
                self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc.poll() is None:
                continue
            if slot.restart_at is None:
                self._schedule(slot, now)
            elif now >= slot.restart_at:
                self._restart(slot, now)

    def _schedule(self, slot: Slot, now: float) -> None:
        if now - slot.started >= self.stable_s:
            slot.in_a_row = 0
        delay = min(self.max_s, self.base_s * 2 ** slot.in_a_row)
        slot.restart_at = now + delay
        print(f"tandem up: the {slot.role} worker (pid {slot.proc.pid}) exited with "
              f"{slot.proc.returncode}; restarting it in {delay:g} s", file=sys.stderr, flush=True)

    def _restart(self, slot: Slot, now: float) -> None:
        slot.proc = self.spawn(slot.role, slot.placement)
        slot.started, slot.restart_at = now, None
        slot.in_a_row += 1
        slot.restarts += 1
        print(f"tandem up: restarted the {slot.role} worker as pid {slot.proc.pid} (restart "
              f"{slot.restarts} of this worker, {self.restarts} in all)", file=sys.stderr, flush=True)
