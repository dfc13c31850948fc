"""The incremental tool-call parser: same events whatever the split of the text into deltas."""

from __future__ import annotations

import json
import random

import pytest

from gateway.tools.parser import ArgumentsDelta, CallClosed, CallOpened, TextDelta, ToolCallParser

TEXT = ('Sure, checking <b> and <tool. <tool_call>[{"name": "get_weather", "arguments": '
        '{"city": "Pa\\"ris}", "n": [1, {"a": 2}]}}, {"name": "f", "arguments": {}}]</tool_call>')


def parse(text: str, sizes) -> list:
    parser, events, i = ToolCallParser(), [], 0
    while i < len(text):
        n = next(sizes)
        events += parser.feed(text[i:i + n])
        i += n
    return events + parser.finish()


@pytest.mark.parametrize("seed", range(30))
def test_any_split_gives_the_same_calls(seed):
    rng = random.Random(seed)
    events = parse(TEXT, iter(lambda: rng.randint(1, 7), None))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Sure, checking <b> and <tool. "
    opened = [(e.index, e.name) for e in events if isinstance(e, CallOpened)]
    assert opened == [(0, "get_weather"), (1, "f")]
    args = {i: "".join(e.text for e in events if isinstance(e, ArgumentsDelta) and e.index == i) for i in (0, 1)}
    assert json.loads(args[0]) == {"city": 'Pa"ris}', "n": [1, {"a": 2}]} and args[1] == "{}"
    assert [e.arguments for e in events if isinstance(e, CallClosed)] == [args[0], args[1]]
    for e in events:    # a call's name comes before any of its arguments
        if isinstance(e, ArgumentsDelta):
            assert events.index(next(o for o in events if isinstance(o, CallOpened) and o.index == e.index)) \
                < events.index(e)


def test_text_that_only_looks_like_the_tag_is_released_at_the_end():
    events = parse("a <tool_ca", iter(lambda: 1, None))
    assert "".join(e.text for e in events) == "a <tool_ca"


def test_a_call_cut_short_is_opened_but_not_closed():
    events = parse('<tool_call>[{"name": "f", "arguments": {"x": 1', iter(lambda: 3, None))
    assert [type(e).__name__ for e in events if not isinstance(e, ArgumentsDelta)] == ["CallOpened"]
