"""What the gated server's routes share: ``add_routes``, the Service dependency, the request bodies' text check,
and the two answers a gate can force on any route (413 too large, 503 busy).

Guarantees: a body holding a lone surrogate anywhere (a value or a key, an extra field too) is
refused by ``ValidText`` before any field is read, naming where it is; ``too_large`` and
``gate_busy`` are in OpenAI's error shape and say which cap or config key applies.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError

from so8t.agent.service import Service
from so8t.gate.gate import Gate, TooLarge
from so8t.server.openai_schema import error_response

__all__ = ["ServiceDep", "add_routes", "ValidText", "find_lone_surrogate", "gate_busy", "get_service", "too_large"]


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Add each of ``router``'s routes to ``app`` itself, so ``app.routes`` lists every path.

    This FastAPI keeps an included router (``include_router``) as one opaque entry in
    ``app.routes``; the route inventory (the test that every POST under /admin is origin- and
    CSRF-checked reads it) needs the routes themselves."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"{route!r}: only API routes are mounted this way")
        app.add_api_route(
            route.path,
            route.endpoint,
            methods=sorted(route.methods or ()),
            name=route.name,
            tags=route.tags,
            dependencies=route.dependencies,
            status_code=route.status_code,
            summary=route.summary,
            description=route.description,
            responses=route.responses,
            deprecated=route.deprecated,
            include_in_schema=route.include_in_schema,
            response_model=route.response_model,
            response_class=route.response_class,
        )


def get_service(request: Request) -> Service:
    """The Service this app serves (``create_app`` puts it on ``app.state.service``)."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


_SURROGATE = re.compile("[\ud800-\udfff]")  # a decoded JSON string holds one only when it is unpaired


def find_lone_surrogate(value: Any) -> tuple[str, str, int] | None:
    """(where, the surrogate, its index) of the first lone surrogate in parsed JSON, else None.

    `where` reads like the request: "messages[1].content", "arguments.path", "arguments (a key)".
    Iterative, so a deeply nested body cannot exhaust the stack."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, str):
            if m := _SURROGATE.search(v):
                return where or "body", m.group(), m.start()
        elif isinstance(v, dict):
            stack += [(f"{where} (a key)" if where else "(a key)", k) for k in reversed(list(v)) if isinstance(k, str)]
            stack += [(f"{where}.{k}" if where else str(k), x) for k, x in reversed(list(v.items()))]
        elif isinstance(v, (list, tuple)):
            stack += [(f"{where}[{i}]", x) for i, x in reversed(list(enumerate(v)))]
    return None


class ValidText(BaseModel):
    """Refuses a body holding text that is not valid Unicode, before any field is read."""

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        if found := find_lone_surrogate(data):
            where, char, index = found
            where = where if len(where) <= 200 else where[:200] + "..."  # a path through a deep nest
            raise PydanticCustomError(
                "lone_surrogate",
                "{where}: lone surrogate {char} at character {index} is not valid Unicode text "
                "(a \\ud800-\\udfff escape must be one half of a surrogate pair); send the text as UTF-8",
                {"where": where, "char": f"\\u{ord(char):04x}", "index": index},
            )
        return data


def too_large(big: TooLarge, param: str) -> JSONResponse:
    """413 for a conversation over one of the gate's caps: which cap, the value, the config key."""
    return error_response(
        413, f"request too large for the safety gate: {big.message()}", param=param, kind="request_too_large"
    )


def gate_busy(gate: Gate) -> JSONResponse:
    """503 with Retry-After: the gate's queue is full (server config gate_queue_max)."""
    wait = gate.retry_after_s()
    return error_response(
        503,
        f"the safety gate is busy ({gate.queue_max} requests waiting, server config "
        f"gate_queue_max); nothing was run, retry after {wait} s",
        kind="server_busy",
        retry_after=wait,
    )
