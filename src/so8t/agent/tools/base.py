"""What every agent tool is made of, so the gate can see a call before it runs.

A tool is a set of actions (`files.read`, `sql.query`, `mail.send`, ...). Each action has a
pydantic model for its arguments (extra fields forbidden; its JSON schema is what the LLM is
shown for function calling), a default risk tier, and a function that runs it. `Toolset`
validates a proposed call completely -- known action, arguments within the schema, size
limit -- before anything runs; the tool loop gates the validated, canonical call, and only
then calls `execute`.

Risk tiers (the server's config maps tiers or single actions to autonomy levels):
    read    looks, changes nothing                      (files.read, sql.query, browser.open)
    write   changes something the user owns, reversible (files.write, calendar.create, mail.draft)
    delete  destroys something                          (files.delete, calendar.delete)
    send    leaves the machine or involves other people (mail.send, calendar.invite)
    pay     moves money

A tier is per action; an action may also `review` each validated call and name a reason it
needs a person even when its tier runs automatically (a SQL query whose cost is unbounded):
the call's `needs_approval`, which the tool loop's policy never runs as 'auto'.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from so8t.canonical import canonical_json

Risk = Literal["read", "write", "delete", "send", "pay"]
RISKS: tuple[str, ...] = ("read", "write", "delete", "send", "pay")
MAX_ARGS_BYTES = 64_000


class ToolError(Exception):
    """A call that cannot run: the message says why (unknown action, bad argument and which
    field, a path outside the root, a URL off the allowlist...). Nothing was executed."""


@dataclass(frozen=True)
class ToolAction:
    name: str  # "<tool>.<action>", e.g. "files.read"
    description: str
    args: type[BaseModel]  # extra="forbid"; validation = the schema
    risk: Risk
    run: Callable[[Any], dict]  # receives the validated args model
    review: Callable[[Any], str | None] | None = None  # validated args -> why this call needs a person, or None

    def schema(self) -> dict:
        """The OpenAI function-calling description of this action."""
        params = self.args.model_json_schema()
        params.pop("title", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": params},
        }


@dataclass(frozen=True)
class ValidatedCall:
    name: str
    args: BaseModel
    canonical: str  # canonical JSON of {"name", "arguments"}: what is gated, approved, hashed
    risk: Risk
    needs_approval: str | None = None  # the action's review: why a person must approve it even on 'auto'


class Toolset:
    def __init__(self, actions: Iterable[ToolAction] = (), max_args_bytes: int = MAX_ARGS_BYTES):
        self.actions: dict[str, ToolAction] = {}
        self.max_args_bytes = max_args_bytes
        for a in actions:
            self.add(a)

    def add(self, action: ToolAction) -> None:
        if action.name in self.actions:
            raise ValueError(f"tool action {action.name!r} is defined twice")
        if action.risk not in RISKS:
            raise ValueError(f"{action.name}: risk {action.risk!r} is not one of {', '.join(RISKS)}")
        self.actions[action.name] = action

    def schemas(self) -> list[dict]:
        return [a.schema() for a in self.actions.values()]

    def validate(self, name: str, arguments: Any) -> ValidatedCall:
        """Check a proposed call completely; raise ToolError saying what is wrong."""
        action = self.actions.get(name)
        if action is None:
            raise ToolError(f"unknown tool {name!r}; available: {', '.join(sorted(self.actions)) or 'none'}")
        if not isinstance(arguments, dict):
            raise ToolError(f"{name}: arguments must be a JSON object, got {type(arguments).__name__}")
        try:
            text = canonical_json({"name": name, "arguments": arguments})
        except ValueError as exc:
            raise ToolError(f"{name}: {exc}") from None
        if len(text.encode("utf-8")) > self.max_args_bytes:
            raise ToolError(
                f"{name}: arguments are {len(text.encode('utf-8'))} bytes, over the limit of {self.max_args_bytes}"
            )
        try:
            args = action.args.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
            )
            raise ToolError(f"{name}: invalid arguments: {problems}") from None
        why = None
        if action.review is not None:
            try:
                why = action.review(args)
            except Exception as exc:  # noqa: BLE001 - a call whose cost cannot be judged waits for a person
                why = f"its cost could not be judged ({type(exc).__name__}: {exc})"
        return ValidatedCall(name, args, text, action.risk, why)

    def execute(self, call: ValidatedCall) -> dict:
        """Run a validated call. Tools raise ToolError for a refused operation."""
        return self.actions[call.name].run(call.args)
