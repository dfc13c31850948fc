"""The Chat Completions request as the gateway accepts it.

Rule: every field here is honoured. OpenAI fields Tandem does not implement are listed in
``NOT_SUPPORTED`` with the values that ask for nothing (``n=1``, ``logprobs=false``, ...); those
values are accepted, any other value is a 400 naming the field. Any other unknown field is a 400
naming it too. Types are strict (``"0.5"`` is not a number, ``1`` is not a boolean).

Ranges follow OpenAI and the worker contract (protos/tandem/v1/worker.proto: ``max_tokens`` and
``top_k`` are uint32, ``seed`` is int64).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from ..params import JsonInt, OpenAIRequest

UINT32_MAX = 2**32 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP_SEQUENCES = 4
MAX_TOOLS = 128             # OpenAI's limit on ``tools``

# OpenAI request fields that are not implemented → the values that mean "not used". null is
# always accepted as "not used".
NOT_SUPPORTED: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "functions": ([],),
    "function_call": ("none",),
    "logprobs": (False,),
    "top_logprobs": (),
    "logit_bias": ({},),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "audio": (),
    "modalities": (["text"],),
    "prediction": (),
    "reasoning_effort": (),
    "verbosity": (),
    "service_tier": (),
    "store": (False,),
    "metadata": (),
    "web_search_options": (),
    "prompt_cache_key": (),
    "prompt_cache_retention": (),
    "safety_identifier": (),
}

TEXT_ONLY_PART_TYPES = ("image_url", "input_audio", "file")



def _join_text_parts(content: Any) -> Any:
    """Content given as a list of ``{"type": "text", "text": ...}`` parts → one string."""
    if not isinstance(content, list):
        return content
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_ONLY_PART_TYPES:
            raise PydanticCustomError(
                "unsupported_content", "This model is text-only: content part {index} has type "
                "'{kind}'; only 'text' parts are supported.", {"index": i, "kind": kind})
        if kind != "text" or set(part) != {"type", "text"} or not isinstance(part["text"], str):
            raise PydanticCustomError(
                "invalid_value", "Content part {index} must be a text part: exactly 'type': 'text' "
                "and a string 'text'.", {"index": i})
        texts.append(part["text"])
    return "\n".join(texts)


def _one_or_more(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


StopString = Annotated[str, Field(min_length=1)]
StopList = Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)]


class CallFunction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    arguments: str


class AssistantToolCall(BaseModel):
    """A call the assistant made earlier in the conversation."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1)
    type: Literal["function"]
    function: CallFunction


class Message(BaseModel):
    """One chat message. ``developer`` is OpenAI's newer name for ``system`` and is treated as it.
    An assistant message may carry ``tool_calls`` (then ``content`` may be null); a ``tool``
    message answers one of them by ``tool_call_id``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str | None, BeforeValidator(_join_text_parts)]
    tool_calls: list[AssistantToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _check_tool_fields(self) -> "Message":
        if self.tool_calls is not None and self.role != "assistant":
            raise _invalid("tool_calls", "Only assistant messages carry 'tool_calls'.")
        if (self.tool_call_id is None) == (self.role == "tool"):
            raise _invalid("tool_call_id", "A 'tool' message needs 'tool_call_id', and only it has one.")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise _invalid("content", "'content' may be null only in an assistant message with 'tool_calls'.")
        return self

    def for_template(self) -> dict:
        """The message for gateway/tools/prompt.py (``tool_calls`` as (name, arguments) pairs)."""
        out = {"role": "system" if self.role == "developer" else self.role, "content": self.content or ""}
        if self.tool_calls:
            out["tool_calls"] = [(c.function.name, c.function.arguments) for c in self.tool_calls]
        return out


def _invalid(field: str, message: str) -> PydanticCustomError:
    """An error naming ``field`` of the object being validated (the location is prefixed)."""
    return PydanticCustomError("invalid_value", "{message}", {"member": field, "message": message})


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(BaseModel):
    """``{type: "function", function: {...}}``; other tool types are not run here."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``text``, ``json_object``, or ``json_schema`` with its ``json_schema`` object."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> "ResponseFormat":
        if (self.json_schema is not None) != (self.type == "json_schema"):
            raise _invalid("json_schema", "'json_schema' is required with type 'json_schema' and "
                                          "allowed only with it.")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool | None = None


class ChatCompletionRequest(OpenAIRequest):
    """POST /v1/chat/completions. Extra fields are collected only to be checked and refused."""

    NOT_SUPPORTED = NOT_SUPPORTED

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: JsonInt | None = Field(None, ge=1, le=UINT32_MAX)
    max_completion_tokens: JsonInt | None = Field(None, ge=1, le=UINT32_MAX)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: JsonInt | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: Annotated[StopList | None, BeforeValidator(_one_or_more)] = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    full_text_enabled: bool | None = Field(None, alias="fullTextEnabled")
    user: str | None = None             # an opaque end-user tag: logged with the request
    # Tandem extensions
    top_k: JsonInt | None = Field(None, ge=0, le=UINT32_MAX)   # 0 disables top-k
    ignore_eos: bool | None = None
    tools: list[ChatTool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required", "any"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _check_tool_history(self) -> "ChatCompletionRequest":
        """Every ``tool`` message answers a call made by an earlier assistant message."""
        calls: set[str] = set()
        for i, m in enumerate(self.messages):
            calls |= {c.id for c in m.tool_calls or ()}
            if m.role == "tool" and m.tool_call_id not in calls:
                raise PydanticCustomError(
                    "invalid_value", "messages[{index}].tool_call_id '{id}' matches no earlier "
                    "assistant tool call.", {"index": i, "id": m.tool_call_id,
                                             "param": f"messages[{i}].tool_call_id"})
        if self.tool_choice not in (None, "none") and not self.tools:
            raise PydanticCustomError("invalid_value", "'tool_choice' needs 'tools'.", {"param": "tool_choice"})
        if self.tools and self.response_format is not None and self.response_format.type != "text":
            raise PydanticCustomError("invalid_value", "Give 'tools' or a JSON 'response_format', not "
                                      "both.", {"param": "response_format"})
        return self

    @model_validator(mode="after")
    def _check_combinations(self) -> "ChatCompletionRequest":
        if self.stream_options is not None and not self.stream:
            raise PydanticCustomError("invalid_value", "'{param}' is only allowed when 'stream' is true.",
                                      {"param": "stream_options"})
        if None not in (self.max_tokens, self.max_completion_tokens) and \
                self.max_tokens != self.max_completion_tokens:
            raise PydanticCustomError("invalid_value", "Give 'max_tokens' or '{param}', not both "
                                      "with different values.", {"param": "max_completion_tokens"})
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def token_limit_param(self) -> str:
        """The field ``token_limit`` came from, for errors."""
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

