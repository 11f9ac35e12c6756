"""HTML of one approval's request on the approvals page, and its edit form.

The content comes from ``so8t.agent.review.request_view`` (already redacted where it should be);
here it is only laid out, and every value is HTML-escaped (text, attribute values, and the
textarea's contents), so nothing in a request, a tool argument or a mail draft becomes markup.

Classes the page and its tests rely on: ``request`` (a chat conversation), ``tool-call`` with
``tool``, ``arguments`` and ``recipients``; ``draft`` with ``draft-from``, ``draft-to``,
``draft-cc``, ``draft-subject``, ``draft-body``, ``draft-sha256``, ``draft-problem``,
``draft-error``; the edit form posts to ``/admin/approvals/<id>/edit`` with a textarea named after
``view.edit_field`` (``content`` or ``arguments``) and a button of class ``edit``. The status cell
(``render_status``): ``decided-by`` (who approved, rejected or edited it), and for an EXECUTED
item its stored answer in ``result``; the gate cell (``render_why``): ``why-escalated``, the hint
``so8t.gate.decision.why_escalated`` gives when a confidence threshold, not the head, escalated it.
"""

from __future__ import annotations

import html

from so8t.agent.approvals import Status
from so8t.agent.review import DraftView, RequestView
from so8t.gate.decision import why_escalated

__all__ = ["render_edit_form", "render_request", "render_status", "render_why"]

_DECIDED = {
    Status.APPROVED: "approved",
    Status.EXECUTING: "approved",
    Status.EXECUTED: "approved",
    Status.FAILED: "approved",
    Status.REJECTED: "rejected",
    Status.EDITED: "edited",
}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def render_request(view: RequestView) -> str:
    """The request cell of one row."""
    if view.kind != "tool_call":
        convo = "\n".join(f"[{m.get('role', '?')}] {m.get('content', '')}" for m in view.messages)
        return f"<pre class='request'>{_e(convo)}</pre>"
    parts = [
        f"<div class='tool-call'><p>tool <code class='tool'>{_e(view.tool)}</code></p>",
        f"<pre class='arguments'>{_e(view.arguments_json)}</pre>",
    ]
    if view.recipients:
        parts.append(f"<p>reaches <span class='recipients'>{_e(', '.join(view.recipients))}</span></p>")
    if view.draft is not None:
        parts.append(_draft_html(view.draft))
    parts.append("</div>")
    return "".join(parts)


def _draft_html(d: DraftView) -> str:
    head = f"<p>draft <code class='draft-id'>{_e(d.draft_id)}</code></p>"
    if d.error:
        return f"<div class='draft'>{head}<p class='err draft-error'>{_e(d.error)}</p></div>"
    rows = [
        ("from", "draft-from", d.sender),
        ("to", "draft-to", ", ".join(d.to)),
        ("cc", "draft-cc", ", ".join(d.cc)),
        ("subject", "draft-subject", d.subject),
        ("sha256", "draft-sha256", d.sha256 or ""),
    ]
    cells = "".join(f"<dt>{label}</dt><dd class='{cls}'>{_e(value)}</dd>" for label, cls, value in rows)
    problems = "".join(f"<p class='err draft-problem'>{_e(p)}</p>" for p in d.problems)
    return (
        f"<div class='draft'>{head}<dl>{cells}<dt>body</dt><dd><pre class='draft-body'>{_e(d.body)}</pre></dd>"
        f"</dl>{problems}</div>"
    )


def render_edit_form(approval, view: RequestView, hidden_fields: str = "") -> str:
    """The edit form of a PENDING item ("" when it cannot be edited). ``hidden_fields`` is the
    caller's ready-made hidden inputs (the CSRF token and the request hash the page shows)."""
    if view.edit_field is None:
        return ""
    aid = _e(approval.id)
    label = (
        "arguments (JSON object; values shown as [REDACTED:...] keep their stored value when left as they are)"
        if view.edit_field == "arguments"
        else "new last user message"
    )
    rows = max(3, min(20, view.edit_text.count("\n") + 2))
    return (
        f"<form method='post' action='/admin/approvals/{aid}/edit'>{hidden_fields}"
        f"<details><summary>Edit</summary><label>{_e(label)}<br>"
        f"<textarea name='{_e(view.edit_field)}' class='edit-{_e(view.edit_field)}' data-id='{aid}' rows='{rows}' "
        f"cols='60'>{_e(view.edit_text)}</textarea></label><br>"
        f"<button class='edit' data-id='{aid}'>Save edit (gated again; approve it after)</button></details></form>"
    )


def render_status(approval, view: RequestView) -> str:
    """The status cell: the status, who decided and when, the reason, and an EXECUTED item's answer."""
    parts = [approval.status.value]
    verb = _DECIDED.get(approval.status)
    if verb and approval.decided_by and not approval.decided_by.startswith("system:"):
        when = f" at {approval.decided_at:%Y-%m-%d %H:%M:%S} UTC" if approval.decided_at else ""
        parts.append(f"<span class='decided-by'>{verb} by {_e(approval.decided_by)}{when}</span>")
    if approval.reason:
        parts.append(_e(approval.reason))
    if view.result_text is not None:
        label = "answer" if view.kind != "tool_call" else "result"
        parts.append(
            f"<details open><summary>{label}</summary><pre class='result'>{_e(view.result_text)}</pre></details>"
        )
    return "<br>".join(parts)


def render_why(decision: dict) -> str:
    """The hint why the gate escalated, when a threshold (or a gate failure) did; "" otherwise."""
    why = why_escalated(decision)
    return f"<p class='why-escalated'>{_e(why)}</p>" if why else ""
