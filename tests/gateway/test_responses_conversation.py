"""Conversation building, truncation, pagination and the event builder, on hand-made inputs."""

from __future__ import annotations

import pytest

from gateway.errors import APIError
from gateway.responses.conversation import (build_prompt, chat_messages, continued_items,
                                            input_items, page)
from gateway.responses.events import ResponseEvents
from gateway.responses.models import ResponseCreateRequest


def items(*pairs: tuple[str, str]) -> list[dict]:
    return [{"type": "message", "id": f"msg_{i}", "role": role, "status": "completed",
             "content": [{"type": "input_text", "text": text}]} for i, (role, text) in enumerate(pairs)]


def template(messages: list[dict[str, str]]) -> list[int]:
    """One token per character, plus one per message."""
    return [0] * sum(len(m["content"]) + 1 for m in messages)


def test_string_input_is_one_user_message_with_an_id():
    body = ResponseCreateRequest.model_validate({"model": "m", "input": "Hi"})
    [item] = input_items(body.input)
    assert item["id"].startswith("msg_") and item["role"] == "user" and item["status"] == "completed"
    assert item["content"] == [{"type": "input_text", "text": "Hi"}]


def test_assistant_string_content_becomes_output_text():
    body = ResponseCreateRequest.model_validate(
        {"model": "m", "input": [{"role": "assistant", "content": "Yo", "id": "msg_a"}]})
    [item] = input_items(body.input)
    assert item["id"] == "msg_a"
    assert item["content"] == [{"type": "output_text", "text": "Yo", "annotations": [], "logprobs": []}]


def test_chat_messages_instructions_lead_and_developer_is_system():
    msgs = chat_messages(items(("developer", "D"), ("user", "U")), "I")
    assert msgs == [{"role": "system", "content": "I"}, {"role": "system", "content": "D"},
                    {"role": "user", "content": "U"}]


def test_continued_items_are_parent_input_then_its_output_messages():
    parent = {"output": [{"type": "message", "id": "msg_out", "role": "assistant", "content": []}]}
    got = continued_items(parent, items(("user", "Q")))
    assert [i["id"] for i in got] == ["msg_0", "msg_out"]


CHAT = items(("system", "S"), ("user", "q1" * 5), ("assistant", "a1" * 5), ("user", "q2" * 5),
             ("assistant", "a2" * 5), ("user", "q3"))


def test_prompt_that_fits_is_untouched():
    prompt = build_prompt(template, CHAT, None, max_output_tokens=10, max_model_len=100,
                          truncation="disabled")
    assert len(prompt.token_ids) == 49 and prompt.dropped_items == 0


@pytest.mark.parametrize("max_model_len, dropped", [(60, 0), (50, 2), (30, 4)])
def test_auto_drops_the_fewest_oldest_turns_keeping_preamble_and_newest(max_model_len, dropped):
    prompt = build_prompt(template, CHAT, None, max_output_tokens=10, max_model_len=max_model_len,
                          truncation="auto")
    kept = CHAT[:1] + CHAT[1 + dropped:]          # the system preamble and the newest turns
    assert prompt.dropped_items == dropped
    assert len(prompt.token_ids) == len(template(chat_messages(kept, None)))


def test_disabled_or_hopeless_truncation_is_400_on_input():
    for truncation, max_model_len in (("disabled", 58), ("auto", 14)):
        with pytest.raises(APIError) as e:
            build_prompt(template, CHAT, None, max_output_tokens=10, max_model_len=max_model_len,
                         truncation=truncation)
        assert e.value.status == 400 and e.value.param == "input"
        assert e.value.code == "context_length_exceeded"


def test_without_max_output_tokens_one_token_must_fit():
    build_prompt(template, CHAT, None, max_output_tokens=None, max_model_len=50, truncation="disabled")
    with pytest.raises(APIError):
        build_prompt(template, CHAT, None, max_output_tokens=None, max_model_len=49,
                     truncation="disabled")


def test_page_orders_cursors_and_has_more():
    data = items(*[("user", str(i)) for i in range(5)])
    first = page(data, after=None, limit=2, order="desc")
    assert [i["id"] for i in first["data"]] == ["msg_4", "msg_3"] and first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == ("msg_4", "msg_3")
    rest = page(data, after="msg_3", limit=5, order="desc")
    assert [i["id"] for i in rest["data"]] == ["msg_2", "msg_1", "msg_0"] and not rest["has_more"]
    asc = page(data, after="msg_1", limit=2, order="asc")
    assert [i["id"] for i in asc["data"]] == ["msg_2", "msg_3"] and asc["has_more"]
    empty = page([], after=None, limit=20, order="desc")
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None,
                     "has_more": False}


def test_events_failure_before_the_message_skips_item_events():
    builder = ResponseEvents({"id": "resp_1", "status": "queued", "output": []}, "msg_1")
    events = [builder.created(), builder.in_progress()]
    builder.finish("failed", None, error="no worker")
    events += builder.closing()
    assert [e["type"] for e in events] == ["response.created", "response.in_progress",
                                           "response.failed"]
    assert [e["sequence_number"] for e in events] == [0, 1, 2]
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "no worker"}
    assert events[0]["response"]["status"] == "queued"      # earlier events keep their snapshot


def test_events_cancelled_has_no_terminal_event_and_retract_keeps_sequence_gapless():
    builder = ResponseEvents({"id": "resp_1", "status": "in_progress", "output": []}, "msg_1")
    builder.created(), builder.message_started(), builder.delta("x")
    builder.finish("cancelled", None)
    assert builder.closing() == [] and builder.response["output"][0]["status"] == "incomplete"
    builder.finish("completed", None)
    closing = builder.closing()
    builder.retract(closing)
    builder.finish("failed", None, error="not stored")
    again = builder.closing()
    assert [e["sequence_number"] for e in again] == [e["sequence_number"] for e in closing]
    assert again[-1]["type"] == "response.failed"
