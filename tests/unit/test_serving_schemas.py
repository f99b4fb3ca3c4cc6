"""Request parsing and limits: every bad input is a 400/413 OpenAI-style error naming the field."""

import json

import pytest

from fspo_ray.serving.config import LimitsConfig
from fspo_ray.serving.errors import (
    APIError,
    check_chat_limits,
    check_personalize_limits,
    parse_body,
    question_of,
)
from fspo_ray.serving.schemas import (
    ChatCompletionRequest,
    PersonalizeRequest,
    chat_completion,
    chunk,
    models_list,
)

LIMITS = LimitsConfig(max_preferences=2, max_stored_preferences=4, max_text_chars=20, max_messages=3,
                      max_tokens=16, max_body_bytes=2048)
PREF = {"question": "q?", "chosen": "good", "rejected": "bad"}


def body(**over):
    b = {"model": "fspo-rat", "messages": [{"role": "user", "content": "where to?"}],
         "fspo": {"user_id": "u-1", "preferences": [PREF]}}
    b.update(over)
    return b


def parse(b, model=ChatCompletionRequest):
    raw = b if isinstance(b, bytes) else json.dumps(b).encode()
    return parse_body(raw, model, LIMITS)


def error_of(fn, *a):
    with pytest.raises(APIError) as e:
        fn(*a)
    err = e.value
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}
    return err


def test_a_good_request_parses():
    req = parse(body(max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert req.fspo.user_id == "u-1" and req.fspo.preferences[0].to_preference().chosen == "good"
    assert req.requested_max_tokens == 8 and req.temperature == 0.0 and req.stream
    check_chat_limits(req, LIMITS)
    assert question_of(req) == "where to?"
    parts = parse(body(messages=[{"role": "system", "content": "be nice"},
                                 {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]))
    assert question_of(parts) == "a\nb"
    assert parse(body(fspo={"user_id": "u"})).fspo.preferences is None  # stored preferences will be used


@pytest.mark.parametrize(
    "raw, status, param, message",
    [
        (b"{not json", 400, None, "request body is not valid JSON at line 1 column 2"),
        (b"", 400, None, "request body is empty"),
        (b"[1, 2]", 400, None, "request body must be a JSON object, got list"),
        (body(messages=None), 400, "messages", "messages: Input should be a valid list"),
        ({k: v for k, v in body().items() if k != "fspo"}, 400, "fspo", "fspo: field required"),
        (body(temperature_x=1), 400, "temperature_x", "temperature_x: unknown field"),
        (body(max_tokens="5"), 400, "max_tokens", "max_tokens: Input should be a valid integer"),
        (body(max_tokens=0), 400, "max_tokens", "max_tokens: Input should be greater than or equal to 1"),
        (body(stream="yes"), 400, "stream", "stream: Input should be a valid boolean"),
        (body(n=2), 400, "n", "n: Input should be 1"),
        (body(fspo={"user_id": "u", "preferences": [PREF, {"question": "q", "chosen": "c"}]}), 400,
         "fspo.preferences[1].rejected", "fspo.preferences[1].rejected: field required"),
        (body(fspo={"user_id": "u", "preferences": [{**PREF, "chosen": 3}]}), 400,
         "fspo.preferences[0].chosen", "Input should be a valid string"),
        (body(fspo={"user_id": "u", "preferences": [{**PREF, "note": "x"}]}), 400,
         "fspo.preferences[0].note", "unknown field"),
        (body(fspo={"user_id": "u", "preferences": "all of them"}), 400, "fspo.preferences", "Input should be a valid list"),
        (body(fspo={"user_id": "bad id/../x"}), 400, "fspo.user_id", "String should match pattern"),
        (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]), 400,
         "messages[0].content", "must be a string or a list of {'type': 'text', 'text': ...} parts"),
        (body(messages=[{"role": "robot", "content": "x"}]), 400, "messages[0].role", "Input should be 'system'"),
        (b'{"a": "' + b"x" * 3000 + b'"}', 413, None, "request body has 3009 bytes; the limit is 2048 (limits.max_body_bytes)"),
    ],
)
def test_bad_bodies(raw, status, param, message):
    err = error_of(parse, raw)
    assert (err.status, err.param) == (status, param)
    assert message in err.message
    assert "Traceback" not in err.message and "3" not in (err.param or "")  # no input values echoed in params


def test_validation_messages_never_echo_input_values():
    err = error_of(parse, body(fspo={"user_id": "u", "preferences": [{**PREF, "chosen": ["SECRET-PREFERENCE"]}]}))
    assert "SECRET" not in err.message


@pytest.mark.parametrize(
    "over, param, message",
    [
        (dict(fspo={"user_id": "u", "preferences": [PREF] * 3}), "fspo.preferences",
         "fspo.preferences has 3 items; the limit is 2 (limits.max_preferences)"),
        (dict(fspo={"user_id": "u", "preferences": [{**PREF, "rejected": "x" * 21}]}), "fspo.preferences[0].rejected",
         "fspo.preferences[0].rejected has 21 characters; the limit is 20 (limits.max_text_chars)"),
        (dict(messages=[{"role": "user", "content": "y" * 25}]), "messages[0].content",
         "messages[0].content has 25 characters; the limit is 20"),
        (dict(messages=[{"role": "user", "content": "a"}] * 4), "messages", "messages has 4 items; the limit is 3"),
        (dict(max_tokens=17), "max_tokens", "max_tokens is 17; the limit is 16 (limits.max_tokens)"),
        (dict(max_completion_tokens=100), "max_completion_tokens", "max_completion_tokens is 100; the limit is 16"),
    ],
)
def test_limits_state_the_configured_limit(over, param, message):
    err = error_of(check_chat_limits, parse(body(**over)), LIMITS)
    assert err.status == 400 and err.param == param and err.message.startswith(message)


def test_the_question_is_the_last_user_message():
    err = error_of(question_of, parse(body(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])))
    assert err.param == "messages[1].role" and "the last message must have role 'user', got 'assistant'" in err.message
    err = error_of(question_of, parse(body(messages=[{"role": "user", "content": "  "}])))
    assert err.param == "messages[0].content"


def test_personalize_request():
    req = parse({"user_id": "u", "question": "q?", "max_tokens": 4}, PersonalizeRequest)
    check_personalize_limits(req, LIMITS)
    err = error_of(check_personalize_limits, parse({"user_id": "u", "question": "q?", "max_tokens": 99}, PersonalizeRequest), LIMITS)
    assert err.param == "max_tokens"
    assert error_of(parse, {"user_id": "u"}, PersonalizeRequest).param == "question"


def test_response_bodies_have_the_openai_shape():
    fspo = {"persona": "likes short answers", "cache_hit": True}
    c = chat_completion(model="m", text="hi", finish_reason="stop", prompt_tokens=10, completion_tokens=2, fspo=fspo)
    assert c["object"] == "chat.completion" and c["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert c["usage"] == {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12} and c["fspo"] is fspo
    assert c["id"].startswith("chatcmpl-")
    k = chunk(id="x", created=1, model="m", delta={"content": "a"})
    assert k["choices"] == [{"index": 0, "delta": {"content": "a"}, "finish_reason": None, "logprobs": None}]
    u = chunk(id="x", created=1, model="m", usage_block={"total_tokens": 3})
    assert u["choices"] == [] and u["usage"] == {"total_tokens": 3}
    assert models_list("m", 5)["data"] == [{"id": "m", "object": "model", "created": 5, "owned_by": "fspo-ray"}]
    # the OpenAI SDK parses these bodies
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    parsed = ChatCompletion.model_validate(c)
    assert parsed.choices[0].message.content == "hi" and parsed.model_extra["fspo"]["cache_hit"] is True
    assert ChatCompletionChunk.model_validate(k).choices[0].delta.content == "a"
