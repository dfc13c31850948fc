"""``tandem up``: the embedded default deployment on one machine.

Starts, in order: Redis (unless ``TANDEM_REDIS_URL`` names one; data and AOF under the data
directory, restarted if it dies), one prefill and one decode worker as separate OS processes, their
cores and torch threads chosen by the CPU split (tandem/split.py; printed in the start line) — or,
with ``--colocated``, one worker doing both on all cores — and the gateway in this process. It prints the URL once
``/ready`` is green. Once it is, a worker that exits is restarted with backoff and the stack keeps
serving (tandem/supervise.py); a worker that exits during start-up stops the stack. Workers and gateway
share a worker secret, generated here unless ``TANDEM_WORKER_SECRET`` is set (docs/architecture.md). Ctrl-C (or SIGTERM) stops the gateway, then the workers, then Redis;
children also die with this process if it is killed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tandem.redis_server import EmbeddedRedis, die_with_parent
from tandem.split import CpuSplit, Placement, choose_split, colocated_split, usable_cpus
from tandem.supervise import Slot, Supervisor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    model: str = ""
    dtype: str = "float32"
    redis_url: str = ""
    data_dir: Path = Path(".tandem")
    pin_cores: bool = True
    split: str = "auto"                 # "auto" or "P:D" threads (tandem/split.py)
    colocated: bool = False
    ready_timeout_s: float = 300.0
    worker_secret: str = field(default="", repr=False)   # TANDEM_WORKER_SECRET of workers and gateway


def _preexec(cpus: tuple[int, ...], death_signal: int):
    die = die_with_parent(os.getpid(), death_signal)

    def run() -> None:
        die()
        if cpus:
            try:
                os.sched_setaffinity(0, cpus)
            except OSError:
                pass
    return run


def spawn_worker(role: str, cfg: UpConfig, redis_url: str, placement: Placement, *,
                 worker_id: str = "", death_signal: int = signal.SIGTERM) -> subprocess.Popen:
    """Start ``tandem ROLE`` listening on (and advertising) ``cfg.host``, on ``placement``'s cpus
    with its torch threads (none given: all cpus, torch's choice); it gets ``death_signal`` when
    this thread dies."""
    env = dict(os.environ, TANDEM_REDIS_URL=redis_url, TANDEM_WORKER_SECRET=cfg.worker_secret)
    if placement.threads:
        env["TANDEM_NUM_THREADS"] = str(placement.threads)
    env["TANDEM_SHARED_THREADS"] = str(placement.shared)
    argv = [sys.executable, "-m", "tandem.cli", role, "--host", cfg.host, "--port", "0", "--metrics-port", "0",
            "--dtype", cfg.dtype,
            *(["--model", cfg.model] if cfg.model else []),
            *(["--worker-id", worker_id] if worker_id else [])]
    return subprocess.Popen(argv, env=env, preexec_fn=_preexec(placement.cpus, death_signal))


def stop_processes(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def cpu_split(cfg: UpConfig) -> CpuSplit:
    """Each worker's cores and threads (``ValueError`` for a split this machine cannot give)."""
    cpus = usable_cpus()
    if cfg.colocated:
        return colocated_split(cpus, cfg.pin_cores)
    return choose_split(cfg.split, cpus, cfg.pin_cores)


def start_redis(cfg: UpConfig) -> tuple[EmbeddedRedis | None, str]:
    """``cfg.redis_url``, or an embedded Redis started under the data directory."""
    if cfg.redis_url:
        return None, cfg.redis_url
    redis = EmbeddedRedis(cfg.data_dir / "redis").start()
    log.info("started Redis at %s (data in %s)", redis.url, redis.data_dir)
    return redis, redis.url


def run(cfg: UpConfig) -> int:
    started = time.monotonic()
    split = cpu_split(cfg)
    print(f"tandem up: cpu split: {split.describe()}", flush=True)
    redis, redis_url = start_redis(cfg)
    stages = {"redis": time.monotonic() - started}
    prepare_model(cfg)                 # a GGUF is converted here, once, before any worker starts
    stages["model files"] = time.monotonic() - started - stages["redis"]
    supervisor = Supervisor(lambda role, placement: spawn_worker(role, cfg, redis_url, placement),
                            [Slot(role, placement, spawn_worker(role, cfg, redis_url, placement))
                             for role, placement in split.workers])
    try:
        timing = (started, stages)
        serve_gateway(cfg, redis_url, lambda server: _announce_when_ready(
            cfg, supervisor, server, redis_url, redis, timing))
    finally:
        stop_processes(supervisor.close())
        if redis is not None:
            redis.stop()
    return 0


def serve_gateway(cfg: UpConfig, redis_url: str, background) -> None:
    """Run the gateway in this thread until Ctrl-C or SIGTERM; ``background(server)`` runs in a
    daemon thread meanwhile (it may stop the gateway with ``server.should_exit = True``)."""
    from gateway.main import access_line, build_app, server as gateway_server
    from tandem.settings import Settings

    settings = Settings.from_env().model_copy(update={"redis_url": redis_url,
                                                      "worker_secret": cfg.worker_secret})
    app = build_app(settings, model=cfg.model)
    print(f"tandem up: {access_line(settings)}", flush=True)
    server = gateway_server(app, cfg.host, cfg.port)
    threading.Thread(target=background, args=(server,), daemon=True).start()
    # uvicorn re-raises the signal that stopped it once it has shut down; make SIGTERM behave
    # like Ctrl-C so that the caller's clean-up runs for both.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        server.run()
    except KeyboardInterrupt:
        pass


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def prepare_model(cfg: UpConfig) -> None:
    """Make the model's files ready (a GGUF converts into the cache) so that the workers and the
    gateway, started next, all load the converted files instead of each converting."""
    from services.engine.checkpoint import resolve_model_dir
    from tandem.settings import Settings

    resolve_model_dir(cfg.model or None, Settings.from_env().cache_dir)


def _timing_line(started: float, stages: dict[str, float]) -> str:
    """``ready in X s (redis a s, model files b s, workers and gateway c s)``; past the 10 s goal
    it says where to look."""
    total = time.monotonic() - started
    rest = total - sum(stages.values())
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in {**stages,
                      "workers and gateway": rest}.items())
    slow = "; slower than 10 s: each worker logs its own 'ready after' line" if total > 10 else ""
    return f"tandem up: ready in {total:.1f} s ({parts}){slow}"


def _announce_when_ready(cfg: UpConfig, supervisor: Supervisor, server, redis_url: str,
                         redis: EmbeddedRedis | None, timing: tuple[float, dict[str, float]]) -> None:
    procs = supervisor.procs
    if not wait_ready(cfg, server, redis_url, lambda: all(p.poll() is None for p in procs)):
        return
    print(_timing_line(*timing), flush=True)
    while not server.should_exit:  # serving: restart what dies
        supervisor.tick()
        if redis is not None and not redis.running:
            _restart_redis(redis)
        time.sleep(1)


def wait_ready(cfg: UpConfig, server, redis_url: str, workers_alive) -> bool:
    """Wait (``cfg.ready_timeout_s`` at most) for the gateway's ``/ready``; print the URL and where
    the metrics are. False, with the gateway told to stop, when not ready in time or when
    ``workers_alive()`` turns False first."""
    url = f"http://{cfg.host}:{cfg.port}"
    deadline = time.monotonic() + cfg.ready_timeout_s
    while time.monotonic() < deadline and not server.should_exit:
        if not workers_alive():
            print("tandem up: a worker exited during start-up; stopping", file=sys.stderr, flush=True)
            server.should_exit = True
            return False
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as r:
                if r.status == 200:
                    print(f"Tandem is ready at {url}/v1  (redis: {redis_url}; Ctrl-C to stop)", flush=True)
                    _announce_observability(url, redis_url)
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    if not server.should_exit:
        print("tandem up: not ready in time; stopping", file=sys.stderr, flush=True)
        server.should_exit = True
    return False


def _announce_observability(url: str, redis_url: str) -> None:
    """Print where each process serves its metrics (workers: as announced in the registry)."""
    import redis as redis_client

    from services.registry import WorkerRegistry

    print(f"  status page: {url}/status   gateway metrics: {url}/metrics", flush=True)
    try:
        workers = WorkerRegistry(redis_client.Redis.from_url(redis_url, socket_timeout=2)).live()
    except redis_client.RedisError as e:
        log.warning("could not list the workers' metrics addresses: %s", e)
        return
    for w in workers:
        print(f"  {w.role} worker {w.worker_id}: grpc {w.address}   "
              f"metrics http://{w.metrics_address}/metrics", flush=True)


def _restart_redis(redis: EmbeddedRedis) -> None:
    """Our Redis died or was shut down: start it again on the same port and data (AOF replays)."""
    print("tandem up: Redis stopped; restarting it", file=sys.stderr, flush=True)
    try:
        redis.stop()    # reaps the dead process; start() refuses while it is still recorded
        redis.start()
    except Exception as e:  # keep trying on the next tick; the gateway answers 503 meanwhile
        log.error("could not restart Redis: %s", e)
