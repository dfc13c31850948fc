"""The Responses API's ``tools`` and ``tool_choice`` as the gateway accepts them.

A tool is a function (flat: ``{type: function, name, description, parameters, strict}``), run by
the client, or a remote MCP server (``{type: mcp, ...}``), run by the gateway (tool_loop.py).
Types are strict; unknown fields are 400s naming them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from ..errors import UNION_TAG


class FunctionToolParam(BaseModel):
    """A function tool (flat, as the Responses API spells it): the client runs it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def echo(self) -> dict[str, Any]:
        return self.model_dump()


class ToolNames(BaseModel):
    """A filter of an MCP server's tools (``allowed_tools``, ``require_approval``) by name."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tool_names: list[str] | None = None
    read_only: None = None          # tool annotations are not trusted to filter on


class ApprovalFilter(BaseModel):
    """``require_approval: {always: {tool_names}, never: {tool_names}}``: a tool named under
    ``never`` runs without asking; any other tool (named under ``always`` or not named) asks."""

    model_config = ConfigDict(extra="forbid", strict=True)

    always: ToolNames | None = None
    never: ToolNames | None = None

    def asks(self, name: str) -> bool:
        return not (self.never and name in (self.never.tool_names or ()))


class McpToolParam(BaseModel):
    """A remote MCP server the gateway calls for this response (gateway/tools/mcp.py). ``headers``
    and ``authorization`` go to the server only: never stored, logged or echoed.
    ``require_approval`` defaults to ``always``, as in OpenAI."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["mcp"]
    server_label: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    server_url: str
    server_description: str | None = None
    headers: dict[str, str] | None = None
    authorization: str | None = None
    allowed_tools: list[str] | ToolNames | None = None
    require_approval: Literal["always", "never"] | ApprovalFilter = "always"

    @property
    def allowed(self) -> list[str] | None:
        if isinstance(self.allowed_tools, ToolNames):
            return self.allowed_tools.tool_names
        return self.allowed_tools

    def asks_approval(self, name: str) -> bool:
        """Whether calling tool ``name`` needs the user's approval first."""
        if isinstance(self.require_approval, ApprovalFilter):
            return self.require_approval.asks(name)
        return self.require_approval == "always"

    def request_headers(self) -> dict[str, str]:
        auth = {"Authorization": f"Bearer {self.authorization}"} if self.authorization else {}
        return {**(self.headers or {}), **auth}

    def echo(self) -> dict[str, Any]:
        def dumped(value: Any) -> Any:
            return value.model_dump(exclude_none=True) if isinstance(value, BaseModel) else value
        return {"type": "mcp", "server_label": self.server_label, "server_url": self.server_url,
                "server_description": self.server_description,
                "allowed_tools": dumped(self.allowed_tools),
                "require_approval": dumped(self.require_approval), "headers": None}


def _tool_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return UNION_TAG + ("mcp" if kind == "mcp" else "function")


ToolParam = Annotated[Union[Annotated[FunctionToolParam, Tag(UNION_TAG + "function")],
                            Annotated[McpToolParam, Tag(UNION_TAG + "mcp")]],
                      Discriminator(_tool_kind)]


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    name: str
