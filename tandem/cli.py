"""The ``tandem`` command line: ``tandem generate`` runs the engine in-process.

``tandem up``, ``gateway``, ``prefill``, ``decode`` and ``bench`` arrive with the serving issues.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid

from tandem.settings import Settings


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return generate(args)


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    s = Settings.from_env()
    p.add_argument("--model", default=s.model, help="GGUF file or HF-style directory")
    p.add_argument("--dtype", default=s.dtype)
    p.add_argument("--device", default=s.device)


def engine_config(args: argparse.Namespace):
    from services.engine import EngineConfig

    s = Settings.from_env()
    return EngineConfig(model=args.model, dtype=args.dtype, device=args.device,
                        kv_cache_bytes=int(s.kv_cache_gb * (1 << 30)), num_threads=s.num_threads)


def generate(args: argparse.Namespace) -> int:
    from services.engine import InvalidRequestError, LLMEngine, SamplingParams

    engine = LLMEngine(engine_config(args), Settings.from_env().cache_dir)
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
