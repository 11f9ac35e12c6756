"""User -> Safety Gate -> router: the seed's section 5 data flow.

ALLOW     -> the LLM answers (in-process: the gate's forward pass is reused as the prefill)
ESCALATE  -> the exact request is queued for a person, an audit record is written, the user
             is told it waits; once approved it runs exactly once, exactly as approved
REFUSE    -> a safe message with alternatives, and an audit record
gate not ok (error / timeout) -> the fail action (REFUSE or ESCALATE, never ALLOW), audited
gate busy (its queue was full) -> refused, nothing scored, queued or audited: the HTTP layer
             answers 503 with Retry-After (a flood must not fill the approval queue or the log)
LLM failed (down, timed out, garbage, an error status) -> outcome "failed" with ``error`` set
             (BackendFailure: 504 for a timeout, 502 for any other backend failure, 500 for an
             in-process one) and an ``llm.error`` audit record that says which failure; the HTTP
             layer answers with that status in OpenAI's error shape, never a 200 that looks
             like an answer

The verdict always comes before the LLM (and, later, any tool) is called.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from so8t.agent import messages as msg
from so8t.agent.approvals import ApprovalQueue
from so8t.agent.audit import AuditError, AuditStore, Redactor
from so8t.agent.audit_events import GATE_ALLOW, GATE_ERROR, GATE_ESCALATE, GATE_REFUSE, GATE_SHADOW, LLM_ERROR
from so8t.agent.backends import BackendError
from so8t.agent.inprocess import InProcessBackend
from so8t.agent.sqlstore import StoreUnavailable
from so8t.canonical import request_hash
from so8t.gate import ConversationError, Decision, Gate, normalize_conversation
from so8t.labels import Action

log = logging.getLogger("so8t.router")
Outcome = Literal["answered", "pending", "refused", "failed"]


@dataclass(frozen=True)
class BackendFailure:
    """Why the LLM gave no answer, as the HTTP layer reports it: ``status`` (504 timeout, 502 any
    other backend failure, 500 in-process), OpenAI's error ``type`` and ``code``, and a message
    for the client. The message never carries the backend's URL or its reply (those stay in the
    server's log and the audit record)."""

    status: int
    type: str
    code: str
    message: str

    def to_dict(self) -> dict:
        return {"status": self.status, "type": self.type, "code": self.code, "message": self.message}


def backend_failure(exc: BaseException) -> BackendFailure:
    """Map an exception from a backend (or the tool loop's LLM turn) to the client's error."""
    if isinstance(exc, BackendError):
        upstream = f" (HTTP {exc.status})" if exc.status is not None else ""
        what = {
            "timeout": (504, "backend_timeout", "the LLM backend did not answer in time"),
            "unreachable": (
                502,
                "backend_unreachable",
                "the LLM backend could not be reached, or closed the connection before answering",
            ),
            "bad_response": (
                502,
                "backend_bad_response",
                f"the LLM backend's reply{upstream} was not a chat completion",
            ),
            "http_error": (502, "backend_http_error", f"the LLM backend answered with an error{upstream}"),
        }[exc.kind]
        status, code, reason = what
        kind = "timeout_error" if status == 504 else "bad_gateway"
    else:
        status, code, kind = 500, "backend_error", "server_error"
        reason = f"the in-process LLM failed ({type(exc).__name__})"
    return BackendFailure(
        status,
        kind,
        code,
        f"{reason}; the request was allowed by the gate but nothing was "
        "answered, and the failure is in the audit log (llm.error)",
    )


@dataclass
class RouterResult:
    outcome: Outcome  # answered: the LLM's text; pending: waits for a person; refused; failed: LLM error
    text: str
    decision: Decision
    approval_id: str | None = None
    request_hash: str | None = None
    error: BackendFailure | None = None  # set when the LLM failed: the HTTP layer answers with it

    def to_dict(self) -> dict:
        return {
            "outcome": self.outcome,
            "text": self.text,
            "decision": self.decision.to_dict(),
            "approval_id": self.approval_id,
            "request_hash": self.request_hash,
            "error": self.error.to_dict() if self.error else None,
        }


class Router:
    def __init__(
        self,
        gate: Gate,
        backend,
        approvals: ApprovalQueue,
        audit: AuditStore,
        *,
        audit_allow: bool = False,
        approval_ttl_s: float = 3600.0,
        max_tokens: int = 256,
        shadow: bool = False,
        toolloop=None,
    ):
        self.gate, self.backend, self.approvals, self.audit = gate, backend, approvals, audit
        self.toolloop = toolloop  # when tools are configured, allowed requests run through it
        # Shadow mode measures a gate before it is trusted: every decision is logged, nothing is
        # blocked. Only for a trial period; the README says so.
        self.shadow = shadow
        self.audit_allow = audit_allow
        self.approval_ttl_s = approval_ttl_s
        self.max_tokens = max_tokens

    def handle(
        self, conversation, requester: str, *, max_tokens: int | None = None, temperature: float = 0.0
    ) -> RouterResult:
        try:
            convo = normalize_conversation(conversation)
        except ConversationError:
            convo = None
        reuse = isinstance(self.backend, InProcessBackend) and self.backend.gate is self.gate and convo is not None
        decision, prefill = self.gate.decide_with_prefill(convo) if reuse else (self.gate.decide(conversation), None)
        lang = msg.language_of(convo or [])
        if decision.status == "busy":
            return RouterResult(
                "refused",
                msg.gate_failed_prefix(lang, decision.status) + msg.refuse_message(lang, decision.input_hash[:12]),
                decision,
            )
        record = {
            "requester": requester,
            "decision": decision.to_dict(),
            "preview": _preview(convo, self.audit.redactor),
        }
        if self.shadow and convo is not None:
            self.audit.append(GATE_SHADOW, {**record, "would": decision.action.name})
            return self._answer(convo, decision, prefill, max_tokens or self.max_tokens, temperature, lang, requester)
        if not decision.ok:
            self.audit.append(GATE_ERROR, record)
        prefix = "" if decision.ok else msg.gate_failed_prefix(lang, decision.status)
        refusal = prefix + msg.refuse_message(lang, decision.input_hash[:12])
        if decision.action == Action.REFUSE:
            if decision.ok:
                self.audit.append(GATE_REFUSE, record)
            return RouterResult("refused", refusal, decision)
        if decision.action == Action.ESCALATE:
            if convo is None:  # nothing well-formed to approve: refuse instead (only a failed gate gets here)
                return RouterResult("refused", refusal, decision)
            request = {
                "kind": "chat",
                "messages": convo,
                "max_tokens": max_tokens or self.max_tokens,
                "temperature": temperature,
            }
            item = self.approvals.submit(request, decision.to_dict(), requester, kind="chat", ttl_s=self.approval_ttl_s)
            if decision.ok:
                try:
                    self.audit.append(
                        GATE_ESCALATE, {**record, "approval_id": item.id, "request_hash": item.request_hash}
                    )
                except AuditError as exc:  # queued, and recorded as approval.requested before it committed
                    log.error("approval %s is queued, but its gate.escalate record failed: %s", item.id, exc)
            return RouterResult("pending", prefix + _pending_message(lang, item), decision, item.id, item.request_hash)
        if self.audit_allow:
            self.audit.append(GATE_ALLOW, record)
        return self._answer(convo, decision, prefill, max_tokens or self.max_tokens, temperature, lang, requester)

    def _answer(
        self,
        convo,
        decision: Decision,
        prefill,
        max_tokens: int,
        temperature: float,
        lang: str,
        requester: str = "anonymous",
    ) -> RouterResult:
        if self.toolloop is not None:
            return self._answer_with_tools(convo, decision, lang, requester)
        try:
            if prefill is not None:
                text = self.backend.complete(convo, max_tokens=max_tokens, temperature=temperature, prefill=prefill)
            else:
                text = self.backend.complete(convo, max_tokens=max_tokens, temperature=temperature)
        except Exception as exc:  # noqa: BLE001 - the LLM failing must not crash the service
            log.error("LLM backend failed: %s", exc)
            return self._failed(exc, decision, lang, requester)
        return RouterResult("answered", msg.answer_text(text), decision)

    def _failed(self, exc: Exception, decision: Decision, lang: str, requester: str) -> RouterResult:
        """The LLM gave no answer: an llm.error record (which failure, the HTTP status it becomes)
        and a failed result carrying the client's error."""
        failure = backend_failure(exc)
        self.audit.append(
            LLM_ERROR,
            {
                "requester": requester,
                "decision": decision.to_dict(),
                "failure": failure.code,
                "http_status": failure.status,
                "upstream_status": getattr(exc, "status", None),
                "error": self.audit.preview(str(exc), 500),
            },
        )
        return RouterResult("failed", msg.backend_failed_message(lang, type(exc).__name__), decision, error=failure)

    def _answer_with_tools(self, convo, decision: Decision, lang: str, requester: str) -> RouterResult:
        try:
            res = self.toolloop.run(convo, requester)
        except (AuditError, StoreUnavailable):
            raise  # nothing may run unrecorded or unqueued: the service fails closed (503)
        except Exception as exc:  # noqa: BLE001 - the LLM or a tool failing must not crash the service
            log.error("tool loop failed: %s", exc)
            return self._failed(exc, decision, lang, requester)
        text = res.text
        if res.outcome == "pending":
            text = _pending_message(lang, self.approvals.get(res.approval_id))
        return RouterResult(res.outcome, text, decision, res.approval_id)

    def run_approved(self, approval_id: str, expected_hash: str | None = None) -> dict:
        """Run an approved chat request exactly once, exactly as approved; the answer is stored
        in the queue (a second call returns the stored answer without running anything)."""

        def run(request: dict) -> dict:
            text = self.backend.complete(
                request["messages"],
                max_tokens=int(request.get("max_tokens", self.max_tokens)),
                temperature=float(request.get("temperature", 0.0)),
            )
            return {"text": text, "request_hash": request_hash(request)}

        return self.approvals.run_once(approval_id, run, expected_hash=expected_hash)


def _pending_message(lang: str, item) -> str:
    return msg.escalate_message(lang, item.id, item.expires_at.strftime("%Y-%m-%d %H:%M"))


def _preview(convo, redactor: Redactor, limit: int = 200) -> str | None:
    """The last user message, redacted and then shortened (cutting first could leave half a
    secret that no pattern recognises)."""
    if not convo:
        return None
    return redactor.preview(next(m["content"] for m in reversed(convo) if m["role"] == "user"), limit)
