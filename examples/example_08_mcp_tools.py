"""08: remote MCP tools: the gateway lists a server's tools, the model calls one, the gateway runs
it on the server and the model answers with its result — all in one streamed response.

The MCP server here is a tiny one started by this script (the `mcp` SDK, Streamable HTTP on
127.0.0.1, which the gateway's default TANDEM_MCP_ALLOWED_HOSTS allows), so the gateway must run on
this machine. With `require_approval: "always"` (the default) the response would end with an
mcp_approval_request instead, answered by a follow-up (docs/api.md, "Remote MCP tools").
"""

import socket
import threading
import time

import uvicorn
from mcp.server.mcpserver import MCPServer

from _client import MODEL, client

server = MCPServer("weather")


@server.tool(description="Current weather in a city")
def get_weather(city: str) -> str:
    return f"{city}: 21 C and sunny"


def start_mcp_server() -> str:
    """Serve the MCP server on a free loopback port in a thread; its URL once it is up."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runner = uvicorn.Server(uvicorn.Config(server.streamable_http_app(), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=runner.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not runner.started:
        assert time.monotonic() < deadline, "the MCP server did not start"
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/mcp"


api = client()
tool = {"type": "mcp", "server_label": "weather", "server_url": start_mcp_server(),
        "require_approval": "never"}
with api.responses.stream(model=MODEL, input="What is the weather in Paris?", tools=[tool],
                          tool_choice="required", temperature=0, max_output_tokens=60) as stream:
    for event in stream:
        if event.type.startswith("response.mcp_"):
            print(event.type)
    response = stream.get_final_response()
for item in response.output:
    if item.type == "mcp_list_tools":
        print("listed:", [t.name for t in item.tools])
    elif item.type == "mcp_call":
        print(f"called {item.name}({item.arguments}) -> {item.output or item.error}")
print("answer:", response.output_text)
print("turns' output tokens:", response.usage.output_tokens)
