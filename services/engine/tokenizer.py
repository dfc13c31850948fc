"""The model's tokenizer and chat template, plus incremental detokenization with stop strings."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidRequestError


class Tokenizer:
    """Wraps a Hugging Face tokenizer loaded from a model directory (no network)."""

    def __init__(self, model_dir: Path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(model_dir))
        if not self._tok.chat_template:
            raise ValueError(f"{model_dir} has no chat template")

    @property
    def hf(self):
        """The Hugging Face tokenizer itself (xgrammar reads its vocabulary)."""
        return self._tok

    @property
    def eos_token_id(self) -> int | None:
        return self._tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return self._tok.convert_ids_to_tokens(ids)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._tok.convert_tokens_to_string(tokens)

    @property
    def special_ids(self) -> set[int]:
        return set(self._tok.all_special_ids)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered by the model's template, ending with the assistant cue."""
        for i, m in enumerate(messages):
            if m.get("role") not in ("system", "user", "assistant", "developer"):
                raise InvalidRequestError(f"messages[{i}].role", f"unsupported role {m.get('role')!r}")
        ids = self._tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


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
