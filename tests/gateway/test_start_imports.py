"""The gateway builds its app without importing torch, transformers or the MCP SDK.

Under ``tandem up`` the gateway starts beside both workers on the same cores; those imports
(~1.5 s, ~2.5 s and ~0.7 s of CPU) slowed every worker's start. The MCP SDK loads on the first
MCP listing or call (gateway/tools/mcp.py ``sdk()``), transformers only where xgrammar needs it.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "mcp", "numpy")


def test_building_the_gateway_app_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from gateway.main import build_app\n"
        "import gateway.responses.tool_loop\n"
        "from tandem.settings import Settings\n"
        "s = Settings.from_env().model_copy(update={'redis_url': 'redis://127.0.0.1:1/0'})\n"
        "app = build_app(s)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
