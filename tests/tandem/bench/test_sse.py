"""SSE decoding (no server)."""

from __future__ import annotations

from tandem.bench.sse import DONE, SSEDecoder


def events(lines):
    d = SSEDecoder()
    out = [e for line in lines if (e := d.feed(line)) is not None]
    tail = d.flush()
    return out + ([tail] if tail is not None else [])


def test_one_data_line_per_event_then_done():
    assert events(['data: {"a":1}', "", 'data: {"b":2}', "", "data: [DONE]", ""]) == \
        ['{"a":1}', '{"b":2}', DONE]


def test_comments_and_other_fields_are_ignored():
    lines = [": ping", "event: message", "id: 7", 'data: {"a":1}', "retry: 10", "", ": ping", ""]
    assert events(lines) == ['{"a":1}']


def test_multi_line_data_is_joined_and_the_space_after_the_colon_is_optional():
    assert events(["data:{", 'data:  "a": 1}', ""]) == ['{\n "a": 1}']


def test_crlf_and_an_unterminated_last_event():
    assert events(['data: {"a":1}\r', "\r", "data: [DONE]"]) == ['{"a":1}', DONE]
