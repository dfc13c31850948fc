"""One benchmark run: calibrate → warm up → measure → summarize.

Randomness comes from independent streams of ``config.seed`` (arrivals, measured requests, warm-up
requests, calibration probes), so two runs with one seed send the same requests on the same
schedule, whatever the warm-up count; that is what makes runs against two deployments comparable.
"""

from __future__ import annotations

import gc
import itertools
import logging
import sys
import time
from datetime import datetime, timezone

import numpy as np
from tqdm import tqdm

from .client import ChatClient, open_http
from .config import BenchConfig
from .load import arrival_offsets, dispatch
from .metrics import summarize
from .record import RequestRecord
from .result import BenchResult
from .workload import Calibration, WorkloadRequest, probe_word_counts, random_words, requests

log = logging.getLogger(__name__)

ARRIVALS, REQUESTS, WARMUP, PROBES = range(4)


async def run_bench(config: BenchConfig) -> BenchResult:
    """Run ``config`` against its server; failed requests are recorded, never raised."""
    async with open_http(config) as http:
        client = ChatClient(config, http)
        calibration = await calibrate(client, config) if _needs_calibration(config) else Calibration()
        warmup_failed = await warm_up(client, config, calibration)
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        records, duration = await measure(client, config, calibration)
    return BenchResult(config, calibration, summarize(records, duration, config.slo), tuple(records),
                       started_at, warmup_failed)


async def calibrate(client: ChatClient, config: BenchConfig) -> Calibration:
    """Fit the server's prompt tokens per word from two one-token probes (uncalibrated if they fail)."""
    rng = _rng(config.seed, PROBES)
    probes = []
    for words in probe_word_counts(config.workload):
        r = await client.send(WorkloadRequest(random_words(words, rng), max_tokens=1), index=-1,
                              start=time.perf_counter())
        if not r.success or r.prompt_tokens is None:
            log.warning("calibration probe failed (%s); assuming one token per word",
                        r.error or "no usage.prompt_tokens")
            return Calibration()
        probes.append((words, r.prompt_tokens))
    return Calibration.fit(*probes)


async def warm_up(client: ChatClient, config: BenchConfig, calibration: Calibration) -> int:
    """Send ``config.load.warmup`` requests at once (within the concurrency cap); return failures."""
    n = config.load.warmup
    if n == 0:
        return 0
    items = itertools.islice(requests(config.workload, calibration, _rng(config.seed, WARMUP)), n)

    async def send(req: WorkloadRequest, _: float) -> RequestRecord:
        return await client.send(req, index=-1, start=start)

    start = time.perf_counter()
    records = await dispatch(items, itertools.repeat(0.0), send, start=start,
                             concurrency=config.load.concurrency)
    return sum(not r.success for r in records)


async def measure(client: ChatClient, config: BenchConfig,
                  calibration: Calibration) -> tuple[list[RequestRecord], float]:
    """The measured requests, in send order, and the run's duration in seconds."""
    load = config.load
    items = enumerate(requests(config.workload, calibration, _rng(config.seed, REQUESTS)))
    if load.num_requests is not None:
        items = itertools.islice(items, load.num_requests)
    offsets = arrival_offsets(load.request_rate, load.burstiness, _rng(config.seed, ARRIVALS))
    bar = tqdm(total=load.num_requests, disable=not config.progress, file=sys.stderr, unit="req",
               desc="bench")
    failed = 0

    async def send(item: tuple[int, WorkloadRequest], scheduled_at: float) -> RequestRecord:
        nonlocal failed
        record = await client.send(item[1], index=item[0], start=start, scheduled_at=scheduled_at)
        failed += not record.success
        bar.set_postfix(failed=failed, refresh=False)
        bar.update(1)
        return record

    gc.collect()
    gc.freeze()         # as vLLM does: no collector pauses over the setup's objects while timing
    start = time.perf_counter()
    try:
        records = await dispatch(items, offsets, send, start=start, concurrency=load.concurrency,
                                 duration=load.duration)
        duration = time.perf_counter() - start
    finally:
        bar.close()
        gc.unfreeze()
    return records, duration


def _needs_calibration(config: BenchConfig) -> bool:
    return config.workload.dataset == "random" and config.workload.calibrate


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])
