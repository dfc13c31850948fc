import subprocess
import sys

import pytest



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
