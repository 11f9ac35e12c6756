"""LLM backends: where an ALLOWed request goes after the gate.

The gate decides; a backend only answers. Every backend speaks the same small protocol
(``ChatBackend.complete(messages) -> str``) so the router does not care whether the LLM is
Ollama, llama.cpp's ``llama-server``, vLLM, or so8t's own ``so8t.server.llm_server``.

``OpenAIBackend`` is synchronous on purpose: the gated server calls it from FastAPI's thread
pool, and a plain ``httpx.Client`` there is simpler and safer than nesting event loops.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, runtime_checkable

import httpx

_EXCERPT_CHARS = 200


@dataclass(frozen=True)
class ToolCallProposal:
    id: str
    name: str
    arguments: Any  # as the model sent it: usually a JSON string (OpenAI), parsed later


@dataclass(frozen=True)
class AssistantTurn:
    content: str | None
    tool_calls: list[ToolCallProposal] = field(default_factory=list)


class BackendError(RuntimeError):
    """An LLM backend could not produce an answer.

    The message names the backend (URL and model) and what went wrong: the HTTP status with a
    short excerpt of the body, the transport error, or "timed out after X s". ``status`` is the
    last HTTP status seen (None for transport errors and timeouts). ``kind`` says which failure it
    was, so the gated server can answer with the right status (504 for a timeout, 502 otherwise):

    - ``"timeout"``: no answer within ``timeout_s`` (connect, write or read), after every retry;
    - ``"unreachable"``: the connection failed or was closed mid-answer (nothing listening, the
      server stopped, a bad URL);
    - ``"bad_response"``: a 2xx whose body is not JSON or not a chat completion;
    - ``"http_error"``: the backend answered with an error status (4xx, or 429/5xx after retries).
    """

    KINDS = ("timeout", "unreachable", "bad_response", "http_error")

    def __init__(self, message: str, *, status: int | None = None, kind: str = "http_error") -> None:
        super().__init__(message)
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {', '.join(self.KINDS)}, got {kind!r}")
        self.status = status
        self.kind = kind


@runtime_checkable
class ChatBackend(Protocol):
    """What the agent needs from an LLM: a chat turn in, the assistant's text out."""

    name: str

    def complete(self, messages: list[dict[str, str]], *, max_tokens: int = 256, temperature: float = 0.0) -> str:
        """Return the assistant's reply to ``messages``; raise BackendError when there is none."""
        ...


def _excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class OpenAIBackend:
    """A client for any OpenAI-compatible chat server.

    ``base_url`` includes the API version prefix, exactly as the server documents it, e.g.
    ``http://localhost:11434/v1`` (Ollama), ``http://localhost:8080/v1`` (llama-server),
    ``http://localhost:8000/v1`` (vLLM), or ``ServerHandle.url + "/v1"`` for so8t's own
    server. A trailing slash is accepted. Nothing is appended: servers differ in their prefix,
    and guessing would hide a wrong URL behind a confusing 404.

    Retries (up to ``retries`` more attempts, waiting ``backoff_s * 2**attempt``) cover what
    another try can fix: transport errors, timeouts, 429 and 5xx. A Retry-After header is
    honoured up to ``max_retry_after_s``. Other 4xx are the caller's mistake and are never
    retried. ``timeout_s`` applies to each phase of each attempt (connect, write, read).

    One ``httpx.Client`` is shared by all calls (connection reuse; it is thread-safe), so
    close the backend or use it as a context manager.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60,
        retries: int = 2,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        max_retry_after_s: float = 30.0,
    ) -> None:
        url = base_url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https:// (and include /v1), got {base_url!r}")
        if not model:
            raise ValueError("model must be a non-empty model name, e.g. 'smollm2:135m' for Ollama")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if retries < 0 or backoff_s < 0 or max_retry_after_s < 0:
            raise ValueError("retries, backoff_s and max_retry_after_s must be >= 0")
        self.base_url = url
        self.model = model
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_retry_after_s = float(max_retry_after_s)
        self.name = f"openai:{model}@{url}"
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"  # never echoed in errors or repr
        self._client = httpx.Client(timeout=httpx.Timeout(self.timeout_s), headers=headers, transport=transport)

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r})"

    # -- public API ---------------------------------------------------------------------------

    def complete(self, messages: list[dict[str, str]], *, max_tokens: int = 256, temperature: float = 0.0) -> str:
        """POST /chat/completions (non-streaming) and return choices[0].message.content."""
        payload = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": False,
        }
        url = f"{self.base_url}/chat/completions"
        body = self._request("POST", url, json=payload)
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise BackendError(
                f"{self._where('POST', url)}: malformed response, expected choices[0].message.content "
                f"to be a string: {_excerpt(repr(body))}",
                kind="bad_response",
            )
        return content

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ) -> AssistantTurn:
        """One assistant turn with OpenAI function calling: text and/or proposed tool calls.
        The calls are only proposals: the caller validates and gates each before anything runs."""
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": False,
        }
        if tools:
            payload["tools"] = tools
        url = f"{self.base_url}/chat/completions"
        body = self._request("POST", url, json=payload)
        try:
            message = body["choices"][0]["message"]
            content = message.get("content")
            raw_calls = message.get("tool_calls") or []
            calls = [
                ToolCallProposal(str(c.get("id") or f"call_{k}"), c["function"]["name"], c["function"]["arguments"])
                for k, c in enumerate(raw_calls)
            ]
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(
                f"{self._where('POST', url)}: malformed response, expected choices[0].message with "
                f"content and/or tool_calls: {_excerpt(repr(body))}",
                kind="bad_response",
            ) from None
        if content is not None and not isinstance(content, str):
            raise BackendError(
                f"{self._where('POST', url)}: malformed response: content is not a string", kind="bad_response"
            )
        return AssistantTurn(content, calls)

    def list_models(self) -> list[str]:
        """GET /models: the model ids the server offers (useful to check ``model`` before a run)."""
        url = f"{self.base_url}/models"
        body = self._request("GET", url)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
            raise BackendError(
                f"{self._where('GET', url)}: malformed response, expected data[*].id: {_excerpt(repr(body))}",
                kind="bad_response",
            )
        return [m["id"] for m in data]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _where(self, method: str, url: str) -> str:
        return f"{method} {url} (model {self.model!r})"

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            asked = _retry_after_seconds(response.headers.get("Retry-After"))
            if asked is not None:
                return min(asked, self.max_retry_after_s)
        return self.backoff_s * (2**attempt)

    def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        """Send with retries; return the decoded JSON body of a 2xx, else raise BackendError."""
        attempts = self.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            tries = f" [{attempt + 1} attempts]" if attempt else ""
            response: httpx.Response | None = None
            kind = "unreachable"
            try:
                response = self._client.request(method, url, **kwargs)
            except httpx.TimeoutException as exc:
                problem, kind = f"timed out after {self.timeout_s:g} s ({type(exc).__name__})", "timeout"
            except httpx.UnsupportedProtocol as exc:  # a bad URL does not get better with retries
                raise BackendError(f"{self._where(method, url)}: {exc}", kind="unreachable") from exc
            except httpx.TransportError as exc:
                problem = f"connection failed: {type(exc).__name__}: {exc or 'no detail'}"
            except httpx.HTTPError as exc:  # e.g. a body that cannot be decoded: not transient
                raise BackendError(
                    f"{self._where(method, url)}: {type(exc).__name__}: {exc}", kind="bad_response"
                ) from exc
            else:
                status = response.status_code
                if 200 <= status < 300:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise BackendError(
                            f"{self._where(method, url)}: HTTP {status} but the body is not JSON: "
                            f"{_excerpt(response.text) or '(empty)'}",
                            status=status,
                            kind="bad_response",
                        ) from exc
                problem = f"HTTP {status}: {_excerpt(response.text) or '(empty body)'}"
                # 429 and 5xx: the server is overloaded or briefly broken, not the request.
                if not (status == 429 or status >= 500) or last:
                    raise BackendError(f"{self._where(method, url)}: {problem}{tries}", status=status)
                time.sleep(self._delay(attempt, response))
                continue
            if last:
                raise BackendError(f"{self._where(method, url)}: {problem}{tries}", kind=kind)
            time.sleep(self._delay(attempt, None))
        raise AssertionError("unreachable")  # the loop always returns or raises
