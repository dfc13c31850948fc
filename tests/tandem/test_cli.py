import subprocess
import sys

import pytest

from tandem.settings import Settings


def test_settings_read_typed_env(tmp_path):
    s = Settings.from_env({"TANDEM_CACHE_DIR": str(tmp_path), "TANDEM_KV_CACHE_GB": "0.5",
                           "TANDEM_DTYPE": "bfloat16", "TANDEM_HELD_KV_GB": "0.25"})
    assert s.cache_dir == tmp_path and s.kv_cache_gb == 0.5 and s.dtype == "bfloat16"
    assert s.held_kv_gb == 0.25 and Settings.from_env({}).held_kv_gb == 1


@pytest.mark.slow
def test_generate_streams_answer_and_prints_timings():
    r = subprocess.run([sys.executable, "-m", "tandem.cli", "generate", "What is the capital of France?",
                        "--max-tokens", "20"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "completion_tokens=" in r.stderr and "prefill_time=" in r.stderr


@pytest.mark.slow
def test_generate_rejects_bad_input_with_the_field_name():
    r = subprocess.run([sys.executable, "-m", "tandem.cli", "generate", "hi", "--top-p", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "top_p" in r.stderr
