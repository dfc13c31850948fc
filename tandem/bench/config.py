"""The configuration of one ``tandem bench`` run: frozen, validated when built, saved with the results.

``BenchConfig`` groups the server (URL, model, request fields), the load (``LoadConfig``: when
requests are sent), the workload (``WorkloadConfig``: what they ask for) and the SLOs for goodput.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DATASETS = ("random", "chat")


@dataclass(frozen=True)
class SLO:
    """Service-level objectives in seconds; ``None`` leaves that metric unconstrained."""

    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not value > 0:
                raise ValueError(f"SLO {name} must be > 0 seconds, got {value}")

    @classmethod
    def parse(cls, text: str) -> "SLO":
        """``"ttft=0.5,tpot=0.05,e2e=10"`` (seconds, any subset); ``""`` is no SLO."""
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            if not sep or name not in ("ttft", "tpot", "e2e"):
                raise ValueError(f"bad SLO {item!r}: expected ttft=S, tpot=S or e2e=S")
            values[name] = float(value)
        return cls(**values)

    @property
    def given(self) -> bool:
        return any(v is not None for v in asdict(self).values())


@dataclass(frozen=True)
class LoadConfig:
    """When requests are sent.

    Open loop: requests arrive at offsets with gamma-distributed gaps (mean ``1/request_rate``,
    shape ``burstiness``; 1 is Poisson); ``inf`` sends them all at once. ``concurrency`` caps the
    requests in flight; with an infinite rate that is a closed loop of ``concurrency`` users. The
    run stops after ``num_requests`` requests or when ``duration`` seconds have passed, whichever
    comes first (requests in flight then are awaited and counted).
    """

    request_rate: float = math.inf
    burstiness: float = 1.0
    concurrency: int | None = None
    num_requests: int | None = 100
    duration: float | None = None
    warmup: int = 0

    def __post_init__(self) -> None:
        if not self.request_rate > 0:
            raise ValueError(f"request_rate must be > 0 (or inf), got {self.request_rate}")
        if not (self.burstiness > 0 and math.isfinite(self.burstiness)):
            raise ValueError(f"burstiness must be a positive number, got {self.burstiness}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.num_requests is None and self.duration is None:
            raise ValueError("give num_requests or duration")
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"duration must be > 0 seconds, got {self.duration}")
        if self.num_requests is None and math.isinf(self.request_rate) and self.concurrency is None:
            raise ValueError("a duration with an infinite request rate needs a concurrency")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")

    @property
    def closed_loop(self) -> bool:
        return self.concurrency is not None and math.isinf(self.request_rate)


@dataclass(frozen=True)
class WorkloadConfig:
    """What requests ask for.

    ``random``: prompts of random real words, about ``input_len`` tokens of prompt text (the chat
    template adds more; the server's ``usage.prompt_tokens`` is reported as the truth) and
    ``max_tokens`` of about ``output_len``; both lengths uniform in ``[len*(1-r), len*(1+r)]``.
    ``calibrate`` first measures the server's tokens per word with two probe requests.
    ``chat``: the shipped everyday prompts (or ``dataset_path``, JSONL of ``{"prompt": ...}``), in
    a seeded random order, with ``max_tokens`` of ``output_len``.
    """

    dataset: str = "random"
    input_len: int = 256
    output_len: int = 128
    range_ratio: float = 0.0
    dataset_path: Path | None = None
    calibrate: bool = True

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.input_len < 1 or self.output_len < 1:
            raise ValueError("input_len and output_len must be >= 1")
        if not 0 <= self.range_ratio < 1:
            raise ValueError(f"range_ratio must be in [0, 1), got {self.range_ratio}")
        if self.dataset_path is not None and self.dataset != "chat":
            raise ValueError("dataset_path is only for the chat dataset")


@dataclass(frozen=True)
class BenchConfig:
    """One run. ``base_url`` ends where the OpenAI SDK's does (``http://host:8000/v1``)."""

    base_url: str
    model: str
    load: LoadConfig = LoadConfig()
    workload: WorkloadConfig = WorkloadConfig()
    slo: SLO = SLO()
    seed: int = 0
    ignore_eos: bool = True
    temperature: float | None = 0.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 600.0
    api_key: str | None = field(default=None, repr=False)
    result_json: Path = Path("bench-results/result.json")
    plot_dir: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if not isinstance(self.extra_body, dict):
            raise ValueError("extra_body must be a JSON object")
        reserved = {"model", "messages", "stream", "stream_options", "max_tokens"} & set(self.extra_body)
        if reserved:
            raise ValueError(f"extra_body may not set {sorted(reserved)}: the bench sets them")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the API key."""
        d = asdict(self)
        del d["api_key"]
        return _jsonable(d)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value
