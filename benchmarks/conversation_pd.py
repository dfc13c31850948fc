"""A multi-turn conversation through the P/D stack, prefix caching on vs off, side by side.

One ``tandem up`` at a time (``TANDEM_PREFIX_CACHING`` true, then false, alternating over rounds),
each driven through the same conversation with ``previous_response_id``: the first turn carries
a long passage, later turns ask short questions, so the history reaches about ``--history``
tokens by the last turn. Per turn it records the gateway's ``prefill_time`` (TTFT, arrival to
first token), ``cached_tokens``, and the KV bytes the decode worker pulled
(``x-tandem-kv-bytes``). Greedy, fixed lengths: both sides see the same tokens.

    python -m benchmarks.conversation_pd --turns 10 --rounds 2 --json OUT.json

Prints the last turn's TTFT and KV-bytes ratios (on / off), with the machine's facts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_runs import LONG_TEXT  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.serving_experiments import Deployment, running  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
QUESTIONS = ["Who is it about?", "Where does it happen?", "Name one detail.", "Is it sad?",
             "What comes next?", "Give it a title.", "Who would enjoy it?", "Summarize it.",
             "Any numbers in it?", "One word for it?"]


def conversation(base_url: str, turns: int, history_chars: int) -> list[dict]:
    """Run the conversation; one row per turn."""
    rows, previous = [], None
    with httpx.Client(base_url=base_url, timeout=600) as http:
        for i in range(turns):
            text = QUESTIONS[i % len(QUESTIONS)]
            if i == 0:
                text = f"Read this:\n{(LONG_TEXT * 20)[:history_chars]}\n\n{text}"
            body = {"model": MODEL, "input": text, "temperature": 0, "max_output_tokens": 24,
                    "ignore_eos": True, **({"previous_response_id": previous} if previous else {})}
            r = http.post("/responses", json=body)
            r.raise_for_status()
            usage, previous = r.json()["usage"], r.json()["id"]
            rows.append({"turn": i + 1, "input_tokens": usage["input_tokens"],
                         "cached_tokens": usage["input_tokens_details"]["cached_tokens"],
                         "ttft_s": usage["prefill_time"],
                         "kv_bytes": int(r.headers["x-tandem-kv-bytes"])})
    return rows


def deployment(caching: bool, port: int) -> Deployment:
    env = f"TANDEM_PREFIX_CACHING={str(caching).lower()} TANDEM_KV_CACHE_GB=0.5 TANDEM_DEBUG_HEADERS=1"
    return Deployment(f"caching-{'on' if caching else 'off'}", f"http://127.0.0.1:{port}/v1",
                      f"env {env} {sys.executable} -m tandem.cli up --port {port}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--history-chars", type=int, default=6200, help="length of the first turn's passage")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--log-dir", type=Path, default=Path("bench-results") / "conversation-pd")
    args = ap.parse_args(argv)
    runs: dict[str, list[list[dict]]] = {"caching-on": [], "caching-off": []}
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for caching in order:
            dep = deployment(caching, 8760 + caching)
            with running(dep, 600, args.log_dir / f"{dep.name}.log"):
                runs[dep.name].append(conversation(dep.url, args.turns, args.history_chars))
    report = summarize(runs)
    print(json.dumps({"machine": machine_info(), **report["last_turn"]}, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine_info(), "runs": runs, **report}, indent=2))
    return 0


def summarize(runs: dict[str, list[list[dict]]]) -> dict:
    """Median over rounds of each turn's numbers, and the last turn's on/off ratios."""
    per_turn = {name: [{key: statistics.median(rnd[t][key] for rnd in rounds)
                        for key in rounds[0][t]} for t in range(len(rounds[0]))]
                for name, rounds in runs.items()}
    on, off = per_turn["caching-on"][-1], per_turn["caching-off"][-1]
    for name, turns in per_turn.items():
        print(f"== {name}")
        for row in turns:
            print("  turn {turn:>2.0f}: {input_tokens:>5.0f} input, {cached_tokens:>5.0f} cached, "
                  "TTFT {ttft_s:.3f} s, KV {kv_bytes:>9.0f} B".format(**row))
    return {"per_turn": per_turn, "last_turn": {
        "input_tokens": on["input_tokens"], "cached_tokens": on["cached_tokens"],
        "ttft_on_s": on["ttft_s"], "ttft_off_s": off["ttft_s"], "ttft_ratio": on["ttft_s"] / off["ttft_s"],
        "kv_bytes_on": on["kv_bytes"], "kv_bytes_off": off["kv_bytes"],
        "kv_bytes_ratio": on["kv_bytes"] / off["kv_bytes"]}}


if __name__ == "__main__":
    os.environ.setdefault("TANDEM_KV_CACHE_GB", "0.5")
    raise SystemExit(main())
