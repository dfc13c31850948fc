"""Every script in examples/ runs against the test stack and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXPECT = {   # a line each script must print
    "example_01_basic_chat.py": "status ",
    "example_02_streaming_chat.py": "response.output_text.delta",
    "example_03_multi_turn_conversation.py": "of them from the cache",
    "example_04_json_mode.py": "City {",
    "example_05_tool_calling.py": "model called get_weather(",
    "example_06_chat_mindie_timings.py": "decode timings for",
    "example_07_streaming_tool_calls.py": "get_current_weather {",
    "example_08_mcp_tools.py": "called get_weather(",
}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("example_*.py")) == sorted(EXPECT)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example_runs(stack, name):
    r = subprocess.run([sys.executable, str(EXAMPLES / name), "--base-url", stack.base_url],
                       capture_output=True, text=True, timeout=300, cwd=EXAMPLES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert EXPECT[name] in r.stdout, r.stdout
