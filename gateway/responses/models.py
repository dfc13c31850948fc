"""The Responses API request as the gateway accepts it (POST /v1/responses).

Rule, as for Chat Completions (chat/models.py): every field here is honoured. OpenAI fields Tandem
does not implement are listed in ``NOT_SUPPORTED`` with the values that ask for nothing (no tools,
plain text output, ...); those values are accepted, any other value is a 400 naming the field. Any
other unknown field is a 400 naming it. Types are strict.

``input`` is a string (one user message) or a list of message items. After validation it is always
a list of ``InputMessage`` whose ``content`` is a list of text parts: a string becomes one
``input_text`` part (``output_text`` for the assistant). Images, files and audio are refused: the
model is text-only. Besides messages, ``function_call`` items (a call the model made) and
``function_call_output`` items (its result, linked by ``call_id``) and ``mcp_approval_response``
items (the user's answer to an earlier ``mcp_approval_request``) are accepted; other tool items
(reasoning, item references, other tools' calls) are refused by name. ``tools`` (tool_params.py)
are function tools and remote MCP servers; ``text.format`` is ``text``, ``json_object`` or
``json_schema``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, ValidationInfo,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from ..chat.models import INT64_MAX, INT64_MIN, MAX_TOOLS, UINT32_MAX
from ..errors import UNION_TAG
from ..params import JsonInt, OpenAIRequest
from .tool_params import FunctionToolParam, McpToolParam, NamedToolChoice, ToolParam

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512

# OpenAI request fields that are not implemented → the values that mean "not used" (null always is).
NOT_SUPPORTED: dict[str, tuple[Any, ...]] = {
    "include": ([],),
    "top_logprobs": (0,),
    "service_tier": ("auto", "default"),
    "conversation": (),
    "prompt": (),
    "prompt_cache_key": (),
    "prompt_cache_retention": (),
    "prompt_cache_options": (),
    "safety_identifier": (),
    "context_management": (),
    "background_options": (),
    "moderation": (),
    "image": (),
    "access_programs": (),
}

TEXT_PART_TYPES = ("input_text", "output_text")
MEDIA_PART_TYPES = ("input_image", "input_file", "input_audio")
TOOL_ITEM_TYPES = ("reasoning", "item_reference",
                   "custom_tool_call", "custom_tool_call_output", "mcp_call", "computer_call",
                   "computer_call_output", "web_search_call", "file_search_call")


class ContentPart(BaseModel):
    """A text part of a message: ``input_text`` or ``output_text`` (an output_text part's
    annotations and logprobs are echoed as given; an input_text part has neither)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None

    @field_validator("annotations", "logprobs")
    @classmethod
    def _output_text_only(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("type") == "input_text":
            raise PydanticCustomError("unknown_parameter", "An 'input_text' part has no '{field}'; "
                                      "only 'output_text' parts carry it.", {"field": info.field_name})
        return value

    def stored(self) -> dict[str, Any]:
        if self.type == "input_text":
            return {"type": "input_text", "text": self.text}
        return {"type": "output_text", "text": self.text, "annotations": self.annotations or [],
                "logprobs": self.logprobs or []}


def _types(values: Any) -> list[tuple[int, Any]]:
    """(index, ``type``) of each element of a list (None where there is no type)."""
    if not isinstance(values, list):
        return []
    return [(i, v.get("type") if isinstance(v, dict) else None) for i, v in enumerate(values)]


def _text_parts_only(content: Any) -> Any:
    """Refuse media parts with a message that says why (the model reads text only)."""
    for i, kind in _types(content):
        if kind in MEDIA_PART_TYPES:
            raise PydanticCustomError(
                "unsupported_content", "This model is text-only: content part {index} has type "
                "'{kind}'; only 'input_text' and 'output_text' parts are supported.",
                {"index": i, "kind": kind})
    return content


class InputMessage(BaseModel):
    """One message item: OpenAI's EasyInputMessage, typed input Message, or a prior output message."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["message"] = "message"
    id: str | None = Field(None, min_length=1)
    role: Literal["user", "assistant", "system", "developer"]
    content: Annotated[list[ContentPart], BeforeValidator(_text_parts_only)]
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _string_content_to_part(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("content"), str):
            kind = "output_text" if data.get("role") == "assistant" else "input_text"
            return {**data, "content": [{"type": kind, "text": data["content"]}]}
        return data


def _output_text(value: Any) -> Any:
    """A function_call_output's ``output``: a string, or input_text parts joined."""
    if isinstance(value, list):
        for i, kind in _types(value):
            if kind != "input_text":
                raise PydanticCustomError("unsupported_content", "Output part {index} has type '{kind}'; "
                                          "only 'input_text' parts are supported.", {"index": i, "kind": kind})
        return "\n".join(part.get("text", "") for part in value)
    return value


class FunctionCallInput(BaseModel):
    """A call the model made earlier (replayed into the prompt)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputInput(BaseModel):
    """The result of a call, linked to it by ``call_id`` (text only)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: Annotated[str, BeforeValidator(_output_text)]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class McpApprovalResponseInput(BaseModel):
    """The user's answer to an ``mcp_approval_request`` of the previous response (tool_loop.py)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["mcp_approval_response"]
    approval_request_id: str = Field(min_length=1)
    approve: bool
    reason: str | None = None
    id: str | None = None


ITEM_TYPES = ("message", "function_call", "function_call_output", "mcp_approval_response")


def _item_kind(value: Any) -> str:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return UNION_TAG + (kind if kind in ITEM_TYPES else "message")


InputItem = Annotated[Union[Annotated[InputMessage, Tag(UNION_TAG + "message")],
                            Annotated[FunctionCallInput, Tag(UNION_TAG + "function_call")],
                            Annotated[FunctionCallOutputInput, Tag(UNION_TAG + "function_call_output")],
                            Annotated[McpApprovalResponseInput, Tag(UNION_TAG + "mcp_approval_response")]],
                      Discriminator(_item_kind)]


def _input_items(value: Any) -> Any:
    """A string is one user message; item types this server does not take are refused by name."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    for i, kind in _types(value):
        if kind in TOOL_ITEM_TYPES:
            raise PydanticCustomError(
                "unsupported_item", "Input item {index} has type '{kind}'; this server accepts "
                "'message', 'function_call', 'function_call_output' and 'mcp_approval_response' items.",
                {"index": i, "kind": kind, "param": f"input[{i}]"})
        if kind is not None and kind not in ITEM_TYPES:
            raise PydanticCustomError("invalid_value", "Input item {index} has unknown type "
                                      "'{kind}'.", {"index": i, "kind": kind,
                                                    "param": f"input[{i}].type"})
    return value


class TextFormat(BaseModel):
    """``text.format``: ``text``, ``json_object``, or ``json_schema`` with ``name`` and ``schema``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> "TextFormat":
        if self.type == "json_schema" and (self.schema_ is None or self.name is None):
            raise PydanticCustomError("invalid_value", "A 'json_schema' format needs 'name' and 'schema'.",
                                      {"member": "schema"})
        if self.type != "json_schema" and (self.schema_ is not None or self.name is not None):
            raise PydanticCustomError("invalid_value", "Only a 'json_schema' format has 'name' and 'schema'.",
                                      {"member": "type"})
        return self

    def echo(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class TextParam(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None      # the only verbosity this model has


class ReasoningParam(BaseModel):
    """``reasoning``: the effort is checked and echoed; the served model has no reasoning mode, so it
    changes nothing and writes no reasoning (``reasoning_tokens`` is 0). A summary cannot be made."""

    model_config = ConfigDict(extra="forbid", strict=True)

    effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    summary: None = None
    generate_summary: None = None

    @model_validator(mode="before")
    @classmethod
    def _no_summary(cls, data: Any) -> Any:
        for field in ("summary", "generate_summary"):
            if isinstance(data, dict) and data.get(field) is not None:
                raise PydanticCustomError(
                    "unsupported_value", "This model has no reasoning mode, so it cannot produce "
                    "a reasoning summary; '{field}' must be null.",
                    {"field": field, "param": f"reasoning.{field}"})
        return data

    def echo(self) -> dict[str, Any]:
        return {"effort": self.effort, "summary": None}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_obfuscation: Literal[False] | None = None   # Tandem never adds obfuscation padding


class ResponseCreateRequest(OpenAIRequest):
    """POST /v1/responses. Extra fields are collected only to be checked and refused."""

    NOT_SUPPORTED = NOT_SUPPORTED

    model: str
    input: Annotated[list[InputItem], BeforeValidator(_input_items), Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: JsonInt | None = Field(None, ge=1, le=UINT32_MAX)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    store: bool | None = None
    metadata: dict[str, str] | None = None
    previous_response_id: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None                # an opaque end-user tag: logged and echoed
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    background: bool | None = None
    # Tandem extensions (as in Chat Completions)
    top_k: JsonInt | None = Field(None, ge=0, le=UINT32_MAX)
    seed: JsonInt | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    ignore_eos: bool | None = None
    tools: list[ToolParam] | None = Field(None, max_length=MAX_TOOLS)
    max_tool_calls: JsonInt | None = Field(None, ge=0, le=UINT32_MAX)   # MCP calls, over all turns
    tool_choice: Literal["auto", "none", "required", "any"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    reasoning: ReasoningParam | None = None

    @model_validator(mode="after")
    def _check_tools(self) -> "ResponseCreateRequest":
        if self.tool_choice not in (None, "auto", "none") and not self.tools:
            raise _invalid("tool_choice", "'tool_choice' needs 'tools'.")
        fmt = self.text.format if self.text else None
        if self.tools and fmt is not None and fmt.type != "text":
            raise _invalid("text.format", "Give 'tools' or a JSON 'text.format', not both.")
        return self

    @property
    def function_tools(self) -> list[FunctionToolParam]:
        return [t for t in self.tools or () if isinstance(t, FunctionToolParam)]

    @property
    def mcp_tools(self) -> list[tuple[int, McpToolParam]]:
        """(index in ``tools``, tool) of each remote MCP server."""
        return [(i, t) for i, t in enumerate(self.tools or ()) if isinstance(t, McpToolParam)]

    @property
    def approvals(self) -> list[tuple[int, McpApprovalResponseInput]]:
        """(input index, item) of each ``mcp_approval_response`` in the input."""
        return [(i, m) for i, m in enumerate(self.input) if isinstance(m, McpApprovalResponseInput)]

    @model_validator(mode="after")
    def _check_metadata(self) -> "ResponseCreateRequest":
        metadata = self.metadata or {}
        if len(metadata) > MAX_METADATA_PAIRS:
            raise _invalid("metadata", f"'metadata' has {len(metadata)} pairs; at most "
                                       f"{MAX_METADATA_PAIRS} are allowed.")
        for key, value in metadata.items():
            if len(key) > MAX_METADATA_KEY:
                raise _invalid("metadata", f"'metadata' key {key[:20]!r}... is {len(key)} characters "
                                           f"long; keys are at most {MAX_METADATA_KEY}.")
            if len(value) > MAX_METADATA_VALUE:
                raise _invalid("metadata", f"'metadata' value of {key!r} is {len(value)} characters "
                                           f"long; values are at most {MAX_METADATA_VALUE}.")
        return self

    @model_validator(mode="after")
    def _check_combinations(self) -> "ResponseCreateRequest":
        if self.stream_options is not None and not self.stream:
            raise _invalid("stream_options", "'stream_options' is only allowed when 'stream' is true.")
        if self.background and not self.keep:
            raise _invalid("background", "Background responses must be stored: 'background' "
                                         "requires 'store' to be true.")
        return self

    @property
    def keep(self) -> bool:
        """Whether the response is stored (``store`` defaults to true)."""
        return self.store is not False


def _invalid(param: str, message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_value", "{message}", {"param": param, "message": message})


