"""The detokenizer on a tiny byte-level BPE tokenizer: stop strings are withheld, cut, or released."""

from services.engine.tokenizer import Detokenizer


def stream(tokenizer, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], Detokenizer]:
    """Push ``text``'s tokens one at a time; return every delta (flush included) and the detokenizer."""
    detok = Detokenizer(tokenizer, stop)
    deltas = []
    for token in tokenizer.encode(text):
        deltas.append(detok.push(token))
        if detok.stopped:
            break
    deltas.append(detok.flush())
    return deltas, detok


def test_without_stop_strings_the_deltas_rebuild_the_text(tiny_tokenizer):
    deltas, detok = stream(tiny_tokenizer, "Hello world, the end.")
    assert "".join(deltas) == "Hello world, the end." and not detok.stopped


def test_a_character_split_over_byte_tokens_is_emitted_once_complete(tiny_tokenizer):
    text = "price: 5€ ok"                                  # "€" is three byte tokens here
    assert len(tiny_tokenizer.encode("€")) == 3
    deltas, _ = stream(tiny_tokenizer, text)
    assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas)


def test_a_stop_string_spread_over_tokens_never_shows_and_ends_the_text(tiny_tokenizer):
    assert len(tiny_tokenizer.encode("STOP")) > 1
    deltas, detok = stream(tiny_tokenizer, "Hello world STOP and more", stop=("STOP",))
    assert detok.stopped and "".join(deltas) == "Hello world "
    assert not any(d.endswith(("S", "ST", "STO")) for d in deltas)   # no prefix of it leaked early


def test_a_withheld_prefix_is_released_once_it_cannot_be_the_stop_string(tiny_tokenizer):
    detok = Detokenizer(tiny_tokenizer, ("ab!",))
    out = "".join(detok.push(t) for t in tiny_tokenizer.encode("xab"))
    assert out == "x"                                            # "ab" might start "ab!"
    out += "".join(detok.push(t) for t in tiny_tokenizer.encode(" y"))
    assert out == "xab y" and not detok.stopped


def test_flush_returns_the_withheld_tail_when_the_sequence_ends_without_its_stop_string(tiny_tokenizer):
    deltas, detok = stream(tiny_tokenizer, "the end ST", stop=("STOP",))
    assert not detok.stopped and deltas[-1] == "ST" and "".join(deltas) == "the end ST"


def test_the_earliest_of_several_stop_strings_wins(tiny_tokenizer):
    deltas, detok = stream(tiny_tokenizer, "one. two; three", stop=(";", "."))
    assert detok.stopped and "".join(deltas) == "one"


def test_special_tokens_add_no_text(tiny_tokenizer):
    detok = Detokenizer(tiny_tokenizer, ())
    assert detok.push(tiny_tokenizer.eos_token_id) == ""
    assert "".join(detok.push(t) for t in tiny_tokenizer.encode("hi")) + detok.flush() == "hi"
