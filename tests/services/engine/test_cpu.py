"""The dtype/kernel choice follows the CPU's flags (cpu.py), for given flag sets and on this machine."""

import pytest

from services.engine import EngineConfig, LLMEngine
from services.engine.cpu import CpuFeatures, DtypeNotNativeError, check

AVX2_ONLY = CpuFeatures(frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"}), "AVX2")
AVX512_NO_BF16 = CpuFeatures(AVX2_ONLY.flags | {"avx512f", "avx512bw", "avx512_vnni"}, "AVX512")
AVX512_BF16 = CpuFeatures(AVX512_NO_BF16.flags | {"avx512_bf16"}, "AVX512")
AMX = CpuFeatures(AVX512_NO_BF16.flags | {"amx_bf16", "amx_tile", "amx_int8"}, "AVX512")
SAPPHIRE = CpuFeatures(AVX512_BF16.flags | AMX.flags | {"avx512_fp16"}, "AVX512")


@pytest.mark.parametrize("features", [AVX2_ONLY, AVX512_NO_BF16, AVX512_BF16, AMX, SAPPHIRE])
def test_float32_dense_runs_everywhere(features):
    check("float32", "dense", "cpu", features)


@pytest.mark.parametrize("features, native", [(AVX2_ONLY, False), (AVX512_NO_BF16, False),
                                              (AVX512_BF16, True), (AMX, True), (SAPPHIRE, True)])
@pytest.mark.parametrize("dtype, weights", [("bfloat16", "dense"), ("bf16", "dense"), ("bfloat16", "int4")])
def test_bf16_and_int4_only_where_bf16_is_native(features, native, dtype, weights):
    if native:
        check(dtype, weights, "cpu", features)
    else:
        with pytest.raises(DtypeNotNativeError, match="avx512_bf16 or amx_bf16") as e:
            check(dtype, weights, "cpu", features)
        assert ("TANDEM_WEIGHTS" if weights == "int4" else "TANDEM_DTYPE") in str(e.value)


def test_float16_needs_avx512_fp16_or_amx_fp16():
    with pytest.raises(DtypeNotNativeError, match="avx512_fp16"):
        check("float16", "dense", "cpu", AMX)
    check("float16", "dense", "cpu", SAPPHIRE)


def test_gpus_are_not_checked_against_the_cpu():
    check("bfloat16", "dense", "cuda:0", AVX2_ONLY)


def test_int4_needs_bfloat16_on_the_cpu():
    with pytest.raises(ValueError, match="dtype=bfloat16"):
        EngineConfig(dtype="float32", weights="int4")
    with pytest.raises(ValueError, match="weights must be one of"):
        EngineConfig(weights="int8")


def test_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx avx2 avx512f amx_bf16\n\nprocessor\t: 1\n")
    f = CpuFeatures.detect(info)
    assert {"avx2", "amx_bf16"} <= f.flags and f.native("bfloat16") and f.capability
    assert CpuFeatures.detect(tmp_path / "missing").flags == frozenset()


def test_this_machine_starts_bf16_exactly_when_its_cpu_has_it(settings, tiny_model_dir):
    here = CpuFeatures.detect()
    config = EngineConfig(model=str(tiny_model_dir), dtype="bfloat16", kv_cache_bytes=1 << 20)
    if here.native("bfloat16"):
        assert LLMEngine(config, settings.cache_dir).model.embed.dtype.is_floating_point
    else:
        with pytest.raises(DtypeNotNativeError):
            LLMEngine(config, settings.cache_dir)
