"""Ray mode's actors: ``WorkerActor`` runs one Tandem worker; ``Controller`` keeps the worker counts.

WorkerActor rules:
- It runs the very command ``tandem up`` runs for a worker (tandem/up.py ``spawn_worker``: ``tandem
  prefill`` or ``tandem decode``) as its child process, listening on and advertising the IP of the
  node Ray placed the actor on, with the actor's CPUs as its torch threads and the GPUs Ray gave it
  (``CUDA_VISIBLE_DEVICES``, set by Ray, is inherited).
- One fate: the child gets SIGKILL when the actor's process dies, and the actor's process exits
  when its child exits unasked. Either way Ray sees the actor die and restarts it (``max_restarts``);
  the new actor starts a new child, which registers in Redis under the same worker id.
- Requests and KV never touch Ray: the worker speaks gRPC, registers in Redis and hands KV over
  torch.distributed exactly as under ``tandem up``. Ray's calls carry only a JSON spec and small
  status dicts.
- ``drain`` SIGTERMs the child, which leaves the registry, refuses new work, finishes what it holds
  (services/worker.py, ``TANDEM_DRAIN_TIMEOUT_S``) and exits; the controller then kills the actor.

Controller rules: one per deployment, named ``controller`` in the deployment's Ray namespace and
owned by ``tandem ray up`` (it dies with it, and the workers it created with it). It holds the
spec every worker starts from and serialises scaling: ``scale`` first starts the missing workers
and waits until each has registered, then drains the surplus ones (highest index first) at the
same time. Worker names (``{role}-{index}``) are never reused within a deployment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import ray
import redis

from services.registry import WorkerRegistry
from tandem.split import Placement
from tandem.up import UpConfig, spawn_worker

ROLES = ("prefill", "decode")


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker of a deployment starts from (sent to actors as JSON)."""

    redis_url: str
    worker_secret: str = field(repr=False)
    model: str = ""
    dtype: str = "float32"
    cpus: float = 1.0               # Ray ``num_cpus`` per worker; also its torch threads
    gpus: float = 0.0               # Ray ``num_gpus`` per worker
    max_restarts: int = -1          # Ray ``max_restarts`` (-1: always)
    ready_timeout_s: float = 300.0  # a new worker must register within this
    drain_timeout_s: float = 60.0   # a removed worker's drain, then it is killed
    env: dict[str, str] = field(default_factory=dict)   # TANDEM_* variables of the deployment

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerSpec":
        return cls(**json.loads(text))


class WorkerActor:
    """One prefill or decode worker (see the module docstring)."""

    def __init__(self, role: str, worker_id: str, spec_json: str):
        spec = WorkerSpec.from_json(spec_json)
        self.role, self.worker_id, self.spec = role, worker_id, spec
        self.node_ip = ray.util.get_node_ip_address()
        os.environ.update(spec.env)
        cfg = UpConfig(host=self.node_ip, model=spec.model, dtype=spec.dtype, worker_secret=spec.worker_secret)
        self.draining = False
        self.proc = spawn_worker(role, cfg, spec.redis_url, Placement((), max(1, int(spec.cpus))),
                                 worker_id=worker_id, death_signal=signal.SIGKILL)
        threading.Thread(target=self._watch, daemon=True, name="watch-worker").start()

    def _watch(self) -> None:
        code = self.proc.wait()
        if not self.draining:
            print(f"tandem ray: worker {self.worker_id} (pid {self.proc.pid}) exited with {code}; "
                  "ending its actor so that Ray restarts it", file=sys.stderr, flush=True)
            os._exit(1)

    def ready(self) -> dict:
        """Wait until the worker is live in the registry (``spec.ready_timeout_s`` at most; Redis
        errors meanwhile only mean "not yet")."""
        registry = WorkerRegistry(redis.Redis.from_url(self.spec.redis_url, socket_timeout=2,
                                                       socket_connect_timeout=2))
        deadline = time.monotonic() + self.spec.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.worker_id} exited with {self.proc.returncode} while starting")
            try:
                if any(w.worker_id == self.worker_id for w in registry.live(self.role)):
                    return self.describe()
            except redis.RedisError:   # a slow or restarting Redis: ask again until the deadline
                pass
            time.sleep(0.2)
        raise TimeoutError(f"worker {self.worker_id} did not register within {self.spec.ready_timeout_s:g} s")

    def describe(self) -> dict:
        return {"worker_id": self.worker_id, "role": self.role, "node_ip": self.node_ip,
                "actor_pid": os.getpid(), "worker_pid": self.proc.pid}

    def drain(self) -> int:
        """SIGTERM the worker and wait for it to finish what it holds; its exit status (-9: it
        was killed after ``drain_timeout_s`` plus a margin)."""
        self.draining = True
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(self.spec.drain_timeout_s + 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


class Controller:
    """The worker counts of one deployment (see the module docstring)."""

    def __init__(self, spec_json: str):
        self.spec_json = spec_json
        self.spec = WorkerSpec.from_json(spec_json)
        self.workers: dict[str, list[tuple[str, ray.actor.ActorHandle]]] = {role: [] for role in ROLES}
        self.next_index = 0

    def scale(self, counts: dict[str, int]) -> dict:
        """Make the live counts ``counts`` (role → count); returns ``describe()`` as ``workers``
        and each drained worker's exit status as ``drained`` (name → status)."""
        added = [self._add(role) for role in ROLES for _ in range(counts[role] - len(self.workers[role]))]
        try:
            ray.get([actor.ready.remote() for _, actor in added], timeout=self.spec.ready_timeout_s + 30)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as e:
            for role in ROLES:   # undo this call's additions: the counts stay as they were
                self.workers[role] = [w for w in self.workers[role] if w not in added]
            for _, actor in added:
                ray.kill(actor, no_restart=True)
            raise RuntimeError(f"new workers not ready (not placed for lack of resources, or failed "
                               f"to start): {e}") from None
        surplus = [w for role in ROLES for w in self._surplus(role, counts[role])]
        drains = [(name, actor, actor.drain.remote()) for name, actor in surplus]   # all at once
        drained = {name: self._drained(actor, ref) for name, actor, ref in drains}
        return {"workers": self.describe(), "drained": drained}

    @staticmethod
    def _drained(actor, ref) -> int | str:
        """The drained worker's exit status (or why there is none: its actor had died), then the
        actor is killed for good."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as e:
            return type(e).__name__
        finally:
            ray.kill(actor, no_restart=True)

    def _add(self, role: str) -> tuple[str, ray.actor.ActorHandle]:
        name = f"{role}-{self.next_index}"
        self.next_index += 1
        actor = RemoteWorker.options(
            name=name, num_cpus=self.spec.cpus, num_gpus=self.spec.gpus,
            max_restarts=self.spec.max_restarts, max_task_retries=0,
        ).remote(role, f"{ray.get_runtime_context().namespace}-{name}", self.spec_json)
        self.workers[role].append((name, actor))
        return name, actor

    def _surplus(self, role: str, keep: int) -> list[tuple[str, ray.actor.ActorHandle]]:
        surplus = self.workers[role][keep:]
        self.workers[role] = self.workers[role][:keep]
        return surplus

    def describe(self) -> list[dict]:
        """Each worker's ``describe()``; an actor being restarted answers within 10 s or shows so."""
        names = [(name, actor) for role in ROLES for name, actor in self.workers[role]]
        out = []
        for name, actor in names:
            try:
                out.append({"name": name, **ray.get(actor.describe.remote(), timeout=10)})
            except ray.exceptions.RayError as e:
                out.append({"name": name, "error": type(e).__name__})
        return out

    def shutdown(self) -> None:
        """Kill every worker actor at once (Ctrl-C of ``tandem ray up``; no drain)."""
        for role in ROLES:
            for _, actor in self.workers[role]:
                ray.kill(actor, no_restart=True)
            self.workers[role] = []


RemoteWorker = ray.remote(WorkerActor)
RemoteController = ray.remote(Controller)
