"""`tandem up` on a fresh cache converts the GGUF once, before the workers start (and drops an older
install's conversion), every start
says where its time went (the ≤ 10 s warm-start goal is measured, not asserted: docs), and each
worker then commits its KV cache's memory."""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e.conftest import start_up, stop_up

pytestmark = pytest.mark.slow


def test_a_fresh_cache_converts_once_and_starts_say_where_time_went(tmp_path):
    env = {"TANDEM_CACHE_DIR": str(tmp_path / "cache")}
    legacy = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct.Q4_1-0123456789ab"   # an older install's
    legacy.mkdir(parents=True)
    (legacy / "model.safetensors").write_bytes(b"\0" * 1000)
    for start in ("cold", "warm"):
        stack = start_up(tmp_path / start, extra_env=env)
        try:
            deadline = time.monotonic() + 10      # the timing line follows the ready line
            while "tandem up: ready in" not in "".join(stack.lines) and time.monotonic() < deadline:
                time.sleep(0.1)
            text = "".join(stack.lines)
            conversions = text.count("(first start only)")
            assert conversions == (1 if start == "cold" else 0), text[-3000:]
            assert not legacy.exists() and text.count("removed obsolete conversion") == (start == "cold")
            [entry] = [d for d in (tmp_path / "cache" / "models").iterdir() if d.is_dir()]
            assert (entry / "source.json").exists()
            assert (tmp_path / "cache" / "models" / ".content-keys.json").exists()
            ready = re.search(r"tandem up: ready in ([\d.]+) s \(redis [\d.]+ s, model files [\d.]+ s, "
                              r"workers and gateway [\d.]+ s\)", text)
            assert ready, text[-3000:]
            assert text.count(" ready after ") == 2          # each worker's own line
            deadline = time.monotonic() + 30      # then each commits its KV cache's memory
            while "".join(stack.lines).count("KV cache memory committed") < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "".join(stack.lines).count("KV cache memory committed") == 2, "".join(stack.lines)[-3000:]
        finally:
            stop_up(stack)
