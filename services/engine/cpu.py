"""What the CPU can do, and which dtypes the engine allows on it.

A dtype is *native* on a CPU when its matmuls run on dedicated instructions: bf16 needs
``avx512_bf16`` or ``amx_bf16``, fp16 needs ``avx512_fp16`` or ``amx_fp16``. Without them torch
emulates the type by converting to fp32 and back, which measured 5× worse TTFT and 0.56× the
throughput of fp32 on an AVX2-only machine (issue #17). So the rule is: **float32 everywhere
(the default); a 16-bit dtype only where it is native — otherwise the engine refuses to start**
with an error that names the setting and the missing flags (``DtypeNotNativeError``). GPUs are not
checked here.

Flags come from ``/proc/cpuinfo`` (Linux); torch's own view (``get_cpu_capability()``: "AVX2",
"AVX512", …) is recorded next to them for the logs. ``choose`` is a pure function of the flags so
tests can run it for any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DTYPES

NATIVE_FLAGS = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}


class DtypeNotNativeError(ValueError):
    """A 16-bit dtype was asked for on a CPU that would emulate it (slower than float32)."""


@dataclass(frozen=True)
class CpuFeatures:
    flags: frozenset[str]
    capability: str = ""          # torch.backends.cpu.get_cpu_capability(), e.g. "AVX512"

    @classmethod
    def detect(cls, cpuinfo: Path = Path("/proc/cpuinfo")) -> "CpuFeatures":
        flags: frozenset[str] = frozenset()
        try:
            for line in cpuinfo.read_text().splitlines():
                if line.startswith(("flags", "Features")):
                    flags = frozenset(line.split(":", 1)[1].split())
                    break
        except OSError:
            pass
        return cls(flags, torch.backends.cpu.get_cpu_capability())

    def native(self, dtype: str) -> bool:
        """True for float32, and for a 16-bit dtype whose matmul instructions this CPU has."""
        return dtype == "float32" or any(f in self.flags for f in NATIVE_FLAGS[dtype])

    @property
    def summary(self) -> str:
        keep = sorted(f for f in self.flags if f.startswith(("avx", "amx")))
        return f"torch capability {self.capability or '?'}; flags {' '.join(keep) or 'none'}"


def check(dtype: str, weights: str, device: str, features: CpuFeatures) -> None:
    """Raise ``DtypeNotNativeError`` unless ``dtype`` (and ``weights``) run natively here.

    ``weights="int4"`` multiplies bf16 activations by 4-bit weights
    (``torch._weight_int4pack_mm_for_cpu``); without native bf16 that kernel ran 7–77× slower
    than fp32 (issue #17), so it needs the same flags as bf16.
    """
    if not device.startswith("cpu"):
        return
    dtype = str(DTYPES[dtype]).removeprefix("torch.")
    for asked, what, setting in (("bfloat16" if weights == "int4" else "float32", "int4 weights",
                                  "TANDEM_WEIGHTS=dense (the default)"),
                                 (dtype, f"dtype {dtype}", "TANDEM_DTYPE=float32 (the default)")):
        if not features.native(asked):
            need = " or ".join(NATIVE_FLAGS[asked])
            raise DtypeNotNativeError(
                f"{what} is not native on this CPU (needs {need}; {features.summary}): torch would "
                f"emulate it, slower than float32. Use {setting}.")
