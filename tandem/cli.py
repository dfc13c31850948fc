"""The ``tandem`` command line.

- ``tandem up``: Redis + one prefill worker + one decode worker + the gateway (the embedded default)
- ``tandem ray up`` / ``tandem ray scale``: the same workers as Ray actors (``pip install 'tandem[ray]'``)
- ``tandem gateway`` / ``tandem prefill`` / ``tandem decode``: one component each
- ``tandem generate``: run the engine in-process on one prompt
- ``tandem settings``: every ``TANDEM_*`` variable with its default and meaning

A bad ``TANDEM_*`` value stops every command at once with the variable named (exit status 2).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import secrets
import sys
import time
import uuid

from tandem.settings import Settings, SettingsError, table


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="tandem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate a chat answer to PROMPT with the local engine")
    gen.add_argument("prompt")
    gen.add_argument("--max-tokens", type=int, default=256)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 (the default) is greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--system", default=None, help="system message")
    _add_engine_args(gen)

    sub.add_parser("settings", help="list every TANDEM_* environment variable")
    up = sub.add_parser("up", help="run Redis, a prefill and a decode worker, and the gateway")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--no-pin", action="store_true",
                    help="do not pin workers to cores (their thread counts still follow the split)")
    up.add_argument("--split", default=None,
                    help="prefill:decode torch threads, e.g. 1:2 (1:2x1: two 1-thread decode workers), or auto "
                         "(default: TANDEM_SPLIT, else auto: sized from the machine; docs/architecture.md "
                         "\"CPU split\")")
    up.add_argument("--colocated", action="store_true",
                    help="one worker doing both prefill and decode on all cores (the baseline)")
    _add_engine_args(up)

    _add_ray_parser(sub)

    bench = sub.add_parser("bench", help="benchmark any OpenAI-compatible Chat Completions server")
    from tandem.bench.cli import add_arguments as add_bench_arguments

    add_bench_arguments(bench)

    gw = sub.add_parser("gateway", help="run the HTTP gateway against the worker registry")
    gw.add_argument("--host", default="127.0.0.1")
    gw.add_argument("--port", type=int, default=8000)
    gw.add_argument("--model", default=Settings.from_env().model)

    for role in ("prefill", "decode", "colocated"):
        w = sub.add_parser(role, help=f"run a {role} worker (gRPC)")
        w.add_argument("--host", default="127.0.0.1", help="address to listen on")
        w.add_argument("--port", type=int, default=0, help="gRPC port (0 = any free port)")
        w.add_argument("--advertise-host", default="", help="address others dial (default: --host)")
        w.add_argument("--worker-id", default="")
        w.add_argument("--max-num-seqs", type=int, default=64)
        w.add_argument("--metrics-port", type=int, default=Settings.from_env().metrics_port,
                       help="Prometheus /metrics port (0 = any free port; default: TANDEM_METRICS_PORT)")
        if role != "colocated":   # a colocated worker moves no KV
            w.add_argument("--kv-timeout", type=float, default=Settings.from_env().kv_timeout_s,
                           help="seconds for KV pairing and transfers (default: TANDEM_KV_TIMEOUT_S)")
        if role == "decode":
            w.add_argument("--kv-port", type=int, default=0, help="torch.distributed store port (0 = any)")
        _add_engine_args(w)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s [{args.command}] %(name)s: %(message)s")
    return {"generate": generate, "settings": lambda _: print(table()) or 0, "up": up_command, "ray": ray_command,
            "gateway": gateway_command, "bench": bench_command,
            "prefill": worker_command, "decode": worker_command, "colocated": worker_command}[args.command](args)


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    s = Settings.from_env()
    p.add_argument("--model", default=s.model, help="GGUF file or HF-style directory")
    p.add_argument("--dtype", default=s.dtype)
    p.add_argument("--device", default=s.device)


ENGINES_DOING_BOTH = {"colocated": "a colocated worker", "generate": "tandem generate"}


def role_weights(s: Settings, role: str) -> str:
    """The linear-layer weights a worker of ``role`` runs: ``TANDEM_PREFILL_WEIGHTS`` for a
    prefill worker when set, else ``TANDEM_WEIGHTS``. An engine doing both phases (a colocated
    worker, ``tandem generate``) has one set of weights, so a different prefill setting there is
    refused (``ValueError``)."""
    if role not in ("prefill", "decode") and s.prefill_weights and s.prefill_weights != s.weights:
        raise ValueError(f"TANDEM_PREFILL_WEIGHTS={s.prefill_weights} differs from TANDEM_WEIGHTS="
                         f"{s.weights}, but {ENGINES_DOING_BOTH.get(role, 'this engine')} prefills and "
                         "decodes with one set of weights")
    return (s.prefill_weights or s.weights) if role == "prefill" else s.weights


def engine_config(args: argparse.Namespace):
    from services.engine import EngineConfig

    s = Settings.from_env()
    return EngineConfig(model=args.model, dtype=args.dtype, device=args.device,
                        weights=role_weights(s, getattr(args, "command", "")), rms_norm=s.rms_norm,
                        kv_cache_bytes=s.kv_cache_bytes, num_threads=s.num_threads,
                        enable_prefix_caching=s.prefix_caching,
                        max_num_seqs=getattr(args, "max_num_seqs", 64),
                        test_fail_step=s.test_hooks and s.test_fail_step == getattr(args, "command", ""))


def up_command(args: argparse.Namespace) -> int:
    from tandem.up import UpConfig, cpu_split, run

    s = Settings.from_env()
    cfg = UpConfig(host=args.host, port=args.port, model=args.model, dtype=args.dtype,
                   redis_url=s.redis_url, data_dir=s.data_dir, pin_cores=not args.no_pin,
                   split=args.split or s.split, colocated=args.colocated,
                   worker_secret=s.worker_secret or secrets.token_urlsafe(32))
    if cfg.colocated:
        try:
            role_weights(s, "colocated")
        except ValueError as e:
            print(f"error: --colocated: {e}", file=sys.stderr)
            return 2
    try:
        if cfg.colocated and cfg.split != "auto":
            raise ValueError("--colocated runs one worker on all usable cpus; a prefill:decode "
                             f"split ({cfg.split}) does not apply")
        cpu_split(cfg)
    except ValueError as e:
        print(f"error: --split: {e}", file=sys.stderr)
        return 2
    return run(cfg)


def _add_ray_parser(sub) -> None:
    ray = sub.add_parser("ray", help="run the workers as Ray actors (tandem[ray])")
    cmds = ray.add_subparsers(dest="ray_command", required=True)
    up = cmds.add_parser("up", help="start Redis, the worker actors and the gateway on a Ray cluster")
    up.add_argument("--address", default="", help="Ray cluster (auto, ray://..., host:port); "
                    "none starts a local one")
    up.add_argument("--prefill", type=int, default=1, help="prefill worker actors")
    up.add_argument("--decode", type=int, default=1, help="decode worker actors")
    up.add_argument("--host", default="127.0.0.1", help="the gateway's address")
    up.add_argument("--port", type=int, default=8000, help="the gateway's port")
    up.add_argument("--namespace", default="tandem", help="Ray namespace of this deployment's actors")
    up.add_argument("--worker-cpus", type=float, default=1.0, help="Ray num_cpus of each worker")
    up.add_argument("--worker-gpus", type=float, default=0.0, help="Ray num_gpus of each worker")
    up.add_argument("--max-restarts", type=int, default=-1, help="Ray max_restarts of each worker (-1: always)")
    up.add_argument("--num-cpus", type=int, default=0, help="local cluster only: its CPUs (default: this machine's)")
    up.add_argument("--num-gpus", type=int, default=0, help="local cluster only: its GPUs")
    _add_engine_args(up)
    sc = cmds.add_parser("scale", help="change the worker counts of a running `tandem ray up`")
    sc.add_argument("--prefill", type=int, default=None)
    sc.add_argument("--decode", type=int, default=None)
    sc.add_argument("--address", default="", help="Ray cluster (default: the one `tandem ray up` "
                    "recorded in TANDEM_DATA_DIR, else auto)")
    sc.add_argument("--namespace", default="tandem")


def ray_command(args: argparse.Namespace) -> int:
    from tandem import ray_up   # imports Ray only when it runs

    s = Settings.from_env()
    no_ray = importlib.util.find_spec("ray") is None   # not imported here: `ray scale` sets its auth mode first
    if args.ray_command == "scale":
        return _needs_ray() if no_ray else ray_up.scale(args.address, args.namespace, s.data_dir,
                                                        args.prefill, args.decode)
    if args.worker_gpus and s.device == "cpu" and args.device == "cpu":
        args.device = "cuda"
    env = {k: v for k, v in os.environ.items() if k.startswith("TANDEM_")
           and k not in ("TANDEM_REDIS_URL", "TANDEM_WORKER_SECRET")}
    env.update(TANDEM_DEVICE=args.device, TANDEM_DRAIN_TIMEOUT_S=str(s.drain_timeout_s))
    from tandem.up import UpConfig

    up = UpConfig(host=args.host, port=args.port, model=args.model, dtype=args.dtype, redis_url=s.redis_url,
                  data_dir=s.data_dir, worker_secret=s.worker_secret or secrets.token_urlsafe(32))
    try:
        cfg = ray_up.RayUpConfig(up=up, address=args.address, namespace=args.namespace,
                                 prefill=args.prefill, decode=args.decode, num_cpus=args.num_cpus,
                                 num_gpus=args.num_gpus, worker_cpus=args.worker_cpus,
                                 worker_gpus=args.worker_gpus, max_restarts=args.max_restarts,
                                 drain_timeout_s=s.drain_timeout_s, env=env)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _needs_ray() if no_ray else ray_up.run(cfg)


def _needs_ray() -> int:
    print("error: Ray mode needs Ray: pip install 'tandem[ray]'", file=sys.stderr)
    return 2


def bench_command(args: argparse.Namespace) -> int:
    from tandem.bench.cli import run

    return run(args)


def gateway_command(args: argparse.Namespace) -> int:
    from gateway.main import build_app, server

    s = Settings.from_env()
    if not s.redis_url:
        print("error: tandem gateway needs TANDEM_REDIS_URL (tandem up starts one for you)", file=sys.stderr)
        return 2
    server(build_app(s, model=args.model), args.host, args.port).run()
    return 0


def worker_command(args: argparse.Namespace) -> int:
    from services.worker import WorkerConfig

    s = Settings.from_env()
    if not s.worker_secret and not s.insecure_workers:
        print(f"error: tandem {args.command} needs TANDEM_WORKER_SECRET (the gateway and the other "
              "workers send it; `tandem up` generates one), or TANDEM_INSECURE_WORKERS=1 to serve "
              "gRPC to anyone who can reach it", file=sys.stderr)
        return 2
    if not s.worker_secret:
        logging.getLogger(__name__).warning("TANDEM_INSECURE_WORKERS: this worker answers gRPC from anyone who "
                                            "can reach it")
    try:
        engine = engine_config(args)
    except ValueError as e:
        print(f"error: tandem {args.command}: {e}", file=sys.stderr)
        return 2
    config = WorkerConfig(role=args.command, engine=engine, host=args.host, port=args.port,
                          advertise_host=args.advertise_host, redis_url=s.redis_url,
                          worker_id=args.worker_id, test_hooks=s.test_hooks,
                          kv_timeout_s=getattr(args, "kv_timeout", s.kv_timeout_s),
                          request_timeout_s=s.request_timeout_s, held_kv_ttl_s=s.held_kv_ttl_s,
                          max_held_kv_bytes=s.max_held_kv_bytes, heartbeat_ttl_s=s.heartbeat_ttl_s,
                          metrics_port=args.metrics_port, engine_stall_s=s.engine_stall_s,
                          drain_timeout_s=s.drain_timeout_s, shared_threads=s.shared_threads,
                          max_step_failures=s.max_step_failures, secret=s.worker_secret)
    if args.command == "prefill":
        from services.prefill.main import serve

        return serve(config, s.cache_dir)
    else:  # decode, or colocated (a decode worker that also prefills)
        from services.decode.main import serve

        return serve(config, s.cache_dir, kv_port=getattr(args, "kv_port", 0))


def generate(args: argparse.Namespace) -> int:
    from services.engine import InvalidRequestError, LLMEngine, SamplingParams

    try:
        config = engine_config(args)
    except ValueError as e:
        print(f"error: tandem generate: {e}", file=sys.stderr)
        return 2
    engine = LLMEngine(config, Settings.from_env().cache_dir)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, stop=tuple(args.stop))
    try:
        prompt = engine.chat_prompt(args.prompt, system=args.system)
        engine.add_request(uuid.uuid4().hex, prompt, params)
    except InvalidRequestError as e:
        print(f"error: {e.field}: {e.message}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    while engine.has_unfinished():
        for out in engine.step():
            sys.stdout.write(out.text)
            sys.stdout.flush()
            if out.finished:
                final = out
    elapsed = time.perf_counter() - start
    decode = final.decode_time_arr
    print(f"\n\n[finish_reason={final.finish_reason} prompt_tokens={final.prompt_tokens} "
          f"completion_tokens={final.completion_tokens} prefill_time={final.prefill_time:.3f}s "
          f"decode_tokens={len(decode)} mean_decode_time={sum(decode) / max(len(decode), 1):.4f}s "
          f"total={elapsed:.2f}s]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
