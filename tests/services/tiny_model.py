"""A tiny random-weight Llama and a tiny byte-level BPE tokenizer, built in a temporary directory.

For CPU tests of code around the model (detokenizer, servers): the directory has what
``LLMEngine`` loads — ``config.json``, ``model.safetensors`` and tokenizer files with a chat
template — so nothing is faked, but the model loads in milliseconds and its outputs are noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

EOS = "<|endoftext|>"
CORPUS = ["Hello world, this is a tiny tokenizer.", "Stop here. The end is near; STOP now.",
          "naïve café déjà vu", "the quick brown fox jumps over the lazy dog"] * 4
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def save_tokenizer(out_dir: Path) -> int:
    """Train a byte-level BPE (every byte is a token, a few merges) into ``out_dir``; return its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return tok.get_vocab_size()


def save_model(out_dir: Path, vocab_size: int, seed: int = 0) -> None:
    """A 2-layer Llama (4 query heads sharing 2 KV heads of 8) with random weights, HF names."""
    from safetensors.torch import save_file

    hidden, inter, layers, heads, kv_heads = 32, 64, 2, 4, 2
    head_dim = hidden // heads
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g) * 0.1  # noqa: E731
    tensors = {"model.embed_tokens.weight": rand(vocab_size, hidden), "model.norm.weight": torch.ones(hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors |= {p + "input_layernorm.weight": torch.ones(hidden),
                    p + "post_attention_layernorm.weight": torch.ones(hidden),
                    p + "self_attn.q_proj.weight": rand(heads * head_dim, hidden),
                    p + "self_attn.k_proj.weight": rand(kv_heads * head_dim, hidden),
                    p + "self_attn.v_proj.weight": rand(kv_heads * head_dim, hidden),
                    p + "self_attn.o_proj.weight": rand(hidden, heads * head_dim),
                    p + "mlp.gate_proj.weight": rand(inter, hidden),
                    p + "mlp.up_proj.weight": rand(inter, hidden),
                    p + "mlp.down_proj.weight": rand(hidden, inter)}
    save_file(tensors, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps({
        "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 256,
        "tie_word_embeddings": True, "eos_token_id": 0}))   # EOS, the trainer's first special token


def build(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(out_dir, save_tokenizer(out_dir))
    return out_dir
