"""Prefix caching: what it saves on a conversation, and what it costs when nothing is shared.

Two engines with the same model and dtype, ``enable_prefix_caching`` on and off, loaded once and
run alternately so both see the same machine conditions:

1. **Conversation**: ``--turns`` (10) turns; each user turn is ``--turn-tokens`` (~130) tokens of
   text, each answer greedy with ``--max-tokens`` (24) tokens, so the last prompt carries a history
   of ~1,500 tokens. Each turn is one request, run on the uncached engine and then the cached one;
   the history is built from the answers (identical on both sides: the script checks). Printed per
   turn: prompt tokens, tokens computed (prompt − ``cached_tokens``), and TTFT (``prefill_time``:
   arrival to first token) on each side, in wall time and in this process's CPU time (the latter
   barely moves when other processes share the cores).
2. **Nothing shared**: ``--requests`` (24) prompts of random token ids (64–384 tokens, a distinct
   first token each), ``--max-tokens`` tokens each with ``ignore_eos``, all submitted at once;
   (prompt + output) tokens ÷ wall time (and ÷ this process's CPU time), ``--repeats`` (3) runs per side, alternating which side
   goes first, median kept.
   The cache only costs here (keying blocks, lookups, evictions once the cache has filled).

Run from the repository root (≈3 min on 2 cores)::

    python -m benchmarks.prefix_cache --json prefix_cache.json
    python -m benchmarks.prefix_cache --threads 1      # on a machine other work shares
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_runs import LONG_TEXT  # noqa: E402
from benchmarks.machine import CpuMeter, cache_dir, log  # noqa: E402
from services.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402

SYSTEM = "You are a careful reading assistant. Answer briefly, quoting the text where you can."


def one_turn(eng: LLMEngine, rid: str, prompt: list[int], params: SamplingParams) -> dict:
    """Run one request; TTFT in wall and in this process's CPU seconds (robust to a busy machine)."""
    eng.add_request(rid, prompt, params)
    tokens, first = [], None
    with CpuMeter() as meter:
        while first is None:
            first = next((o for o in eng.step() if o.request_id == rid), None)
    tokens += first.new_token_ids
    while eng.has_unfinished():
        tokens += [t for o in eng.step() for t in o.new_token_ids]
    return {"tokens": tokens, "computed": len(prompt) - first.cached_tokens,
            "ttft_s": first.prefill_time, "ttft_cpu_s": meter.own_cores * meter.wall}


def conversation(engines: dict[str, LLMEngine], turns: int, turn_tokens: int, max_tokens: int) -> list[dict]:
    """One row per turn: prompt length and, per engine, tokens computed and TTFT."""
    tok = engines["off"].tokenizer
    text = tok.encode(LONG_TEXT) * (1 + turns * turn_tokens // len(tok.encode(LONG_TEXT)))
    messages, rows = [{"role": "system", "content": SYSTEM}], []
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    for t in range(turns):
        passage = tok.decode(text[t * turn_tokens:(t + 1) * turn_tokens])
        messages.append({"role": "user", "content": f"Part {t + 1}:\n{passage}\nWhat does this part add?"})
        prompt = tok.apply_chat_template(messages)
        row = {"turn": t + 1, "prompt_tokens": len(prompt)}
        for name, eng in engines.items():
            row[name] = one_turn(eng, f"turn-{t}", prompt, params)
        if row["on"].pop("tokens") != row["off"]["tokens"]:
            raise SystemExit(f"turn {t + 1}: the cached engine answered differently")
        messages.append({"role": "assistant", "content": tok.decode(row["off"].pop("tokens"))})
        rows.append(row)
        on, off = row["on"], row["off"]
        log(f"turn {t + 1:2d}: {len(prompt):5d} prompt tokens | computed off {off['computed']:5d} on "
            f"{on['computed']:5d} | TTFT off {off['ttft_s'] * 1e3:7.1f} ms on {on['ttft_s'] * 1e3:7.1f} ms"
            f" | CPU off {off['ttft_cpu_s'] * 1e3:7.1f} ms on {on['ttft_cpu_s'] * 1e3:7.1f} ms")
    return rows


def random_prompts(n: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    firsts = rng.sample(range(1000, vocab), n)        # distinct first tokens: no block is shared
    return [[f] + [rng.randrange(1000, vocab) for _ in range(rng.randint(63, 383))] for f in firsts]


def throughput(eng: LLMEngine, prompts: list[list[int]], max_tokens: int, tag: str) -> dict:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    with CpuMeter() as meter:
        for i, p in enumerate(prompts):
            eng.add_request(f"{tag}-{i}", p, params)
        n_out = 0
        while eng.has_unfinished():
            n_out += sum(len(o.new_token_ids) for o in eng.step())
    total = n_out + sum(map(len, prompts))
    return {"tok_s": total / meter.wall, "tok_per_cpu_s": total / (meter.own_cores * meter.wall),
            "wall_s": meter.wall, "other_cores": meter.other_cores}


def nothing_shared(engines: dict[str, LLMEngine], n: int, max_tokens: int, repeats: int) -> dict:
    runs = {name: [] for name in engines}
    vocab = engines["off"].model_config.vocab_size
    for r in range(repeats):
        prompts = random_prompts(n, vocab, seed=r)
        for name in (("off", "on") if r % 2 == 0 else ("on", "off")):   # alternate who goes first
            eng = engines[name]
            runs[name].append(throughput(eng, prompts, max_tokens, f"rand-{r}"))
            run = runs[name][-1]
            log(f"nothing shared, run {r + 1} {name:>3}: {run['tok_s']:7.1f} tok/s, {run['tok_per_cpu_s']:7.1f} "
                f"tok per CPU-s (other load {run['other_cores']:.2f} cores)")
    median = {name: statistics.median(x["tok_s"] for x in v) for name, v in runs.items()}
    per_cpu = {name: statistics.median(x["tok_per_cpu_s"] for x in v) for name, v in runs.items()}
    return {"runs": runs, "median_tok_s": median, "on_over_off": median["on"] / median["off"],
            "median_tok_per_cpu_s": per_cpu, "on_over_off_cpu": per_cpu["on"] / per_cpu["off"],
            "stats_on_whole_run": vars(engines["on"].prefix_cache_stats())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--turn-tokens", type=int, default=130)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kv-cache-mb", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    engines = {name: LLMEngine(EngineConfig(dtype=args.dtype, kv_cache_bytes=args.kv_cache_mb << 20,
                                            max_num_seqs=16, num_threads=args.threads,
                                            enable_prefix_caching=name == "on"), cache_dir())
               for name in ("off", "on")}
    for eng in engines.values():     # the first forward pass of a process is slow: not measured
        eng.generate([[5000 + i for i in range(40)]], SamplingParams(max_tokens=4, temperature=0))
    t0 = time.perf_counter()
    conv = conversation(engines, args.turns, args.turn_tokens, args.max_tokens)
    last = conv[-1]
    ratio = last["off"]["ttft_s"] / last["on"]["ttft_s"]
    cpu_ratio = last["off"]["ttft_cpu_s"] / last["on"]["ttft_cpu_s"]
    log(f"last turn: {last['prompt_tokens']} prompt tokens; computed {last['off']['computed']} (off) vs "
        f"{last['on']['computed']} (on); TTFT off/on {ratio:.1f}x wall, {cpu_ratio:.1f}x CPU time")
    shared = nothing_shared(engines, args.requests, args.max_tokens, args.repeats)
    log(f"nothing shared: off {shared['median_tok_s']['off']:.1f} tok/s, on {shared['median_tok_s']['on']:.1f} "
        f"tok/s (on/off {shared['on_over_off']:.3f}; per CPU-s {shared['on_over_off_cpu']:.3f}); cache stats {shared['stats_on_whole_run']}")
    log(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "conversation": conv, "last_turn_ttft_ratio": ratio,
                                         "last_turn_ttft_cpu_ratio": cpu_ratio,
                                         "nothing_shared": shared}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
