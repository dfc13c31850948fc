"""How close a lower-precision engine is to float32: greedy agreement and perplexity.

- **Greedy agreement**: the shipped chat prompts (``examples/`` and the engine tests' questions),
  greedy, ``--max-tokens`` each; per prompt, the share of the fp32 answer's tokens that the other
  mode reproduces before its first different token (1.0 = identical), and how many answers are
  identical.
- **Perplexity** of a fixed text (``benchmarks/data/gettysburg.txt``, public domain, ~330 tokens)
  in one teacher-forced prefill, and its difference from fp32.

Modes: ``float32`` (the reference), ``bfloat16``, ``int4`` (bf16 activations, 4-bit weights),
``int4-fused`` (``int4`` with ``rms_norm="fused"``).
A mode whose dtype is not native on this CPU is reported as skipped. Bounds on these numbers are
kept in ``tests/services/engine/test_quality.py``::

    python -m benchmarks.engine_quality [--modes bfloat16,int4] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from services.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from services.engine.attention import AttentionMetadata, PrefillSpan  # noqa: E402
from services.engine.cpu import DtypeNotNativeError  # noqa: E402
from services.engine.kv_cache import KVCache  # noqa: E402

TEXT = Path(__file__).resolve().parent / "data" / "gettysburg.txt"
PROMPTS = [   # examples/ and tests/services/engine/test_engine.py
    "What is the capital of France?", "Say hello.", "Count to five.", "Name three colors.",
    "What's the weather in San Francisco in Celsius?", "Give me facts about Paris as JSON.",
    "My name is Ada. Please remember it.", "What is 2+2?", "Write a haiku about the sea.",
    "What is the largest planet in the solar system?", "Give me a synonym for happy.",
    "How many legs does a spider have?", "Explain photosynthesis in one sentence.",
    "What is the boiling point of water in Celsius?", "Translate 'thank you' into French.",
    "List two programming languages.", "What color is the sky on a clear day?",
    "Who wrote Romeo and Juliet?", "What is the opposite of cold?", "Describe a cat in five words.",
]
MODES = {"float32": {"dtype": "float32"}, "bfloat16": {"dtype": "bfloat16"},
         "int4": {"dtype": "bfloat16", "weights": "int4"},
         "int4-fused": {"dtype": "bfloat16", "weights": "int4", "rms_norm": "fused"}}


def load(mode: str, cache_dir: Path) -> LLMEngine:
    return LLMEngine(EngineConfig(kv_cache_bytes=128 << 20, **MODES[mode]), cache_dir)


def greedy(eng: LLMEngine, prompts: list[str], max_tokens: int) -> list[list[int]]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    return [c.token_ids for c in eng.generate([eng.chat_prompt(p) for p in prompts], params)]


def agreement(ref: list[list[int]], other: list[list[int]]) -> tuple[float, int]:
    """Mean share of each reference answer reproduced before the first difference; identical answers."""
    shares = []
    for a, b in zip(ref, other):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        shares.append(1.0 if a == b else n / max(len(a), 1))
    return statistics.mean(shares), sum(a == b for a, b in zip(ref, other))


@torch.inference_mode()
def perplexity(eng: LLMEngine, ids: list[int]) -> float:
    """exp(mean next-token cross-entropy) of ``ids``, one prefill into a private KV cache."""
    n, bs = len(ids), eng.config.block_size
    cache = KVCache(eng.model_config, -(-n // bs), bs, eng.config.torch_dtype)
    meta = AttentionMetadata(torch.arange(n), bs, (), (PrefillSpan(0, n, n, None),))
    hidden = eng.model(torch.tensor(ids), torch.arange(n), cache, meta)
    logits = eng.model.logits(hidden[:-1])
    return math.exp(float(F.cross_entropy(logits, torch.tensor(ids[1:]))))


def text_ids(eng: LLMEngine) -> list[int]:
    return eng.tokenizer.encode(TEXT.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="bfloat16,int4,int4-fused")
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    from tandem.settings import Settings
    cache = Settings.from_env().cache_dir
    ref = load("float32", cache)
    ids = text_ids(ref)
    ref_ppl, ref_out = perplexity(ref, ids), greedy(ref, PROMPTS, args.max_tokens)
    print(f"float32: perplexity {ref_ppl:.3f} over {len(ids)} tokens; {len(PROMPTS)} prompts × "
          f"{args.max_tokens} tokens ({ref.cpu.summary})")
    del ref
    for mode in args.modes.split(","):
        try:
            eng = load(mode, cache)
        except DtypeNotNativeError as e:
            print(f"{mode}: skipped ({e})")
            continue
        ppl = perplexity(eng, ids)
        share, same = agreement(ref_out, greedy(eng, PROMPTS, args.max_tokens))
        print(f"{mode}: perplexity {ppl:.3f} ({100 * (ppl / ref_ppl - 1):+.2f}% vs fp32); greedy "
              f"agreement {100 * share:.1f}% of tokens before the first difference, "
              f"{same}/{len(PROMPTS)} answers identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
