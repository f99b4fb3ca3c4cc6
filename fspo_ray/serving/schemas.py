"""Request and response bodies: OpenAI chat completions (+ the `fspo` namespace) and the native API.

Requests are strict: unknown fields and wrong types are errors naming the field, never coerced.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from fspo_ray.episodes import Preference

USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
UserId = Annotated[str, StringConstraints(strict=True, pattern=USER_ID_PATTERN)]
Text = Annotated[str, StringConstraints(strict=True, min_length=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PreferenceIn(Strict):
    question: Text
    chosen: Text
    rejected: Text

    def to_preference(self) -> Preference:
        return Preference(self.question, self.chosen, self.rejected)


class FspoOptions(Strict):
    """The `fspo` namespace of a chat completion request (through the SDK's extra_body)."""

    user_id: UserId
    preferences: list[PreferenceIn] | None = Field(
        None, description="The user's preferences; omitted: the ones stored for user_id."
    )
    context: Literal["user", "none"] = Field(
        "user", description="'user': personalized (shots + persona); 'none': the unpersonalized answer, from the "
        "question alone (the page's side-by-side view), by page.unpersonalized_model when set."
    )


class StreamOptions(Strict):
    include_usage: bool = False


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, value: Any) -> Any:
        # The SDK may send content as a list of parts; only text parts carry a question here.
        if isinstance(value, list):
            texts = []
            for part in value:
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                        and set(part) <= {"type", "text"}):
                    raise ValueError("must be a string or a list of {'type': 'text', 'text': ...} parts")
                texts.append(part["text"])
            return "\n".join(texts)
        return value


class ChatCompletionRequest(Strict):
    model: str
    messages: list[ChatMessage] = Field(..., min_length=1)
    fspo: FspoOptions
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    user: str | None = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class PersonalizeRequest(Strict):
    """POST /v1/personalize: the native two-stage call."""

    user_id: UserId
    question: Text
    preferences: list[PreferenceIn] | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None


class AddPreferencesRequest(Strict):
    """POST /v1/users/{id}/preferences, e.g. from thumbs-up/down feedback on two answers."""

    preferences: list[PreferenceIn] = Field(..., min_length=1)


# --------------------------------------------------------------------------- responses


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def fspo_block(*, user_id: str, persona: str | None, cache_hit: bool, preferences_used: int, source: str) -> dict:
    return {
        "user_id": user_id,
        "persona": persona,
        "cache_hit": cache_hit,
        "preferences_used": preferences_used,
        "preferences_source": source,
    }


def chat_completion(*, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
                    fspo: dict) -> dict:
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason, "logprobs": None}
        ],
        "usage": usage(prompt_tokens, completion_tokens),
        "fspo": fspo,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chunk(*, id: str, created: int, model: str, delta: dict | None = None, finish_reason: str | None = None,
          fspo: dict | None = None, usage_block: dict | None = None) -> dict:
    body: dict[str, Any] = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model}
    if usage_block is not None:
        body["choices"] = []
        body["usage"] = usage_block
    else:
        body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason, "logprobs": None}]
    if fspo is not None:
        body["fspo"] = fspo
    return body


def models_list(model_id: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "fspo-ray"}]}
