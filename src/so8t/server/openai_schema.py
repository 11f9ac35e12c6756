"""OpenAI's chat-completions wire format, in one place for both servers: the upstream LLM
(``so8t.server.llm_server``) and the gated server (``so8t.server.app`` and its routes).

Guarantees:

* One request schema. ``ChatRequest`` takes what ordinary OpenAI clients send: unknown fields
  (user, presence_penalty, ...) are ignored, not rejected; ``messages`` is non-empty, each with a
  role and string content, a list of ``{"type": "text"}`` parts, or None (an assistant turn that
  only made tool calls); ``max_tokens`` / ``max_completion_tokens`` are 1..``MAX_TOKENS_CAP``
  (default 256); ``temperature`` 0..2; ``top_p`` in (0, 1]; ``n`` must be 1.
* One error shape. Every 4xx / 5xx either server sends is ``{"error": {"message", "type",
  "param", "code"}}`` (``error_response``), so OpenAI clients show the real reason; a request
  that fails validation is a 400 whose message names every bad field and whose ``param`` is the
  first (``validation_error``), and a lone surrogate is named by where it is in the body.
* One response shape. ``completion`` and ``chunk_head`` / ``delta_choice`` build the
  ``chat.completion`` and ``chat.completion.chunk`` objects; ``sse`` frames one event
  (``data: <json>`` and a blank line, UTF-8 text kept as is) and ``SSE_DONE`` ends a stream.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_TOKENS_CAP",
    "SSE_DONE",
    "ChatMessage",
    "ChatRequest",
    "StreamOptions",
    "TextPart",
    "chunk_head",
    "completion",
    "delta_choice",
    "describe_validation",
    "error_response",
    "invalid_request",
    "sse",
    "validation_error",
]

MAX_TOKENS_CAP = 2048
SSE_DONE = "data: [DONE]\n\n"


# -- requests -----------------------------------------------------------------------------------


class TextPart(BaseModel):
    """One part of a list-style message content; only text is meaningful to a text-only LM."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str = Field(min_length=1)
    # None is what OpenAI clients send for an assistant turn that only made tool calls.
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    # Unknown OpenAI fields (user, presence_penalty, ...) are ignored rather than rejected, so
    # ordinary OpenAI clients work unchanged.
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def budget(self) -> int:
        # max_completion_tokens is the newer OpenAI name for the same thing.
        return self.max_tokens or self.max_completion_tokens or 256

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s]


# -- errors -------------------------------------------------------------------------------------


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    kind: str = "invalid_request_error",
    code: str | None = None,
    extra: dict | None = None,
    retry_after: int | None = None,
) -> JSONResponse:
    """OpenAI's error shape, so OpenAI clients (and OpenAIBackend's excerpt) show the real reason.
    ``extra``: more top-level fields next to "error" (the gated server's "so8t" decision);
    ``retry_after``: seconds, sent as the Retry-After header (a 503 that will pass)."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}, **(extra or {})}
    headers = None if retry_after is None else {"Retry-After": str(retry_after)}
    return JSONResponse(status_code=status, content=body, headers=headers)


def describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    """("invalid request: <where>: <why>; ...", the first bad field) of a validation error."""
    parts, first_param = [], None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        first_param = first_param or (loc[0] if loc else None)
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts), first_param


def validation_error(exc: RequestValidationError) -> JSONResponse:
    """The 400 for a request that failed validation; a lone surrogate (``ValidText`` in the
    gated server) names its own field, as the error is the body's, not one field's type."""
    for err in exc.errors():
        if err.get("type") == "lone_surrogate":
            return error_response(400, f"invalid request: {err['msg']}", param=err["ctx"]["where"])
    message, param = describe_validation(exc)
    return error_response(400, message, param=param)


async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """The exception handler both servers install for ``RequestValidationError``."""
    return validation_error(exc)


# -- responses ----------------------------------------------------------------------------------


def completion(cid: str, created: int, model: str, text: str, finish: str, **extra: Any) -> dict[str, Any]:
    """A whole ``chat.completion``: one assistant message; ``extra`` after the choices (usage, so8t)."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        **extra,
    }


def chunk_head(cid: str, created: int, model: str) -> dict[str, Any]:
    """The fields every ``chat.completion.chunk`` of one stream starts with."""
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}


def delta_choice(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": finish}


def sse(body: dict[str, Any]) -> str:
    """One server-sent event carrying ``body`` as JSON (non-ASCII text kept readable)."""
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
