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

The request schema, the error shape and the response objects are ``so8t.server.openai_schema``,
shared with the gated server (``ChatRequest``, ``error_response`` and ``describe_validation`` are
re-exported here, where they used to live).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse

from so8t.model.prompt import ensure_chat_template, render_prompt
from so8t.server.openai_schema import (  # the schema and error helpers, re-exported where they were
    MAX_TOKENS_CAP,
    SSE_DONE,
    ChatMessage,
    ChatRequest,
    StreamOptions,
    TextPart,
    chunk_head,
    completion,
    delta_choice,
    describe_validation,
    error_response,
    invalid_request,
    sse,
)

__all__ = [
    "MAX_TOKENS_CAP",
    "ChatMessage",
    "ChatRequest",
    "LocalLM",
    "ServerHandle",
    "StreamOptions",
    "TextPart",
    "create_llm_app",
    "describe_validation",
    "error_response",
    "serve_in_thread",
]

log = logging.getLogger(__name__)


# -- helpers ----------------------------------------------------------------------------------


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


class LocalLM:
    """One HF causal LM and its tokenizer behind a lock: what ``create_llm_app`` serves.

    One generate runs at a time (a lock around tokenize + generate + decode: one model, and
    fast tokenizers are not safe to share across threads)."""

    def __init__(self, model: Any, tokenizer: Any, name: str) -> None:
        ensure_chat_template(tokenizer)
        model.eval()
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.lock = threading.Lock()
        self.created_at = int(time.time())
        self.eos_ids = _eos_ids(model, tokenizer)
        eos = self.eos_ids[0] if self.eos_ids else None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self.context = getattr(getattr(model, "config", None), "max_position_embeddings", None)

    def generate(self, req: ChatRequest) -> _Generation:
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        with self.lock:
            try:
                prompt = render_prompt(self.tokenizer, messages)
            except Exception as exc:  # jinja raise_exception, unsupported roles, ...
                raise _PromptError(f"the model's chat template rejected the messages: {exc}") from exc
            # the template holds the special tokens
            enc = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
            n_prompt = int(enc["input_ids"].shape[1])
            budget = self._budget(req, n_prompt)
            ids = self._sample(req, enc, budget)[n_prompt:]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        stopped = bool(ids) and ids[-1] in self.eos_ids
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

    def _budget(self, req: ChatRequest, n_prompt: int) -> int:
        """New tokens allowed: the request's budget, at most the rest of the context."""
        budget = req.budget()
        if self.context is not None:
            if n_prompt >= self.context:
                raise _PromptError(f"the prompt is {n_prompt} tokens; this model's context is {self.context} tokens")
            budget = min(budget, self.context - n_prompt)  # the rest of the context; finish_reason says "length"
        return budget

    def _sample(self, req: ChatRequest, enc: Any, budget: int) -> list[int]:
        """The prompt's and the generated token ids (under the lock)."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": budget,
            "do_sample": req.temperature > 0,
            "eos_token_id": self.eos_ids or None,
            "pad_token_id": self.pad_id,
        }
        if req.temperature > 0:
            # OpenAI semantics: temperature and top_p only (no model-default top_k).
            kwargs.update(temperature=req.temperature, top_p=req.top_p, top_k=0)
        device = getattr(self.model, "device", torch.device("cpu"))
        inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(device)):
            if req.temperature > 0 and req.seed is not None:
                torch.manual_seed(req.seed)  # inside fork_rng: the process-wide RNG is left as it was
            out = self.model.generate(**inputs, **kwargs)
        return out[0].tolist()


def create_llm_app(model: Any, tokenizer: Any, model_name: str = "so8t-local") -> FastAPI:
    """An OpenAI-compatible FastAPI app around ``model`` (a HF causal LM) and its ``tokenizer``.

    No gate: this is the LLM that backends call. One generate runs at a time (``LocalLM``). The
    model-calling endpoint is a plain ``def`` so FastAPI runs it in its thread pool and the
    event loop stays free for /health while a generation runs.
    """
    app = FastAPI(title=f"so8t local LLM ({model_name})", version="1")
    app.state.lm = LocalLM(model, tokenizer, model_name)
    app.exception_handler(RequestValidationError)(invalid_request)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    return app


def _lm(request: Request) -> LocalLM:
    return request.app.state.lm


LM = Annotated[LocalLM, Depends(_lm)]


async def health() -> dict[str, str]:
    return {"status": "ok"}


async def models(lm: LM) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": lm.name, "object": "model", "created": lm.created_at, "owned_by": "so8t"}],
    }


def chat_completions(req: ChatRequest, lm: LM) -> Any:  # plain def: FastAPI runs it in its thread pool
    try:
        gen = lm.generate(req)
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
        return completion(cid, created, lm.name, gen.text, gen.finish_reason, usage=usage)
    with lm.lock:  # decoding prefixes uses the tokenizer too
        pieces = _stream_pieces(lm.tokenizer, gen.token_ids, gen.text)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return StreamingResponse(
        _sse(cid, created, lm.name, pieces, gen.finish_reason, usage if include_usage else None),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _cuda_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _sse(
    cid: str, created: int, model_name: str, pieces: list[str], finish: str, usage: dict[str, int] | None
) -> Iterator[str]:
    """OpenAI's chunk sequence: a role delta, content deltas, a finish delta, optional usage, [DONE]."""
    head = chunk_head(cid, created, model_name)
    yield sse({**head, "choices": [delta_choice({"role": "assistant", "content": ""}, None)]})
    for piece in pieces:
        yield sse({**head, "choices": [delta_choice({"content": piece}, None)]})
    yield sse({**head, "choices": [delta_choice({}, finish)]})
    if usage is not None:
        yield sse({**head, "choices": [], "usage": usage})
    yield SSE_DONE


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
