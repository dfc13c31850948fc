"""``tandem ray up`` and ``tandem ray scale``: Tandem's prefill and decode workers as Ray actors.

``ray up`` connects to a Ray cluster (``--address``; without one it starts a local single-node
cluster sized by ``--num-cpus``/``--num-gpus``), starts Redis (``TANDEM_REDIS_URL``, or the
embedded one), converts the model once, creates the deployment's controller in the Ray namespace
``--namespace`` (tandem/ray_workers.py), has it start N prefill and M decode worker actors, and runs
the gateway in this process exactly as ``tandem up`` does. It prints the URL once ``/ready`` is
green. Ctrl-C (or SIGTERM) stops the gateway, kills every worker actor and the controller,
disconnects from Ray (a local cluster stops with this process) and stops the embedded Redis.

``ray scale`` connects to the same cluster (``--address``; default: the address ``ray up`` recorded
in the data directory, else ``auto``), finds the namespace's controller and asks it for new counts:
new workers register and take traffic before it returns; removed ones drain first.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tandem.up import UpConfig, prepare_model, serve_gateway, start_redis, wait_ready

CONTROLLER = "controller"


@dataclass(frozen=True)
class RayUpConfig:
    up: UpConfig                      # gateway host/port, model, Redis, data dir, worker secret
    address: str = ""                 # "" starts a local cluster
    namespace: str = "tandem"
    prefill: int = 1
    decode: int = 1
    num_cpus: int = 0                 # local cluster only; 0: this machine's cores
    num_gpus: int = 0                 # local cluster only
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0
    max_restarts: int = -1
    drain_timeout_s: float = 60.0
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.prefill < 1 or self.decode < 1:
            raise ValueError("--prefill and --decode must each be at least 1")
        if self.worker_cpus <= 0 or self.worker_gpus < 0:
            raise ValueError("--worker-cpus must be positive and --worker-gpus at least 0")


def address_file(data_dir: Path, namespace: str) -> Path:
    return data_dir / f"ray-{namespace}.address"


def run(cfg: RayUpConfig) -> int:
    import ray

    from tandem.ray_workers import RemoteController, WorkerSpec

    redis, redis_url = start_redis(cfg.up)
    controller = None
    recorded = address_file(cfg.up.data_dir, cfg.namespace)
    try:
        prepare_model(cfg.up)
        _connect(cfg)
        if not cfg.up.redis_url and len([n for n in ray.nodes() if n["Alive"]]) > 1:
            print("tandem ray up: the embedded Redis listens on 127.0.0.1, out of reach of the "
                  "cluster's other nodes; set TANDEM_REDIS_URL", file=sys.stderr, flush=True)
            return 2
        # for `tandem ray scale`: where the cluster is, and whether it wants Ray's auth token
        gcs, auth = ray.get_runtime_context().gcs_address, os.environ.get("RAY_AUTH_MODE", "")
        recorded.parent.mkdir(parents=True, exist_ok=True)
        recorded.write_text(json.dumps({"address": gcs, "auth_mode": auth}))
        print(f"tandem ray up: Ray cluster at {gcs} (namespace {cfg.namespace}); its actors: "
              f"{f'RAY_AUTH_MODE={auth} ' if auth else ''}ray list actors --address {gcs} --detail", flush=True)
        spec = WorkerSpec(redis_url=redis_url, worker_secret=cfg.up.worker_secret, model=cfg.up.model,
                          dtype=cfg.up.dtype, cpus=cfg.worker_cpus, gpus=cfg.worker_gpus,
                          max_restarts=cfg.max_restarts, ready_timeout_s=cfg.up.ready_timeout_s,
                          drain_timeout_s=cfg.drain_timeout_s, env=cfg.env)
        controller = RemoteController.options(name=CONTROLLER, num_cpus=0).remote(spec.to_json())
        serve_gateway(cfg.up, redis_url, lambda server: _bring_up(cfg, server, controller, redis_url))
    finally:
        recorded.unlink(missing_ok=True)
        if controller is not None:
            _remove(controller)
        if ray.is_initialized():
            ray.shutdown()
        if redis is not None:
            redis.stop()
    return 0


def _connect(cfg: RayUpConfig) -> None:
    import ray

    if cfg.address:
        ray.init(address=cfg.address, namespace=cfg.namespace, log_to_driver=True)
        return
    # "local": a new cluster even when `ray start` left one running on this machine
    ray.init(address="local", namespace=cfg.namespace, num_cpus=cfg.num_cpus or os.cpu_count(),
             num_gpus=cfg.num_gpus, include_dashboard=True, dashboard_port=0,
             object_store_memory=100 << 20, log_to_driver=True)


def _bring_up(cfg: RayUpConfig, server, controller, redis_url: str) -> None:
    import ray

    try:
        workers = ray.get(controller.scale.remote({"prefill": cfg.prefill, "decode": cfg.decode}))["workers"]
    except Exception as e:   # not placed, failed to start, or Ray itself failed: stop
        print(f"tandem ray up: {e}", file=sys.stderr, flush=True)
        server.should_exit = True
        return
    print_workers(workers)
    wait_ready(cfg.up, server, redis_url, lambda: True)


def print_workers(workers: list[dict]) -> None:
    for w in workers:
        if "error" in w:
            print(f"  {w['name']}: {w['error']}", flush=True)
        else:
            print(f"  {w['name']}: {w['role']} worker {w['worker_id']} on node {w['node_ip']} "
                  f"(actor pid {w['actor_pid']}, worker pid {w['worker_pid']})", flush=True)


def _remove(controller) -> None:
    """Kill every worker actor, then the controller (owned actors die with it anyway)."""
    import ray

    try:
        ray.get(controller.shutdown.remote(), timeout=30)
    except Exception as e:   # the cluster is going away; the controller's death takes the rest
        print(f"tandem ray up: could not stop the workers one by one ({e})", file=sys.stderr, flush=True)
    ray.kill(controller, no_restart=True)


def scale(address: str, namespace: str, data_dir: Path, prefill: int | None, decode: int | None) -> int:
    """``tandem ray scale``: new counts for the running deployment of ``namespace``."""
    recorded = address_file(data_dir, namespace)
    if not address and recorded.exists():
        found = json.loads(recorded.read_text())
        address = found["address"]
        if found["auth_mode"]:   # a local cluster of `tandem ray up`: Ray's default token auth
            os.environ.setdefault("RAY_AUTH_MODE", found["auth_mode"])   # read when Ray is imported
    address = address or "auto"
    import ray
    ray.init(address=address, namespace=namespace, log_to_driver=False)
    try:
        controller = ray.get_actor(CONTROLLER)
        workers = ray.get(controller.describe.remote())
        counts = {role: sum(w["name"].startswith(f"{role}-") for w in workers) for role in ("prefill", "decode")}
        counts.update({k: v for k, v in (("prefill", prefill), ("decode", decode)) if v is not None})
        if min(counts.values()) < 1:
            print("error: a deployment needs at least one prefill and one decode worker", file=sys.stderr)
            return 2
        result = ray.get(controller.scale.remote(counts))
    except ValueError as e:   # no such actor
        print(f"error: no Tandem deployment in Ray namespace {namespace!r} at {address}: {e}", file=sys.stderr)
        return 1
    except ray.exceptions.RayTaskError as e:
        print(f"error: {e.cause if hasattr(e, 'cause') else e}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    for name, code in result["drained"].items():
        print(f"tandem ray scale: drained {name} (exit status {code})", flush=True)
    print(f"tandem ray scale: {counts['prefill']} prefill, {counts['decode']} decode", flush=True)
    print_workers(result["workers"])
    return 0
