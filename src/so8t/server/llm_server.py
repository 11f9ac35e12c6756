"""An OpenAI-compatible server for a plain Hugging Face causal LM, and a way to run any app in a thread.

``create_llm_app`` is the *upstream* LLM, not the gate: it answers whatever it is asked. It exists
so that so8t's tests and demo have a real OpenAI-compatible server on localhost (e.g. the
embedded SmolLM2 model) that ``so8t.agent.backends.OpenAIBackend`` can call exactly as it would
call Ollama, llama-server or vLLM.

Supported: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` with ``model``,
``messages`` (string content, or a list of ``{"type": "text"}`` parts), ``max_tokens`` (or
``max_completion_tokens``; default 256, at most 2048), ``temperature`` (0 = greedy; > 0 =
sampling, reproducible with ``seed``), ``top_p``, ``stop``, ``stream`` and
``stream_options.include_usage``. Other OpenAI fields are accepted and ignored; ``n`` must be 1.
The ``model`` field is not checked: there is one model, and its name is echoed back.

Streaming is honest about what it is: the whole completion is generated first (under the model
lock), then sent as OpenAI ``chat.completion.chunk`` events, about one per generated token, ending
with ``data: [DONE]``. Clients see the streaming protocol; they do not get the first token early.

``serve_in_thread`` starts any ASGI app under uvicorn in a daemon thread on a free port and
returns once it accepts connections; the gated server's tests and the demo reuse it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from so8t.model.prompt import ensure_chat_template, render_prompt

log = logging.getLogger(__name__)

MAX_TOKENS_CAP = 2048


# -- request schema ---------------------------------------------------------------------------


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


# -- helpers ----------------------------------------------------------------------------------


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    kind: str = "invalid_request_error",
    code: str | None = None,
    extra: dict | None = None,
) -> JSONResponse:
    """OpenAI's error shape, so OpenAI clients (and OpenAIBackend's excerpt) show the real reason.
    ``extra``: more top-level fields next to "error" (the gated server's "so8t" decision)."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}, **(extra or {})}
    return JSONResponse(status_code=status, content=body)


def describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, first_param = [], None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        first_param = first_param or (loc[0] if loc else None)
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts), first_param


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a turn: the generation config's EOS (often a list) and the tokenizer's."""
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(int(i) for i in gen_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _stream_pieces(tokenizer: Any, ids: list[int], final: str) -> list[str]:
    """Split ``final`` into about one piece per token, never inside a multi-byte character.

    Decoding token prefixes and keeping only what is a prefix of the final text guarantees the
    pieces join to exactly ``final`` (the non-streamed answer), whatever the tokenizer does.
    """
    pieces, emitted = [], 0
    for i in range(1, len(ids)):
        text = tokenizer.decode(ids[:i], skip_special_tokens=True)
        if len(text) > emitted and not text.endswith("\ufffd") and final.startswith(text):
            pieces.append(final[emitted : len(text)])
            emitted = len(text)
    if emitted < len(final):
        pieces.append(final[emitted:])
    return pieces


@dataclass
class _Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


class _PromptError(ValueError):
    """The request is well formed but this model cannot take it (template refused, too long)."""


# -- the app ----------------------------------------------------------------------------------


def create_llm_app(model: Any, tokenizer: Any, model_name: str = "so8t-local") -> FastAPI:
    """An OpenAI-compatible FastAPI app around ``model`` (a HF causal LM) and its ``tokenizer``.

    No gate: this is the LLM that backends call. One generate runs at a time (a lock around
    tokenize + generate + decode: one model, and fast tokenizers are not safe to share across
    threads). The model-calling endpoint is a plain ``def`` so FastAPI runs it in its thread
    pool and the event loop stays free for /health while a generation runs.
    """
    ensure_chat_template(tokenizer)
    model.eval()
    lock = threading.Lock()
    created_at = int(time.time())
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids[0] if eos_ids else None)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)

    app = FastAPI(title=f"so8t local LLM ({model_name})", version="1")

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation(exc)
        return error_response(400, message, param=param)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": created_at, "owned_by": "so8t"}],
        }

    def generate(req: ChatRequest) -> _Generation:
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        with lock:
            try:
                prompt = render_prompt(tokenizer, messages)
            except Exception as exc:  # jinja raise_exception, unsupported roles, ...
                raise _PromptError(f"the model's chat template rejected the messages: {exc}") from exc
            enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")  # the template holds the specials
            n_prompt = int(enc["input_ids"].shape[1])
            budget = req.budget()
            if context is not None:
                if n_prompt >= context:
                    raise _PromptError(f"the prompt is {n_prompt} tokens; this model's context is {context} tokens")
                budget = min(budget, context - n_prompt)  # the rest of the context; finish_reason says "length"
            kwargs: dict[str, Any] = {
                "max_new_tokens": budget,
                "do_sample": req.temperature > 0,
                "eos_token_id": eos_ids or None,
                "pad_token_id": pad_id,
            }
            if req.temperature > 0:
                # OpenAI semantics: temperature and top_p only (no model-default top_k).
                kwargs.update(temperature=req.temperature, top_p=req.top_p, top_k=0)
            device = getattr(model, "device", torch.device("cpu"))
            inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(device)):
                if req.temperature > 0 and req.seed is not None:
                    torch.manual_seed(req.seed)  # inside fork_rng: the process-wide RNG is left as it was
                out = model.generate(**inputs, **kwargs)
            ids = out[0, n_prompt:].tolist()
            text = tokenizer.decode(ids, skip_special_tokens=True)
        stopped = bool(ids) and ids[-1] in eos_ids
        if stopped:
            ids = ids[:-1]  # the end-of-turn token is not part of the text (it still counts as usage)
        completion_tokens = len(ids) + int(stopped)
        finish: Literal["stop", "length"] = "stop" if stopped or completion_tokens < budget else "length"
        cut = [text.find(s) for s in req.stop_strings() if s in text]
        if cut:  # like OpenAI: cut before the stop sequence; usage still counts what was generated
            text, finish = text[: min(cut)], "stop"
        return _Generation(
            text=text, token_ids=ids, prompt_tokens=n_prompt, completion_tokens=completion_tokens, finish_reason=finish
        )

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest) -> Any:  # plain def: FastAPI runs it in its thread pool
        try:
            gen = generate(req)
        except _PromptError as exc:
            return error_response(400, str(exc), param="messages")
        except Exception as exc:
            log.exception("generation failed")
            return error_response(500, f"generation failed: {type(exc).__name__}: {exc}", kind="server_error")
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = {
            "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens,
        }
        if not req.stream:
            return {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": gen.text},
                        "finish_reason": gen.finish_reason,
                    }
                ],
                "usage": usage,
            }
        with lock:  # decoding prefixes uses the tokenizer too
            pieces = _stream_pieces(tokenizer, gen.token_ids, gen.text)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            _sse(cid, created, model_name, pieces, gen.finish_reason, usage if include_usage else None),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


def _cuda_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _sse(
    cid: str, created: int, model_name: str, pieces: list[str], finish: str, usage: dict[str, int] | None
) -> Iterator[str]:
    """OpenAI's chunk sequence: a role delta, content deltas, a finish delta, optional usage, [DONE]."""

    def chunk(delta: dict[str, str], finish_reason: str | None) -> str:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    for piece in pieces:
        yield chunk({"content": piece}, None)
    yield chunk({}, finish)
    if usage is not None:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "choices": [],
            "usage": usage,
        }
        yield f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"


# -- running an app in a thread ---------------------------------------------------------------


class _ThreadServer(uvicorn.Server):
    # Signal handlers can only be installed from the main thread. Current uvicorn skips them
    # there already (capture_signals); older releases call this hook, which we make a no-op.
    def install_signal_handlers(self) -> None:  # pragma: no cover - older uvicorn only
        pass


class ServerHandle:
    """A running uvicorn server in a daemon thread: ``.url`` to call it, ``.stop()`` to end it."""

    def __init__(
        self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket, host: str, port: int
    ) -> None:
        self._server, self._thread, self._sock = server, thread, sock
        self.host, self.port = host, port
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask uvicorn to shut down, wait for it, and force it if it does not finish in time.

        Safe to call twice. In-flight requests get the app's graceful-shutdown window
        (``serve_in_thread(graceful_timeout_s=...)``), then they are cancelled.
        """
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout_s)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError(f"server at {self.url} did not stop within {2 * timeout_s:g} s")

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerHandle(url={self.url!r}, running={self.running})"


def serve_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout_s: float = 15.0,
    graceful_timeout_s: float = 3.0,
    log_level: str = "warning",
) -> ServerHandle:
    """Serve ``app`` with uvicorn in a daemon thread; return once it is accepting connections.

    We bind the socket ourselves (port 0 = a free port chosen by the OS) and hand it to uvicorn,
    so the URL is known before startup and there is no find-a-port-then-bind race. uvicorn's
    logging config is left alone (``log_config=None``) so starting a server in a test or a
    demo does not reconfigure the host process's logging. Raises RuntimeError if the server
    does not start (the app's startup failed, or ``startup_timeout_s`` passed).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    # A wildcard bind answers on loopback; a URL with 0.0.0.0 or :: is not something to call.
    url_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound_host, bound_host)

    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=graceful_timeout_s,  # type: ignore[arg-type]  # hinted int; asyncio.timeout takes a float
        lifespan="auto",
    )
    server = _ThreadServer(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # SystemExit from a failed startup included: report it, do not lose it
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"so8t-uvicorn-{bound_port}", daemon=True)
    thread.start()
    handle = ServerHandle(server, thread, sock, url_host, bound_port)
    url = handle.url
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive():
            sock.close()
            cause = failure[0] if failure else None
            raise RuntimeError(f"server at {url} exited during startup: {cause!r}") from cause
        if time.monotonic() > deadline:
            with contextlib.suppress(RuntimeError):  # the timeout is the news, not a slow stop
                handle.stop(timeout_s=2.0)
            raise RuntimeError(f"server at {url} did not start within {startup_timeout_s:g} s")
        time.sleep(0.01)
    return handle
