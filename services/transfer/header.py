"""The fixed-size header that precedes every KV payload on a pair: UTF-8 JSON, zero-padded.

A header is ``HEADER_BYTES`` of uint8: a JSON object with exactly the fields of ``KvHeader`` (keys
sorted), then zero bytes. It is never pickled. ``decode`` trusts nothing: wrong size, bytes after
the padding, unknown or missing fields, wrong types, an unknown dtype or checksum algorithm, or an
``nbytes`` that does not match the shape all raise ``KvTransferError``.

A payload covers the request's tokens ``[start_token, start_token + num_tokens)``: a decode worker
that already holds the first blocks of a prompt (prefix caching) asks only for the rest, and the
header names the range it carries, which the receiver checks like the shape. The checksum covers
exactly the tokens sent.

A refusal is a header without a payload: ``error`` says why the sender has no KV for
``request_id`` (expired, aborted) and every size field is 0.
"""

import json
import math
import typing
from dataclasses import asdict, dataclass, fields

import torch

from .checksums import ALGOS, checksum
from .errors import KvTransferError

HEADER_BYTES = 1024
VERSION = 2     # 2: start_token
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16,
                                  "bfloat16": torch.bfloat16}
_MAX_ERROR_CHARS = 256


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class KvHeader:
    """What the sender claims about one payload; the receiver checks it against what it expects."""

    request_id: str
    num_layers: int
    num_tokens: int
    num_kv_heads: int
    head_dim: int
    dtype: str            # a key of DTYPES
    nbytes: int           # payload bytes; 0 only in a refusal
    checksum: int         # value of checksum_algo over the payload bytes, as sent
    checksum_algo: str    # one of checksums.ALGOS
    start_token: int = 0  # the payload's first token position in the request
    error: str = ""       # non-empty: a refusal, no payload follows
    version: int = VERSION

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not _TYPES[f.name]:   # bool is not an int here
                raise ValueError(f"{f.name} must be {_TYPES[f.name].__name__}, got {value!r}")
        if self.version != VERSION:
            raise ValueError(f"version {self.version} is not supported (this side speaks {VERSION})")
        if not self.request_id:
            raise ValueError("request_id is empty")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.checksum_algo not in ALGOS:
            raise ValueError(f"checksum_algo {self.checksum_algo!r} is not one of {', '.join(ALGOS)}")
        if self.start_token < 0:
            raise ValueError(f"start_token {self.start_token} is negative")
        lowest = 0 if self.error else 1
        if min(self.shape) < lowest:
            raise ValueError(f"shape {self.shape} has a dimension below {lowest}")
        if self.nbytes != math.prod(self.shape) * self.torch_dtype.itemsize:
            raise ValueError(f"nbytes {self.nbytes} does not match shape {self.shape} of {self.dtype}")
        if self.error and self.nbytes:
            raise ValueError("a refusal carries no payload, so its nbytes must be 0")

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.num_layers, 2, self.num_tokens, self.num_kv_heads, self.head_dim)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @classmethod
    def for_tensor(cls, request_id: str, kv: torch.Tensor, start_token: int = 0) -> "KvHeader":
        """The header of an exported KV tensor ``[layers, 2, tokens, kv_heads, head_dim]`` holding
        the request's tokens from ``start_token`` on."""
        if kv.dim() != 5 or kv.shape[1] != 2:
            raise ValueError(f"KV must be [layers, 2, tokens, kv_heads, head_dim], got {tuple(kv.shape)}")
        algo, value = checksum(kv)
        layers, _, tokens, heads, head_dim = kv.shape
        return cls(request_id, layers, tokens, heads, head_dim, dtype_name(kv.dtype),
                   kv.numel() * kv.element_size(), value, algo, start_token)

    @classmethod
    def refusal(cls, request_id: str, reason: str) -> "KvHeader":
        """A payload-less header telling the receiver why no KV is coming."""
        reason = reason[:_MAX_ERROR_CHARS] or "refused"
        return cls(request_id, 0, 0, 0, 0, "float32", 0, 0, ALGOS[0], error=reason)

    def mismatches(self, request_id: str, shape: tuple[int, ...], dtype: torch.dtype,
                   start_token: int = 0) -> list[str]:
        """What differs from the receiver's expectation, one ``field: got X, expected Y`` each."""
        expected = {"request_id": request_id, "shape": tuple(shape), "dtype": dtype_name(dtype),
                    "start_token": start_token}
        return [f"{name}: got {getattr(self, name)!r}, expected {want!r}"
                for name, want in expected.items() if getattr(self, name) != want]

    def encode(self) -> torch.Tensor:
        """The header as a CPU uint8 tensor of ``HEADER_BYTES``."""
        raw = json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()
        if len(raw) > HEADER_BYTES:
            raise ValueError(f"KV header of {len(raw)} bytes does not fit in {HEADER_BYTES} "
                             f"(request_id of {len(self.request_id)} characters?)")
        out = torch.zeros(HEADER_BYTES, dtype=torch.uint8)
        out[:len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        return out

    @classmethod
    def decode(cls, t: torch.Tensor) -> "KvHeader":
        """Parse and validate a received header; anything malformed raises ``KvTransferError``."""
        if t.dtype != torch.uint8 or tuple(t.shape) != (HEADER_BYTES,):
            raise KvTransferError(f"malformed KV header: expected {HEADER_BYTES} uint8, got "
                                  f"{tuple(t.shape)} {t.dtype}")
        raw = t.cpu().numpy().tobytes()
        end = raw.find(0)
        end = len(raw) if end < 0 else end
        if raw[end:].strip(b"\0"):
            raise KvTransferError("malformed KV header: non-zero bytes after the JSON")
        try:
            obj = json.loads(raw[:end].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise KvTransferError(f"malformed KV header: not UTF-8 JSON ({e})") from None
        if not isinstance(obj, dict) or set(obj) != set(_TYPES):
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise KvTransferError(f"malformed KV header: fields {got}, expected {sorted(_TYPES)}")
        try:
            return cls(**obj)
        except ValueError as e:
            raise KvTransferError(f"malformed KV header: {e}") from None


_TYPES: dict[str, type] = typing.get_type_hints(KvHeader)
