"""Request fields a model does not declare: refuse them by name, never ignore them.

Each request model keeps a table ``name -> neutral values`` of OpenAI fields this server does not
implement. A neutral value (``n=1``, ``tools=[]``, ``null``) asks for nothing and is accepted; any
other value is a 400 ``unsupported_parameter``; a field missing from the table is a 400
``unknown_parameter``. Both name the field.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import PydanticCustomError


def refuse_extra_fields(extra: dict[str, Any] | None, not_supported: dict[str, tuple[Any, ...]]) -> None:
    for name, value in (extra or {}).items():
        if name not in not_supported:
            raise PydanticCustomError("unknown_parameter", "Unrecognized request argument supplied: {param}",
                                      {"param": name})
        neutral = not_supported[name]
        if not _is_neutral(value, neutral):
            hint = f" (only {' or '.join(json.dumps(n) for n in neutral)} or null)" if neutral else ""
            raise PydanticCustomError("unsupported_parameter", "'{param}' is not supported by this server{hint}.",
                                      {"param": name, "hint": hint})


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    return value is None or any(type(value) is type(n) and value == n for n in neutral)
