"""Linear-layer kernels on this CPU: fp32, bf16 and lower-precision weights, at decode shapes.

For SmolLM2-135M's weight shapes (qkv 576→960, o 576→576, gate_up 576→3072, down 1536→576,
head 576→49152) and ``M`` rows, the median time of:

- ``fp32``: ``F.linear`` in float32 (the engine's default);
- ``bf16``: ``F.linear`` in bfloat16 (native only with avx512_bf16 / amx_bf16);
- ``int8wo-fp32`` / ``int8wo-bf16``: ``torch._weight_int8pack_mm`` (int8 weights, per-row scale);
- ``int8dyn``: ``torch.ao`` dynamic quantized linear (int8 weights and activations; fbgemm/onednn,
  VNNI where the CPU has it);
- ``int4wo-bf16``: ``torch._weight_int4pack_mm_for_cpu`` (4-bit weights, group 32).

Each kernel's time for one whole model step (30 layers + head) is printed as a ratio to fp32, so a
lower-precision mode is kept only where it is measured faster on the CPU at hand::

    python -m benchmarks.engine_kernels [--rows 1,32] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from services.engine.cpu import CpuFeatures  # noqa: E402

SHAPES = {"qkv": (960, 576, 30), "o": (576, 576, 30), "gate_up": (3072, 576, 30),
          "down": (576, 1536, 30), "head": (49152, 576, 1)}   # (out, in, times per step)


def timed(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def kernels(w: torch.Tensor) -> dict:
    """name → (function of x_fp32 → output, input dtype) for one fp32 weight ``w: [out, in]``."""
    out: dict = {"fp32": (lambda x: F.linear(x, w), torch.float32)}
    wb = w.to(torch.bfloat16)
    out["bf16"] = (lambda x: F.linear(x, wb), torch.bfloat16)
    scale = w.abs().amax(1).clamp(min=1e-8) / 127
    w8 = torch.round(w / scale[:, None]).to(torch.int8)
    for name, dt in (("int8wo-fp32", torch.float32), ("int8wo-bf16", torch.bfloat16)):
        s = scale.to(dt)
        out[name] = (lambda x, s=s: torch._weight_int8pack_mm(x, w8, s), dt)
    try:
        from torch.ao.nn.quantized.dynamic import Linear as DynLinear
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight.data.copy_(w)
        q = DynLinear(w.shape[1], w.shape[0], bias_=False, dtype=torch.qint8)
        q.set_weight_bias(torch.quantize_per_channel(w, scale.double(), torch.zeros(w.shape[0], dtype=torch.long),
                                                     0, torch.qint8), None)
        out["int8dyn"] = (q, torch.float32)
    except Exception as e:  # noqa: BLE001 - the engine does not depend on torch.ao; report and go on
        print(f"# int8dyn unavailable: {e}")
    try:
        group = 32
        wg = w.view(w.shape[0], -1, group)
        lo, hi = wg.amin(-1), wg.amax(-1)
        sc = ((hi - lo) / 15).clamp(min=1e-8)
        qw = torch.round((wg - lo[..., None]) / sc[..., None]).clamp(0, 15).to(torch.int32).view(w.shape)
        packed = torch._convert_weight_to_int4pack_for_cpu(qw, 1)
        zeros = lo + 8 * sc      # the kernel computes (q - 8) * scale + zero
        sz = torch.stack([sc, zeros], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
        out["int4wo-bf16"] = (lambda x: torch._weight_int4pack_mm_for_cpu(x, packed, group, sz), torch.bfloat16)
    except Exception as e:  # noqa: BLE001
        print(f"# int4wo unavailable: {e}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {CpuFeatures.detect().summary}; threads {args.threads}; torch {torch.__version__}")
    gen = torch.Generator().manual_seed(0)
    weights = {n: torch.randn(o, i, generator=gen) * 0.05 for n, (o, i, _) in SHAPES.items()}
    fns = {n: kernels(w) for n, w in weights.items()}
    with torch.inference_mode():
        for m in (int(r) for r in args.rows.split(",")):
            step: dict[str, float] = {}
            for n, (o, i, times) in SHAPES.items():
                x = torch.randn(m, i, generator=gen)
                ref = F.linear(x, weights[n])
                cells = []
                for k, (fn, dt) in fns[n].items():
                    xk = x.to(dt)
                    sec = timed(lambda: fn(xk), args.reps)
                    err = float((fn(xk).float() - ref).abs().max() / ref.abs().max())
                    step[k] = step.get(k, 0.0) + sec * times
                    cells.append(f"{k} {1e6 * sec:8.1f}us (rel err {err:.0e})")
                print(f"M={m:<3d} {n:8s} " + "  ".join(cells), flush=True)
            base = step["fp32"]
            print(f"M={m:<3d} one step (30 layers + head): " + "  ".join(
                f"{k} {1e3 * v:.1f} ms = {base / v:.2f}× fp32" for k, v in step.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
