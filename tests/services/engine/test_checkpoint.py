"""Loading: GGUF conversion details and Hugging Face-style directories (untied embeddings too)."""

import hashlib
import json
import os
import time

import numpy as np
import pytest
import torch

from services.engine import EngineConfig, LLMEngine, SamplingParams
from services.engine.checkpoint import (CONVERT_VERSION, _unpermute, convert_gguf_cached, default_model_path,
                                       gguf_content_key, prune_obsolete_conversions)
from tests.services import tiny_model


def llama_cpp_permute(w, n_head):
    """llama.cpp's conversion permutation, which the loader must undo."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.random.default_rng(0).standard_normal((3 * 64, 40)).astype(np.float32)
    np.testing.assert_array_equal(_unpermute(llama_cpp_permute(w, 3), 3), w)


@pytest.mark.slow
def test_gguf_conversion_is_cached(settings):
    first = convert_gguf_cached(default_model_path(), settings.cache_dir)
    assert (first / "model.safetensors").exists() and (first / "config.json").exists()
    assert convert_gguf_cached(default_model_path(), settings.cache_dir) == first
    assert json.loads((first / "source.json").read_text())["convert_version"] == CONVERT_VERSION


def test_cache_key_follows_the_file_not_its_path(tmp_path):
    data = bytearray(np.random.default_rng(0).integers(0, 256, 5 << 20, dtype=np.uint8).tobytes())
    models = tmp_path / "models"
    a, b = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(data)
    key = gguf_content_key(a, models)
    assert gguf_content_key(b, models) == key               # a second install shares the conversion
    keys, mtime = {key}, time.time()
    for change in (10, len(data) // 2, len(data) - 10):     # header, a middle tensor, the last one
        changed = bytearray(data)
        changed[change] ^= 1
        b.write_bytes(changed)
        mtime += 10                                         # a file changed in place has a new mtime
        os.utime(b, (mtime, mtime))
        keys.add(gguf_content_key(b, models))
    b.write_bytes(data + b"x")                              # size
    keys.add(gguf_content_key(b, models))
    assert len(keys) == 5
    memo = json.loads((models / ".content-keys.json").read_text())
    assert len(memo) == 2 and all(k.startswith((str(a), str(b))) for k in memo)   # one per file
    a.unlink()
    b.write_bytes(data)
    os.utime(b, (mtime + 10, mtime + 10))
    assert gguf_content_key(b, models) == key               # same bytes again: the first conversion
    assert [k.rsplit(":", 3)[0] for k in json.loads((models / ".content-keys.json").read_text())] == [str(b)]


def test_cache_key_is_read_back_without_hashing_again(tmp_path, monkeypatch):
    gguf, models = tmp_path / "m.gguf", tmp_path / "models"
    gguf.write_bytes(b"gguf bytes")
    key = gguf_content_key(gguf, models)
    monkeypatch.setattr(hashlib, "file_digest", lambda *a: pytest.fail("hashed again"))
    assert gguf_content_key(gguf, models) == key


def test_obsolete_conversions_are_pruned_and_current_ones_kept(tmp_path):
    def entry(name, source=None):
        d = tmp_path / name
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"\0" * 1000)
        if source is not None:
            (d / "source.json").write_text(json.dumps(source))
        return d

    current = entry("m-current", {"gguf": "/x/m.gguf", "convert_version": CONVERT_VERSION})
    legacy = entry("m-0123456789ab")                         # path-keyed, before source.json
    older = entry("m-older", {"convert_version": CONVERT_VERSION - 1})
    broken = entry("m-broken")
    (broken / "source.json").write_text("not json")
    stale, fresh = entry(".convert-dead"), entry(".convert-running")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    (tmp_path / "stray-file").write_text("left alone")

    removed = prune_obsolete_conversions(tmp_path)
    assert sorted(removed) == sorted([legacy, older, broken, stale])
    assert current.exists() and fresh.exists() and (tmp_path / "stray-file").exists()
    assert not any(d.exists() for d in removed)


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory):
    """A random-weight Llama with untied embeddings saved by transformers, with a tiny BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(vocab_size=tiny_model.save_tokenizer(out), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rope_theta=50000.0, tie_word_embeddings=False,
                         eos_token_id=2, bos_token_id=1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    return out, model


def test_hf_directory_with_untied_head_matches_transformers(tiny_hf_dir, tmp_path):
    path, reference = tiny_hf_dir
    engine = LLMEngine(EngineConfig(model=str(path), kv_cache_bytes=16 << 20), tmp_path)
    assert engine.model_config.tie_word_embeddings is False
    assert engine.max_model_len == 256 and engine.model_name == path.name
    prompt = engine.chat_prompt("hello there")
    [ours] = engine.generate([prompt], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    with torch.no_grad():
        ref = reference.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12,
                                 do_sample=False)[0, len(prompt):].tolist()
    assert ours.token_ids == ref


@pytest.mark.slow
def test_bf16_engine_answers_paris(settings):
    engine = LLMEngine(EngineConfig(dtype="bfloat16", kv_cache_bytes=64 << 20), settings.cache_dir)
    [c] = engine.generate([engine.chat_prompt("What is the capital of France?")],
                          SamplingParams(max_tokens=16, temperature=0))
    assert "Paris" in c.text
