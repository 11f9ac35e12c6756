"""What an operator sees of a queued request, and what an operator's edit of one means, per kind.

The approvals page (``so8t.server.approval_view``) renders ``request_view``; the edit route calls
``edit_approval``. Both are here, in the agent layer, so the server holds no per-kind logic.

``chat`` (``{"kind": "chat", "messages": [...], "max_tokens", "temperature"}``)
    Shown: the conversation. Edit: the form field ``content`` replaces the last message with a
    user message; the edited conversation is gated again (``gate.decide(messages)``).

``tool_call`` (``{"tool": "<name>", "arguments": {...}}``, queued by the tool loop)
    Shown: the tool, its arguments as pretty JSON, redacted by the audit log's redactor (API keys,
    passwords, card and phone numbers, e-mail addresses in free text...), and, in clear, the
    addresses the call reaches (``to`` / ``cc`` / ``bcc`` / ``attendees``: who receives it is what
    the operator decides on). For ``mail.send``, the draft it would send, read through the
    toolset's ``mail.read_draft``: sender, recipients, subject and body (subject and body
    redacted), its sha256, and why ``mail.send`` would refuse it (already sent, changed on disk
    since ``mail.draft`` wrote it, ``expect_sha256`` differs).

    Edit: the form field ``arguments`` is the new arguments as a JSON object (the tool stays the
    same). Invalid JSON, not an object, or arguments the tool's schema / sandbox refuses are an
    ``EditError`` naming the problem (the route answers 400); nothing changes. The form shows the
    redacted arguments, so a value left exactly as shown keeps its stored (unredacted) value; a
    redaction marker left in a value that was changed is refused (it would be sent as the text
    "[REDACTED:...]"). The edited call is gated on the same text the tool loop gates
    (``toolloop.gate_turn``: "Agent tool call: <canonical call>"); the queue stores the edit as a
    new item, PENDING when the gate says ALLOW or ESCALATE (an edit is not an approval: a person
    approves the new arguments), REJECTED when it says REFUSE, so a refused edit never runs.

After it ran (EXECUTED) the view also holds the stored answer (``result_text``: a chat's answer
as the requester got it; a tool call's result redacted like its arguments), and
``approval_details`` / ``list_lines`` are what ``so8t approvals show`` / ``list`` print: the item
as indented JSON with its request, decision and result as JSON values, who approved it, and why
the gate escalated it when a confidence threshold (not the head's top choice) did
(``so8t.gate.decision.why_escalated``); the list with a header row.

Limits: the queue keeps a tool call without the conversation that led to it, so an edited call is
gated on the call alone (the original was gated with the conversation); the draft shown is the
file as it is now (``mail.send`` refuses a draft whose bytes no longer match the sha256 recorded at
drafting; set ``expect_sha256`` in an edit to bind the send to the sha256 shown).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from so8t import jsonerr
from so8t.agent.approvals import Approval, ApprovalQueue, InvalidTransition, Status
from so8t.agent.redaction import Redactor
from so8t.agent.toolloop import gate_turn
from so8t.agent.tools import ToolError, Toolset
from so8t.gate.decision import why_escalated

__all__ = [
    "DraftView",
    "EditError",
    "RequestView",
    "approval_details",
    "edit_approval",
    "edited_request",
    "list_lines",
    "request_view",
]

RECIPIENT_KEYS = ("to", "cc", "bcc", "attendees")
_MARKER = re.compile(r"\[REDACTED:[A-Za-z0-9_.-]+\]")
_MISSING = object()


class EditError(ValueError):
    """An edit that cannot be applied; the message names the field and what is wrong (HTTP 400)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class DraftView:
    """The saved draft a ``mail.send`` call would send, as it is on disk now."""

    draft_id: str
    sender: str = ""
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    subject: str = ""  # redacted
    body: str = ""  # redacted
    sha256: str | None = None
    problems: list[str] = field(default_factory=list)  # why mail.send would refuse it, and notes
    error: str | None = None  # the draft could not be read


@dataclass(frozen=True)
class RequestView:
    """One queued request as the operator sees it (already redacted where it should be)."""

    kind: str
    messages: list[dict] = field(default_factory=list)  # chat: the conversation
    tool: str | None = None  # tool_call: the tool
    arguments_json: str = ""  # tool_call: pretty JSON, redacted
    recipients: list[str] = field(default_factory=list)  # tool_call: who it reaches, in clear
    draft: DraftView | None = None  # mail.send: the draft
    edit_field: str | None = None  # the form field an edit sends, None: no edit
    edit_text: str = ""  # what the edit form starts with
    result_text: str | None = None  # EXECUTED: the answer / result it stored


# --- showing -----------------------------------------------------------------------------------


def request_view(approval: Approval, *, redactor: Redactor, toolset: Toolset | None = None) -> RequestView:
    """What the approvals page shows of ``approval``'s request (see the module docstring)."""
    req = approval.request
    result = _result_text(approval)
    if approval.kind == "tool_call":
        args = req.get("arguments")
        shown = redactor.redact(args)
        tool = str(req.get("tool", "?"))
        draft = _draft_view(toolset, args, redactor) if tool == "mail.send" and isinstance(args, dict) else None
        text = _pretty(shown)
        return RequestView(
            "tool_call",
            tool=tool,
            arguments_json=text,
            recipients=_recipients(args),
            draft=draft,
            edit_field="arguments",
            edit_text=text,
            result_text=None if result is None else redactor.redact_text(result),
        )
    messages = [m for m in req.get("messages", []) if isinstance(m, dict)]
    last = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
    return RequestView(
        approval.kind,
        messages=messages,
        edit_field="content" if approval.kind == "chat" else None,
        edit_text=last,
        result_text=result,
    )


def _result_text(approval: Approval) -> str | None:
    """The stored answer of an EXECUTED item: its result's "text" (router and tool loop store
    {"text": ...}), or the whole result as JSON when it has another shape."""
    if approval.status is not Status.EXECUTED or approval.result_json is None:
        return None
    result = approval.result
    if isinstance(result, dict) and isinstance(result.get("text"), str):
        return result["text"]
    return _pretty(result)


def approval_details(approval: Approval) -> dict[str, Any]:
    """What ``so8t approvals show`` prints (as indented JSON): the item with its request, decision
    and result as JSON values, ``approved_by``, and ``why_escalated`` (None when the head itself
    chose ESCALATE)."""
    return {**approval.to_readable_dict(), "why_escalated": why_escalated(approval.decision)}


def _summary(approval: Approval) -> str:
    req = approval.request
    if approval.kind == "tool_call":
        text = f"{req.get('tool', '?')} {json.dumps(req.get('arguments'), ensure_ascii=False, sort_keys=True)}"
    else:
        text = next(
            (
                str(m.get("content", ""))
                for m in reversed(req.get("messages", []))
                if isinstance(m, dict) and m.get("role") == "user"
            ),
            "",
        )
    return " ".join(text.split())


def list_lines(items: list[Approval], width: int = 60) -> list[str]:
    """``so8t approvals list``: a header row, then one line an item (full id, status, created
    time in UTC, requester, the last user message or the tool call, cut at ``width`` characters)."""
    out = [f"{'ID':<32}  {'STATUS':<9} {'CREATED (UTC)':<16} {'REQUESTER':<12} REQUEST"]
    for a in items:
        text = _summary(a)
        out.append(
            f"{a.id:<32}  {a.status.value:<9} {a.created_at:%Y-%m-%d %H:%M} {a.requester:<12} "
            f"{text[:width] + ('…' if len(text) > width else '')}"
        )
    return out


def _pretty(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)


def _recipients(args: Any) -> list[str]:
    out: list[str] = []
    if isinstance(args, dict):
        for key in RECIPIENT_KEYS:
            value = args.get(key)
            if isinstance(value, list):
                out += [v for v in value if isinstance(v, str) and v not in out]
    return out


def _draft_view(toolset: Toolset | None, args: dict, redactor: Redactor) -> DraftView:
    draft_id = str(args.get("draft_id", ""))
    if toolset is None or "mail.read_draft" not in toolset.actions:
        return DraftView(draft_id, error="the mail tool is not configured on this server: the draft cannot be shown")
    try:
        d = toolset.execute(toolset.validate("mail.read_draft", {"draft_id": draft_id}))
    except (ToolError, OSError, ValueError) as exc:
        return DraftView(draft_id, error=f"the draft cannot be read: {exc}")
    problems = []
    if d.get("sent"):
        problems.append("this draft was already sent: mail.send will refuse it")
    if not d.get("intact"):
        problems.append(
            "the draft file is not what mail.draft wrote (changed on disk, or no recorded sha256): "
            "mail.send will refuse it"
        )
    expected = args.get("expect_sha256")
    if expected and expected != d.get("sha256"):
        problems.append(f"expect_sha256 {expected} is not the draft's sha256: mail.send will refuse it")
    elif not expected:
        problems.append(
            "to bind the send to exactly this text, edit the call and set expect_sha256 to the sha256 shown"
        )
    return DraftView(
        draft_id,
        sender=str(d.get("from", "")),
        to=list(d.get("to", [])),
        cc=list(d.get("cc", [])),
        subject=redactor.redact_text(str(d.get("subject", ""))),
        body=redactor.redact_text(str(d.get("body", ""))),
        sha256=d.get("sha256"),
        problems=problems,
    )


# --- editing -----------------------------------------------------------------------------------

Regate = Callable[[dict[str, Any]], dict[str, Any]]


def edited_request(
    approval: Approval,
    *,
    gate: Any,
    redactor: Redactor,
    toolset: Toolset | None = None,
    content: str | None = None,
    arguments: str | None = None,
) -> tuple[dict[str, Any], Regate]:
    """The new request an edit of ``approval`` makes, and the function that gates it again.
    Raises EditError (naming the field) for an edit that does not fit the request's kind."""
    if approval.kind == "tool_call":
        if content is not None:
            raise EditError(
                "a tool call is edited through its arguments (form field 'arguments', a JSON object), not 'content'",
                "content",
            )
        return _edited_tool_call(approval.request, arguments, gate=gate, redactor=redactor, toolset=toolset)
    if approval.kind == "chat":
        if arguments is not None:
            raise EditError(
                "a chat request is edited through 'content' (the new last user message), not 'arguments'", "arguments"
            )
        if content is None or not content.strip():
            raise EditError("content: the new text of the last user message is required", "content")
        old = approval.request
        messages = list(old.get("messages", []))
        new = {**old, "messages": messages[:-1] + [{"role": "user", "content": content}]}
        return new, lambda req: gate.decide(req["messages"]).to_dict()
    raise EditError(f"requests of kind {approval.kind!r} cannot be edited")


def _edited_tool_call(
    old: dict, arguments: str | None, *, gate: Any, redactor: Redactor, toolset: Toolset | None
) -> tuple[dict[str, Any], Regate]:
    if arguments is None:
        raise EditError("arguments: required, the tool call's new arguments as a JSON object", "arguments")
    if toolset is None:
        raise EditError(
            "no tools are configured on this server, so an edited tool call cannot be validated; reject it instead",
            "arguments",
        )
    try:
        parsed = json.loads(arguments)
    except ValueError as exc:
        raise EditError(f"arguments: not valid JSON: {jsonerr.describe(exc)}", "arguments") from None
    if not isinstance(parsed, dict):
        raise EditError(f"arguments: must be a JSON object ({{...}}), got {type(parsed).__name__}", "arguments")
    original = old.get("arguments", {})
    restored, left = _restore(parsed, redactor.redact(original), original, "arguments")
    if left:
        raise EditError(
            f"{left[0]}: still holds a redaction marker ({left[1]}); "
            "type the full value, or leave the field exactly as shown to keep it",
            left[0],
        )
    tool = str(old.get("tool", ""))
    try:
        call = toolset.validate(tool, restored)
    except ToolError as exc:
        raise EditError(f"arguments: {exc}", "arguments") from None
    new = {"tool": call.name, "arguments": json.loads(call.canonical)["arguments"]}  # as the tool loop queues it

    def regate(req: dict[str, Any]) -> dict[str, Any]:
        return gate.decide([gate_turn(toolset.validate(req["tool"], req["arguments"]))]).to_dict()

    return new, regate


def _restore(new: Any, shown: Any, original: Any, where: str) -> tuple[Any, tuple[str, str] | None]:
    """``new`` with every value left exactly as it was shown (redacted) put back to its stored
    value; also (path, marker) of the first changed string that still holds a redaction marker."""
    if isinstance(new, dict):
        out, left = {}, None
        for k, v in new.items():
            out[k], bad = _restore(v, _get(shown, k), _get(original, k), f"{where}.{k}")
            left = left or bad
        return out, left
    if isinstance(new, list):
        items, left = [], None
        for i, v in enumerate(new):
            item, bad = _restore(v, _get(shown, i), _get(original, i), f"{where}[{i}]")
            items.append(item)
            left = left or bad
        return items, left
    if shown is not _MISSING and new == shown and shown != original:
        return original, None  # untouched: the stored value, not its redacted form
    if isinstance(new, str) and (marker := _MARKER.search(new)) and not (isinstance(original, str) and new == original):
        return new, (where, marker.group())
    return new, None


def _get(container: Any, key: Any) -> Any:
    if isinstance(container, dict) and isinstance(key, str):
        return container.get(key, _MISSING)
    if isinstance(container, list) and isinstance(key, int) and key < len(container):
        return container[key]
    return _MISSING


def edit_approval(
    queue: ApprovalQueue,
    approval_id: str,
    editor: str,
    *,
    gate: Any,
    redactor: Redactor,
    toolset: Toolset | None = None,
    content: str | None = None,
    arguments: str | None = None,
    note: str | None = None,
) -> Approval:
    """Edit a PENDING item: build the new request (``edited_request``), then ``queue.edit`` stores it
    as a new item gated again (PENDING, or REJECTED if the gate refuses). Returns the new item."""
    current = queue.get(approval_id)
    if current.status is not Status.PENDING:  # before reading the form: say what is wrong first
        raise InvalidTransition(approval_id, current.status, "edit")
    new, regate = edited_request(
        current, gate=gate, redactor=redactor, toolset=toolset, content=content, arguments=arguments
    )
    return queue.edit(approval_id, new, editor, regate, note=note)
