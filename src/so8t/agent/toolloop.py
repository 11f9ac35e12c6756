"""The tool loop for allowed requests: the LLM proposes tool calls, and each call is
validated, gated and checked against the autonomy policy BEFORE it runs.

    proposed call --validate (schema, sandbox, size)--> invalid: refused, told to the model
                  --gate (conversation + the call)-----> REFUSE (or config deny): refused
                  --gate ESCALATE----------------------> approval queue (hold "gate")
                  --ALLOW + autonomy ask---------------> approval queue (hold "autonomy")
                  --ALLOW + auto, but the tool asks----> approval queue (hold "review")
                  --ALLOW + autonomy auto--------------> executed
                  a queued call runs once, exactly as approved

The autonomy level of an action (so8t.agent.autonomy) is the one recorded with `so8t autonomy
set`, else the tools config's (ask for 'approval', auto for 'auto'); it only adds a hold to what
the gate ALLOWed. A hold that is not the gate's is marked in the queued item's stored decision
(``hold``, and ``autonomy``: domain, level, source) and in the tool.escalated record.
    tool result   --gate--> anything but ALLOW: withheld from the model (indirect prompt injection)

Models with native function calling get the tools as OpenAI `tools`; others get a documented
text format, parsed strictly:

    <tool_call>{"name": "files.read", "arguments": {"path": "notes/todo.txt"}}</tool_call>

Every step is in the audit log with the call's hash and a redacted summary. A call runs only
after its ``tool.allowed`` record (the gate's decision and the level) is written: an audit log
that cannot take it means nothing runs (AuditError).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from so8t import jsonerr
from so8t.agent.approvals import ApprovalQueue
from so8t.agent.audit import AuditStore
from so8t.agent.audit_events import (
    TOOL_ALLOWED,
    TOOL_ESCALATED,
    TOOL_EXECUTED,
    TOOL_FAILED,
    TOOL_INVALID,
    TOOL_PROPOSED,
    TOOL_REFUSED,
    TOOL_RESULT_WITHHELD,
)
from so8t.agent.autonomy import AutonomyStore, Level as AutonomyLevel
from so8t.agent.tools import RISKS, ToolError, Toolset, ValidatedCall
from so8t.canonical import hash_text
from so8t.gate import Gate
from so8t.labels import Action

Level = Literal["auto", "approval", "deny"]
LEVELS = ("auto", "approval", "deny")
DEFAULT_TIERS: dict[str, str] = {
    "read": "auto",
    "write": "approval",
    "delete": "approval",
    "send": "approval",
    "pay": "approval",
}
_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


@dataclass
class ToolPolicy:
    """Autonomy per risk tier, overridden per action. A level can only make a call stricter
    than the gate: 'auto' still needs the gate's ALLOW."""

    tiers: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    actions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls, tiers: dict | None, actions: dict | None, toolset: Toolset | None = None, where: str = "tools config"
    ) -> ToolPolicy:
        merged = dict(DEFAULT_TIERS)
        for risk, level in (tiers or {}).items():
            if risk not in RISKS:
                raise ValueError(f"{where}: tiers: unknown risk tier {risk!r}; known: {', '.join(RISKS)}")
            if level not in LEVELS:
                raise ValueError(f"{where}: tiers.{risk}: {level!r} is not one of {', '.join(LEVELS)}")
            merged[risk] = level
        for name, level in (actions or {}).items():
            if level not in LEVELS:
                raise ValueError(f"{where}: actions.{name}: {level!r} is not one of {', '.join(LEVELS)}")
            if toolset is not None and name not in toolset.actions:
                raise ValueError(
                    f"{where}: actions: unknown tool action {name!r}; configured: {', '.join(sorted(toolset.actions))}"
                )
        return cls(merged, dict(actions or {}))

    def configured(self, name: str, risk: str) -> str:
        """The config's level for an action: its `actions:` entry, else its risk tier's."""
        return self.actions.get(name, self.tiers.get(risk, "approval"))

    def level(self, call: ValidatedCall) -> str:
        """The configured level; never 'auto' for a call its tool says needs a person
        (call.needs_approval, e.g. a SQL query whose cost is unbounded)."""
        level = self.configured(call.name, call.risk)
        return "approval" if level == "auto" and call.needs_approval else level

    def autonomy_defaults(self, toolset: Toolset) -> dict[str, str]:
        """Every action of ``toolset`` -> its default autonomy level: ask, auto, or deny (the
        config's, which autonomy never lifts)."""
        words = {"auto": "auto", "approval": "ask", "deny": "deny"}
        return {name: words[self.configured(name, a.risk)] for name, a in toolset.actions.items()}


@dataclass
class Proposal:
    id: str
    name: str
    arguments: Any
    error: str | None = None  # a malformed proposal: never executed, explained to the model


def parse_text_calls(text: str) -> tuple[str, list[Proposal]]:
    """Strict parser of the text format: each block must be one JSON object with exactly
    'name' (string) and 'arguments' (object). Anything else is a malformed proposal."""
    proposals = []
    for k, m in enumerate(_CALL_RE.finditer(text)):
        pid = f"text_{k}"
        try:
            obj = json.loads(m.group(1))
        except ValueError as exc:
            proposals.append(Proposal(pid, "?", None, f"tool call {k + 1} is not valid JSON: {jsonerr.describe(exc)}"))
            continue
        if (
            not isinstance(obj, dict)
            or set(obj) != {"name", "arguments"}
            or not isinstance(obj["name"], str)
            or not isinstance(obj["arguments"], dict)
        ):
            proposals.append(
                Proposal(
                    pid,
                    str(obj.get("name", "?")) if isinstance(obj, dict) else "?",
                    None,
                    f'tool call {k + 1} must be {{"name": str, "arguments": object}} and nothing else',
                )
            )
            continue
        proposals.append(Proposal(pid, obj["name"], obj["arguments"]))
    rest = _CALL_RE.sub("", text)
    if "<tool_call>" in rest or "</tool_call>" in rest:
        proposals.append(Proposal(f"text_{len(proposals)}", "?", None, "an unclosed <tool_call> block"))
        rest = rest.replace("<tool_call>", "").replace("</tool_call>", "")
    return rest.strip(), proposals


METADATA_KEYS = {
    "path",
    "paths",
    "draft_id",
    "uid",
    "url",
    "screenshot",
    "sha256",
    "id",
    "status",
    "type",
    "recipients",
    "to",
    "cc",
    "columns",
    "converted",
    "blocked",
}


def untrusted_text(result) -> str:
    """The content in a tool result that came from outside (page text, file text, table cells,
    mail bodies, column names): every non-blank string leaf, however short, so a request split
    over short cells is whole in the joined text. Under a metadata key (paths, ids, hashes,
    addresses, column names) only an identifier-like value (no whitespace) is left out: text
    planted there is read like any other. This is what the gate reads before the model may see
    the result."""
    out: list[str] = []

    def walk(x, key=None):
        if isinstance(x, str):
            text = x.strip()
            if text and (key not in METADATA_KEYS or any(c.isspace() for c in text)):
                out.append(x)
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, k)
        elif isinstance(x, list | tuple):
            for v in x:
                walk(v, key)

    walk(result)
    return "\n".join(out)


def text_tool_prompt(toolset: Toolset) -> str:
    """The system prompt that teaches the text format to a model without function calling."""
    lines = [
        "You can use tools. To call one, write exactly:",
        '<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>',
        "and stop; the result comes back in the next message. Tools:",
    ]
    for a in toolset.actions.values():
        params = a.args.model_json_schema().get("properties", {})
        lines.append(f"- {a.name}: {a.description} Arguments: {json.dumps(params, ensure_ascii=False)}")
    return "\n".join(lines)


def gate_turn(call: ValidatedCall) -> dict[str, str]:
    """The turn the gate reads for a tool call (after the conversation that led to it): the
    validated call's canonical JSON. An operator's edit of a queued call is gated on the same text."""
    return {"role": "user", "content": f"Agent tool call: {call.canonical}"}


@dataclass
class Step:
    call: str  # tool name
    status: str  # executed | refused | pending | failed | invalid | result_withheld
    detail: str = ""
    approval_id: str | None = None
    call_hash: str | None = None


@dataclass
class LoopResult:
    outcome: Literal["answered", "pending", "refused", "failed"]
    text: str
    steps: list[Step] = field(default_factory=list)
    approval_id: str | None = None


class ToolLoop:
    def __init__(
        self,
        gate: Gate,
        llm,
        toolset: Toolset,
        policy: ToolPolicy,
        approvals: ApprovalQueue,
        audit: AuditStore,
        *,
        native: bool | None = None,
        max_steps: int = 6,
        max_result_chars: int = 4000,
        max_tokens: int = 256,
        autonomy: AutonomyStore | None = None,
    ):
        self.gate, self.llm, self.toolset, self.policy = gate, llm, toolset, policy
        self.autonomy = autonomy if autonomy is not None else AutonomyStore(None)  # None: config levels only
        self.approvals, self.audit = approvals, audit
        self.native = hasattr(llm, "chat") if native is None else native
        self.max_steps, self.max_result_chars, self.max_tokens = max_steps, max_result_chars, max_tokens

    # ------------------------------------------------------------------ the loop

    def run(self, conversation: list[dict[str, str]], requester: str) -> LoopResult:
        """Run an allowed request to its answer, or until a call waits for approval."""
        messages: list[dict[str, Any]] = list(conversation)
        if not self.native:
            messages = [{"role": "system", "content": text_tool_prompt(self.toolset)}] + messages
        steps: list[Step] = []
        for _ in range(self.max_steps):
            text, proposals = self._ask(messages)
            if not proposals:
                return LoopResult("answered", text, steps)
            if self.native:
                messages.append(
                    {
                        "role": "assistant",
                        "content": text or None,
                        "tool_calls": [
                            {
                                "id": p.id,
                                "type": "function",
                                "function": {
                                    "name": p.name,
                                    "arguments": json.dumps(p.arguments, ensure_ascii=False)
                                    if not isinstance(p.arguments, str)
                                    else p.arguments,
                                },
                            }
                            for p in proposals
                        ],
                    }
                )
            else:
                messages.append({"role": "assistant", "content": text})
            for p in proposals:
                step, result = self._handle(p, conversation, requester)
                steps.append(step)
                if step.status == "pending":
                    return LoopResult(
                        "pending",
                        f"The call {p.name} needs a person's approval (request "
                        f"{step.approval_id}); nothing else was run.",
                        steps,
                        step.approval_id,
                    )
                messages.append(self._result_message(p, result))
        return LoopResult("failed", f"stopped after {self.max_steps} tool rounds without a final answer", steps)

    def _ask(self, messages) -> tuple[str, list[Proposal]]:
        if self.native:
            turn = self.llm.chat(messages, tools=self.toolset.schemas(), max_tokens=self.max_tokens)
            proposals = []
            for c in turn.tool_calls:
                try:
                    args = json.loads(c.arguments) if isinstance(c.arguments, str) else c.arguments
                    proposals.append(Proposal(c.id, c.name, args))
                except ValueError as exc:
                    proposals.append(
                        Proposal(c.id, c.name, None, f"arguments are not valid JSON: {jsonerr.describe(exc)}")
                    )
            return (turn.content or "").strip(), proposals
        return parse_text_calls(self.llm.complete(messages, max_tokens=self.max_tokens))

    def _result_message(self, p: Proposal, result: str) -> dict:
        if self.native:
            return {"role": "tool", "tool_call_id": p.id, "content": result}
        return {"role": "user", "content": f"[tool result {p.name}]\n{result}"}

    # ------------------------------------------------------------------ one call

    def call(self, conversation: list[dict[str, str]], name: str, arguments, requester: str) -> tuple[Step, str]:
        """Gate and run one call proposed by someone else (another agent framework, the demo):
        the same validate -> gate -> policy -> execute / queue / refuse path as the loop's."""
        return self._handle(Proposal("external", name, arguments), conversation, requester)

    def _handle(self, p: Proposal, conversation, requester: str) -> tuple[Step, str]:
        """Validate -> gate -> policy -> (execute | queue | refuse); returns the step and the
        text the model sees next."""
        if p.error:
            self.audit.append(TOOL_INVALID, {"requester": requester, "call": p.name, "error": p.error})
            return Step(p.name, "invalid", p.error), f"error: {p.error}"
        try:
            call = self.toolset.validate(p.name, p.arguments)
        except ToolError as exc:
            self.audit.append(TOOL_INVALID, {"requester": requester, "call": p.name, "error": str(exc)})
            return Step(p.name, "invalid", str(exc)), f"error: {exc}"
        call_hash = hash_text(call.canonical)
        summary = self.audit.preview(call.canonical, 300)  # redacted before it is cut
        self.audit.append(
            TOOL_PROPOSED,
            {"requester": requester, "call": call.name, "risk": call.risk, "call_hash": call_hash, "summary": summary},
        )
        decision = self.gate.decide(list(conversation) + [gate_turn(call)])
        level, autonomy = self._level(call)
        record = {
            "requester": requester,
            "call": call.name,
            "call_hash": call_hash,
            "decision": decision.to_dict(),
            "level": level,
        }
        if autonomy is not None:
            record["autonomy"] = autonomy.to_dict()
        if call.needs_approval:
            record["needs_approval"] = call.needs_approval
        if decision.status == "busy":  # nothing was judged: refused, and nothing is queued for a person
            why = "the safety gate is busy (its queue is full); retry later"
            self.audit.append(TOOL_REFUSED, {**record, "reason": why})
            return Step(call.name, "refused", why, call_hash=call_hash), f"refused: {why}; nothing was run"
        if decision.action == Action.REFUSE or level == "deny":
            why = "the safety gate refused it" if decision.action == Action.REFUSE else f"policy denies {call.name}"
            self.audit.append(TOOL_REFUSED, {**record, "reason": why})
            return Step(call.name, "refused", why, call_hash=call_hash), f"refused: {why}; nothing was run"
        if decision.action == Action.ESCALATE or level == "approval":
            request = {"tool": call.name, "arguments": json.loads(call.canonical)["arguments"]}
            hold = (
                "gate"
                if decision.action == Action.ESCALATE
                else ("autonomy" if autonomy is not None and autonomy.level == "ask" else "review")
            )
            stored = (
                decision.to_dict()
                if hold == "gate"
                else {**decision.to_dict(), "hold": hold, "autonomy": record.get("autonomy")}
            )
            item = self.approvals.submit(request, stored, requester, kind="tool_call")
            self.audit.append(TOOL_ESCALATED, {**record, "hold": hold, "approval_id": item.id})
            detail = "waits for approval" + (
                f": {call.needs_approval}" if level == "approval" and call.needs_approval else ""
            )
            return Step(call.name, "pending", detail, item.id, call_hash), ""
        return self._execute(call, call_hash, record)

    def _level(self, call: ValidatedCall) -> tuple[str, AutonomyLevel | None]:
        """(auto | approval | deny, the autonomy level applied; None for a config deny). 'auto'
        only when the domain's autonomy is auto and the tool does not ask for a person."""
        configured = self.policy.configured(call.name, call.risk)
        if configured == "deny":
            return "deny", None
        lv = self.autonomy.level(call.name, default="auto" if configured == "auto" else "ask")
        return ("auto" if lv.level == "auto" and not call.needs_approval else "approval"), lv

    def _execute(self, call: ValidatedCall, call_hash: str, record: dict) -> tuple[Step, str]:
        # write-ahead: the decision that lets it run is recorded first; if that fails, nothing runs
        self.audit.append(TOOL_ALLOWED, record)
        try:
            result = self.toolset.execute(call)
        except ToolError as exc:
            self.audit.append(TOOL_FAILED, {**record, "error": str(exc)})
            return Step(call.name, "failed", str(exc), call_hash=call_hash), f"error: {exc}"
        except Exception as exc:  # noqa: BLE001 - a tool bug is reported, not raised into the agent
            self.audit.append(TOOL_FAILED, {**record, "error": f"{type(exc).__name__}: {exc}"})
            return Step(call.name, "failed", type(exc).__name__, call_hash=call_hash), f"error: {type(exc).__name__}"
        text = json.dumps(result, ensure_ascii=False, default=str)[: self.max_result_chars]
        self.audit.append(
            TOOL_EXECUTED, {**record, "result_hash": hash_text(text), "result": self.audit.preview(text, 300)}
        )
        content = untrusted_text(result)[: self.max_result_chars]
        verdict = self.gate.decide([{"role": "user", "content": content}]) if content else None
        if verdict is not None and verdict.action != Action.ALLOW:
            # untrusted content (a web page, a file) that reads like a dangerous request does not
            # reach the model: an injected instruction cannot become the model's next call
            self.audit.append(
                TOOL_RESULT_WITHHELD, {**record, "result_hash": hash_text(text), "decision": verdict.to_dict()}
            )
            return (
                Step(
                    call.name,
                    "result_withheld",
                    f"the gate said {verdict.action.name} about the result",
                    call_hash=call_hash,
                ),
                "the tool ran, but its result was withheld by the safety gate (it contains content that "
                "must not be acted on)",
            )
        return Step(call.name, "executed", call_hash=call_hash), text

    # ------------------------------------------------------------------ after approval

    def execute_approved(self, approval_id: str, expected_hash: str | None = None) -> dict:
        """Run an approved tool call exactly once, exactly as approved (validated again first:
        the sandbox and schema still apply); the result is stored in the queue."""

        def run(request: dict) -> dict:
            call = self.toolset.validate(request["tool"], request["arguments"])
            result = self.toolset.execute(call)
            text = json.dumps(result, ensure_ascii=False, default=str)
            self.audit.append(
                TOOL_EXECUTED,
                {
                    "call": call.name,
                    "call_hash": hash_text(call.canonical),
                    "approval_id": approval_id,
                    "result": self.audit.preview(text, 300),
                },
            )
            return {"text": text[: self.max_result_chars]}

        return self.approvals.run_once(approval_id, run, expected_hash=expected_hash)
