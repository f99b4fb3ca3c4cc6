"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}`, never a stack trace.

Also the request limits, checked after parsing so each message states the configured limit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fspo_ray.serving.config import LimitsConfig
from fspo_ray.serving.schemas import ChatCompletionRequest, PersonalizeRequest, PreferenceIn

M = TypeVar("M", bound=BaseModel)

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 500: "server_error",
               503: "server_error"}


class APIError(Exception):
    """An error response; `message` is safe to show (no user text, no internals)."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.message, code=self.code, param=self.param)


def error_body(status: int, message: str, *, code: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def param_name(loc: Sequence[Any]) -> str:
    """('fspo', 'preferences', 0, 'chosen') -> 'fspo.preferences[0].chosen'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field (not part of this API)"
    if err["type"] == "missing":
        return "field required"
    msg = err["msg"]
    return msg.removeprefix("Value error, ")


def from_validation_error(e: ValidationError) -> APIError:
    """400 naming the first bad field; the message lists up to three (never the input values)."""
    errors = e.errors(include_input=False, include_url=False)
    params = [param_name(err["loc"]) or "body" for err in errors]
    parts = [f"{p}: {_message(err)}" for p, err in zip(params, errors, strict=True)][:3]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return APIError(400, "; ".join(parts) + more, code="invalid_value", param=params[0])


def parse_body(raw: bytes, model: type[M], limits: LimitsConfig) -> M:
    """Body bytes -> a validated request, or an APIError (413 over size, 400 otherwise)."""
    if len(raw) > limits.max_body_bytes:
        raise too_large(len(raw), limits)
    if not raw.strip():
        raise APIError(400, "request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise APIError(400, f"request body is not valid JSON{where}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e) from None


def too_large(size: int, limits: LimitsConfig) -> APIError:
    return APIError(413, f"request body has {size} bytes; the limit is {limits.max_body_bytes} "
                    "(limits.max_body_bytes)", code="request_too_large")


def _check_text(value: str, param: str, limits: LimitsConfig) -> None:
    if len(value) > limits.max_text_chars:
        raise APIError(400, f"{param} has {len(value)} characters; the limit is {limits.max_text_chars} "
                       "(limits.max_text_chars)", code="string_too_long", param=param)


def check_preferences(prefs: Sequence[PreferenceIn] | None, param: str, limits: LimitsConfig) -> None:
    if prefs is None:
        return
    if len(prefs) > limits.max_preferences:
        raise APIError(400, f"{param} has {len(prefs)} items; the limit is {limits.max_preferences} "
                       "(limits.max_preferences)", code="too_many_preferences", param=param)
    for i, p in enumerate(prefs):
        for name in ("question", "chosen", "rejected"):
            _check_text(getattr(p, name), f"{param}[{i}].{name}", limits)


def check_max_tokens(value: int | None, param: str, limits: LimitsConfig) -> None:
    if value is not None and value > limits.max_tokens:
        raise APIError(400, f"{param} is {value}; the limit is {limits.max_tokens} (limits.max_tokens)",
                       code="max_tokens_too_large", param=param)


def check_chat_limits(req: ChatCompletionRequest, limits: LimitsConfig) -> None:
    if len(req.messages) > limits.max_messages:
        raise APIError(400, f"messages has {len(req.messages)} items; the limit is {limits.max_messages} "
                       "(limits.max_messages)", code="too_many_messages", param="messages")
    for i, m in enumerate(req.messages):
        _check_text(m.content, f"messages[{i}].content", limits)
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    check_max_tokens(req.requested_max_tokens, param, limits)
    check_preferences(req.fspo.preferences, "fspo.preferences", limits)


def check_personalize_limits(req: PersonalizeRequest, limits: LimitsConfig) -> None:
    _check_text(req.question, "question", limits)
    check_max_tokens(req.max_tokens, "max_tokens", limits)
    check_preferences(req.preferences, "preferences", limits)


def question_of(req: ChatCompletionRequest) -> str:
    """The question is the last message, which must come from the user.

    The FSPO template is single-turn: earlier messages (including any system prompt) are
    accepted for compatibility but not rendered; preferences never enter a system role.
    """
    last = req.messages[-1]
    if last.role != "user":
        raise APIError(400, f"messages[{len(req.messages) - 1}].role: the last message must have role 'user', "
                       f"got {last.role!r}", code="invalid_value", param=f"messages[{len(req.messages) - 1}].role")
    if not last.content.strip():
        raise APIError(400, f"messages[{len(req.messages) - 1}].content: the question is empty", code="invalid_value",
                       param=f"messages[{len(req.messages) - 1}].content")
    return last.content
