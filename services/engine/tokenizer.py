"""The model's tokenizer and chat template, plus incremental detokenization with stop strings.

``Tokenizer`` reads a model directory's ``tokenizer.json`` with the ``tokenizers`` library and
renders its chat template with Jinja, the way ``transformers`` does (the same sandboxed
environment, the same special tokens passed in). It does not import ``transformers``: that import
and ``AutoTokenizer``'s config lookups cost each process 2-3 s of CPU at start (three processes
start at once under ``tandem up``), for work this class does in ~0.15 s. A directory with only a
slow tokenizer (no ``tokenizer.json``) is converted through ``transformers`` once, when loaded.
``tests/services/engine/test_tokenizer_parity.py`` checks every method against ``AutoTokenizer``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import InvalidRequestError

# The named special tokens of a Hugging Face tokenizer (``SPECIAL_TOKENS_ATTRIBUTES``), in order.
NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_text(value: Any) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def special_tokens(config: dict) -> tuple[dict[str, str], list[str]]:
    """``(named, extra)``: the named special tokens (``bos_token`` …, and any other ``*_token``
    string) and the extra ones (``extra_special_tokens`` / ``additional_special_tokens``)."""
    named = {k: t for k in NAMED_SPECIAL if (t := _token_text(config.get(k))) is not None}
    extra_value = config.get("extra_special_tokens", config.get("additional_special_tokens")) or []
    if isinstance(extra_value, dict):   # model-specific named tokens ("image_token": ...)
        named |= {k: t for k, v in extra_value.items() if (t := _token_text(v)) is not None}
        extra_value = []
    for k, v in config.items():
        if k.endswith("_token") and k not in named and (t := _token_text(v)) is not None:
            named[k] = t
    return named, [t for v in extra_value if (t := _token_text(v)) is not None]


def chat_template(model_dir: Path, config: dict) -> str | None:
    """The default chat template: ``chat_template.jinja`` first, then the tokenizer config's."""
    path = model_dir / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    value = config.get("chat_template")
    if isinstance(value, list):        # [{"name": "default", "template": ...}, ...]
        value = {t.get("name"): t.get("template") for t in value}.get("default")
    if value is None and (model_dir / "chat_template.json").is_file():
        value = json.loads((model_dir / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    return value if isinstance(value, str) else None


def compile_template(source: str):
    """A chat template compiled as ``transformers`` compiles it: an immutable sandbox with
    ``trim_blocks``/``lstrip_blocks``, loop controls, the ``generation`` block, a ``tojson`` that
    keeps non-ASCII text and does not HTML-escape, and the ``raise_exception`` and
    ``strftime_now`` globals."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    class Generation(jinja2.ext.Extension):
        """``{% generation %}…{% endgeneration %}`` (templates mark the assistant's tokens for
        training masks with it): rendered as its body, as ``transformers`` does."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, Generation])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _load_backend(model_dir: Path):
    """The ``tokenizers.Tokenizer`` of ``model_dir``: its ``tokenizer.json``, or, for a directory
    with a slow tokenizer only, the fast tokenizer ``transformers`` converts it to."""
    from tokenizers import Tokenizer as Backend

    path = model_dir / "tokenizer.json"
    if path.is_file():
        return Backend.from_file(str(path))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(model_dir))
    if not hasattr(hf, "backend_tokenizer"):
        raise ValueError(f"{model_dir}: no tokenizer.json and no fast tokenizer to convert to")
    return hf.backend_tokenizer


class Tokenizer:
    """A model directory's tokenizer and chat template (no network, no ``transformers``)."""

    def __init__(self, model_dir: Path):
        model_dir = Path(model_dir)
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        self._tok = _load_backend(model_dir)
        self._decoder = self._tok.decoder   # read per streamed token (Detokenizer)
        self._named, extra = special_tokens(config)
        source = chat_template(model_dir, config)
        if not source:
            raise ValueError(f"{model_dir} has no chat template")
        self._template = compile_template(source)
        # transformers skips its space clean-up for BPE models (it would eat spaces before
        # punctuation); for others it honours the config's flag.
        self._clean_up = (bool(config.get("clean_up_tokenization_spaces", False))
                          and type(self._tok.model).__name__ != "BPE")
        names = list(dict.fromkeys([*self._named.values(), *extra]))
        self._special_ids = {i for t in names if (i := self._tok.token_to_id(t)) is not None}
        eos = self._named.get("eos_token")
        self._eos_id = self._tok.token_to_id(eos) if eos is not None else None
        self._hf = None

    @property
    def hf(self):
        """A ``transformers`` fast tokenizer over the same vocabulary, for xgrammar's
        ``TokenizerInfo.from_huggingface``; built (and ``transformers`` imported) on first use,
        which is the grammar compiler's thread when the first constrained request arrives."""
        if self._hf is None:
            from tokenizers import Tokenizer as Backend
            from transformers import PreTrainedTokenizerFast

            self._hf = PreTrainedTokenizerFast(tokenizer_object=Backend.from_str(self._tok.to_str()),
                                               **self._named)
        return self._hf

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_id

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        text = self._tok.decode(ids, skip_special_tokens=True)
        return _clean_up_spaces(text) if self._clean_up else text

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self._tok.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._decoder.decode(tokens) if self._decoder is not None else " ".join(tokens)

    @property
    def special_ids(self) -> set[int]:
        return set(self._special_ids)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """``messages`` rendered by the model's template, ending with the assistant cue."""
        for i, m in enumerate(messages):
            if m.get("role") not in ("system", "user", "assistant", "developer"):
                raise InvalidRequestError(f"messages[{i}].role", f"unsupported role {m.get('role')!r}")
        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        return self._template.render(messages=chat, tools=None, documents=None,
                                     add_generation_prompt=True, **self._named)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered by the model's template, ending with the assistant cue."""
        return self.encode(self.render_chat(messages))


def _clean_up_spaces(text: str) -> str:
    """``transformers``' ``clean_up_tokenization`` (spaces before punctuation and contractions)."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


class Detokenizer:
    """Turns one sequence's output tokens into text deltas, enforcing stop strings.

    Text is decoded over a short window of tokens (the vLLM "prefix/read offset" method) so a
    multi-byte character split across tokens is emitted only once complete. Text that could be the
    start of a stop string is withheld until it is known not to be one; a found stop string ends
    the sequence and is not part of the text.
    """

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.skip = tokenizer.special_ids
        self.tokens: list[str] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""      # all decoded text, stop string not yet removed
        self.emitted = 0    # characters of ``text`` already returned
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the text now safe to emit (empty while withheld)."""
        if token_id not in self.skip:
            self.tokens += self.tokenizer.convert_ids_to_tokens([token_id])
            prefix = self.tokenizer.convert_tokens_to_string(self.tokens[self.prefix_offset:self.read_offset])
            full = self.tokenizer.convert_tokens_to_string(self.tokens[self.prefix_offset:])
            if len(full) > len(prefix) and not full.endswith("\ufffd"):
                self.text += full[len(prefix):]
                self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        return self._release()

    def _release(self) -> str:
        end = len(self.text)
        for s in self.stop:
            at = self.text.find(s, max(0, self.emitted - len(s) + 1))
            if at != -1 and at < end:
                end, self.stopped = at, True
        if not self.stopped:
            end -= self._stop_prefix_len()
        delta = self.text[self.emitted:end]
        self.emitted = max(self.emitted, end)
        return delta

    def _stop_prefix_len(self) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """Text withheld for a stop string that never came; call once when the sequence ends."""
        if self.stopped:
            return ""
        delta = self.text[self.emitted:]
        self.emitted = len(self.text)
        return delta
