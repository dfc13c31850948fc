"""Loading: GGUF conversion details and Hugging Face-style directories (untied embeddings too)."""

import numpy as np
import pytest
import torch

from services.engine import EngineConfig, LLMEngine, SamplingParams
from services.engine.checkpoint import _unpermute, convert_gguf_cached, default_model_path
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
