"""Everything `so8t serve` runs, wired from one ServerConfig: the gate, the LLM backend, the
approval queue, the audit log and the router, plus the worker step that expires unanswered
approvals and runs approved requests. The HTTP server and the CLI only call into this.

A requester outside the server (`so8t chat`) follows its own escalated request with
``follow_up``: edits are followed to the item that now stands for it, and an approved one is
run there, exactly once (the queue's claim makes a server's worker and the requester run it at
most once between them), so the requester gets the answer without a server.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from so8t.agent.approvals import TERMINAL, AlreadyClaimed, Approval, ApprovalQueue, Status
from so8t.agent.audit import AuditError, AuditLog, AuditStore, Redactor, key_from_env
from so8t.agent.audit_db import DatabaseAuditLog
from so8t.agent.audit_events import GATE_ERROR
from so8t.agent.backends import OpenAIBackend
from so8t.agent.inprocess import InProcessBackend
from so8t.agent.review import RequestView, edit_approval, request_view
from so8t.agent.router import Router
from so8t.agent.sqlstore import StoreUnavailable
from so8t.config import ConfigError, ServerConfig
from so8t.gate import Gate

log = logging.getLogger("so8t.service")
# A step EXECUTING this long without a result is taken as interrupted (a crash, or a completion
# that could not be recorded): far above any tool's or backend's own timeout.
STUCK_AFTER_S = 900.0
_APPROVAL_FIELDS = (
    "id",
    "kind",
    "status",
    "request_hash",
    "requester",
    "decided_by",
    "reason",
    "parent_id",
    "superseded_by",
    "expires_at",
)


def approval_audit_record(data: dict) -> dict:
    """What the audit log keeps of an approval event: who, what (by hash), which state; the
    request text itself stays in the queue. An ``approval.aborted`` record also says which event
    did not commit, and why."""
    out = {k: data.get(k) for k in _APPROVAL_FIELDS}
    out.update({k: data[k] for k in ("aborted", "error") if k in data})
    return out


def redactor_from(cfg: ServerConfig) -> Redactor:
    patterns = dict(item.split("=", 1) for item in cfg.redact_patterns)
    return Redactor.from_config({"disable": list(cfg.redact_disable), "patterns": patterns})


def _opened(key: str, open_store):
    """``open_store()``, its errors prefixed with the config key that named the store: a bad URL
    is a ConfigError, an unreachable database StoreUnavailable (never showing the password)."""
    try:
        return open_store()
    except StoreUnavailable as exc:
        raise StoreUnavailable(f"{key}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def open_approvals(cfg: ServerConfig, audit: AuditStore | None = None) -> ApprovalQueue:
    """The queue, recording every state change in ``audit`` write-ahead: the records are written
    (all or none) before the change commits, and a change whose records cannot be written does not
    happen (AuditError reaches the caller)."""
    write_ahead = None if audit is None else _write_ahead_to(audit)
    return _opened(
        "approvals_url",
        lambda: ApprovalQueue(cfg.approvals_url, default_ttl_s=cfg.approval_ttl_s, write_ahead=write_ahead),
    )


def _write_ahead_to(audit: AuditStore) -> Callable[[list[tuple[str, dict]]], None]:
    def write_ahead(events: list[tuple[str, dict]]) -> None:
        audit.append_batch([(name, approval_audit_record(data)) for name, data in events])

    return write_ahead


def open_audit(cfg: ServerConfig) -> AuditStore:
    """The JSONL file at audit_path, or the database at audit_url when one is set."""
    # the queue and the log create their own folders (the queue's SQLite file, the log's parent)
    if cfg.audit_url:
        return _opened(
            "audit_url", lambda: DatabaseAuditLog(cfg.audit_url, redact=redactor_from(cfg), key=key_from_env())
        )
    return AuditLog(cfg.audit_path, redact=redactor_from(cfg), key=key_from_env())


@dataclass(frozen=True)
class FollowUp:
    """Where an escalated request stands: ``id`` is the item that now stands for ``asked_id``
    (itself, or the last edit of it); ``answer`` is the text once it ran; ``by`` who approved,
    rejected or edited it last; ``reason`` a rejection's or failure's reason."""

    asked_id: str
    id: str
    status: Status
    answer: str | None = None
    by: str | None = None
    reason: str | None = None

    @property
    def done(self) -> bool:
        """Nothing more will happen to it (ran, failed, rejected or expired)."""
        return self.status in TERMINAL


@dataclass
class Service:
    config: ServerConfig
    gate: Gate
    backend: object | None
    approvals: ApprovalQueue
    audit: AuditStore
    router: Router
    stuck_after_s: float = STUCK_AFTER_S
    _stop: threading.Event = field(default_factory=threading.Event)
    _worker: threading.Thread | None = None

    def audit_problem(self) -> str | None:
        """None when the audit log can take records; otherwise why not (the service is then not
        ready, and everything that needs a record fails closed with AuditError)."""
        return self.audit.health()

    def approvals_problem(self) -> str | None:
        """None when the approvals database answers; otherwise why not (the service is then not
        ready, and every escalation fails closed: StoreUnavailable, a 503)."""
        return self.approvals.health()

    @property
    def toolset(self):
        """The configured tools (None when the server has none)."""
        return self.router.toolloop.toolset if self.router.toolloop is not None else None

    def describe_approval(self, approval: Approval) -> RequestView:
        """What the approvals page shows of a queued request (so8t.agent.review.request_view)."""
        return request_view(approval, redactor=self.audit.redactor, toolset=self.toolset)

    def edit_approval(
        self,
        approval_id: str,
        editor: str,
        *,
        content: str | None = None,
        arguments: str | None = None,
        note: str | None = None,
    ) -> Approval:
        """An operator's edit, per request kind (so8t.agent.review.edit_approval): validated, gated
        again, stored as a new item (PENDING, or REJECTED when the gate refuses). EditError (a
        ValueError) names a field that is wrong."""
        return edit_approval(
            self.approvals,
            approval_id,
            editor,
            gate=self.gate,
            redactor=self.audit.redactor,
            toolset=self.toolset,
            content=content,
            arguments=arguments,
            note=note,
        )

    def recover(self) -> dict:
        """The recovery routine (start-up and every worker round): torn audit fragments are
        recorded, and approved steps EXECUTING for longer than ``stuck_after_s`` become FAILED
        ("interrupted"), each with its audit record. Raises AuditError while the log is failing."""
        fragments = self.audit.recover()
        interrupted = self.approvals.recover_stuck(self.stuck_after_s)
        for item in interrupted:
            log.error("approval %s was EXECUTING and never completed: marked FAILED (interrupted)", item.id)
        return {"fragments": len(fragments), "interrupted": len(interrupted)}

    def work_once(self) -> dict:
        """Expire due approvals, then run every approved chat request once. Returns counts."""
        expired = self.approvals.expire_due()
        ran, failed = 0, 0
        if self.backend is not None:
            for item in self.approvals.list(status=Status.APPROVED, limit=50):
                try:
                    ran += self._run_approved(item)
                except AlreadyClaimed:
                    continue  # another worker (another replica) claimed it first: it runs there, once
                except Exception as exc:  # noqa: BLE001 - one bad item must not stop the worker
                    failed += 1
                    log.error("approved request %s failed: %s", item.id, exc)
        return {"expired": len(expired), "ran": ran, "failed": failed}

    def _run_approved(self, item: Approval) -> bool:
        """Run one APPROVED item exactly once, if this service can (False: no backend, or a tool
        call and no tools configured here; it is left for a server that has them)."""
        if self.backend is None or (item.kind == "tool_call" and self.router.toolloop is None):
            return False
        if item.kind == "tool_call":
            self.router.toolloop.execute_approved(item.id, expected_hash=item.request_hash)
        else:
            self.router.run_approved(item.id, expected_hash=item.request_hash)
        return True

    def follow_up(self, approval_id: str) -> FollowUp:
        """Where the escalated request ``approval_id`` stands, after its edits; an approved one is
        run here first (see the module's docstring). A run that fails is FAILED in the queue with
        its reason, which the FollowUp carries; ApprovalNotFound when there is no such item."""
        item, seen = self.approvals.get(approval_id), {approval_id}
        while item.status is Status.EDITED and item.superseded_by and item.superseded_by not in seen:
            seen.add(item.superseded_by)  # an edit makes a new item; follow it to the latest
            item = self.approvals.get(item.superseded_by)
        if item.status is Status.APPROVED:
            try:
                self._run_approved(item)
            except AlreadyClaimed:
                pass  # a server's worker took it first: its result is read below
            except Exception as exc:  # noqa: BLE001 - the queue has it FAILED, with the reason
                log.error("approved request %s failed: %s", item.id, exc)
            item = self.approvals.get(item.id)
        answer = (item.result or {}).get("text") if item.status is Status.EXECUTED else None
        return FollowUp(approval_id, item.id, item.status, answer, item.approved_by or item.decided_by, item.reason)

    def start_worker(self) -> None:
        def loop():
            while not self._stop.wait(self.config.worker_interval_s):
                try:
                    self.recover()
                    self.work_once()
                except Exception as exc:  # noqa: BLE001
                    log.error("approval worker: %s", exc)

        self._worker = threading.Thread(target=loop, name="so8t-approvals", daemon=True)
        self._worker.start()

    def close(self) -> None:
        self._stop.set()
        if self._worker:
            self._worker.join(timeout=5)
        self.gate.close()
        if hasattr(self.backend, "close"):
            self.backend.close()
        self.approvals.close()
        if isinstance(self.audit, DatabaseAuditLog):
            self.audit.close()


def gate_options(cfg: ServerConfig) -> dict:
    """The Gate's keyword options from the server config (its caps, queue, batching and timeout)."""
    return {
        "fail_action": cfg.fail_action,
        "timeout_s": cfg.gate_timeout_s,
        "each_turn": cfg.each_turn,
        "max_views": cfg.gate_max_views,
        "max_turns": cfg.gate_max_turns,
        "max_chars": cfg.gate_max_chars,
        "max_tokens": cfg.gate_max_tokens,
        "queue_max": cfg.gate_queue_max,
        "batching": cfg.gate_batching,
        "batch_window_ms": cfg.gate_batch_window_ms,
        "batch_max": cfg.gate_batch_max,
    }


KERNEL_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def limit_kernel_cache(entries: int) -> None:
    """Cap oneDNN's per-shape kernel cache (ServerConfig.gate_kernel_cache) unless the
    environment already says; -1 leaves oneDNN's default. Effective only before the process's
    first oneDNN kernel is built (oneDNN reads the variable once)."""
    if entries >= 0:
        os.environ.setdefault(KERNEL_CACHE_ENV, str(entries))


def build_service(cfg: ServerConfig, gate: Gate | None = None) -> Service:
    """Everything from the config. `gate`: one already built (bench/gate_load.py's untrained
    gate) instead of loading cfg.run; it should be built with gate_options(cfg)."""
    cfg.validate()
    audit = open_audit(cfg)
    approvals = open_approvals(cfg, audit)
    limit_kernel_cache(cfg.gate_kernel_cache)  # before the first forward pass: oneDNN reads it once
    if gate is None:
        gate = Gate.load(cfg.run, use_thresholds=cfg.use_thresholds, precision=cfg.gate_precision, **gate_options(cfg))
    if gate.ready and cfg.self_test:
        result = gate.self_test()
        log.info("gate self-test: %s", result.reason)
    if gate.ready:
        gate.warm_up()
    if not gate.ready:
        audit.append(GATE_ERROR, {"error": gate.load_error, "at": "startup"})
    backend: OpenAIBackend | InProcessBackend | None
    if cfg.backend == "openai":
        backend = OpenAIBackend(
            cfg.backend_url,
            cfg.backend_model,
            api_key=os.environ.get(cfg.backend_api_key_env),
            timeout_s=cfg.backend_timeout_s,
            retries=cfg.backend_retries,
        )
    else:
        backend = InProcessBackend(gate) if gate.ready else None
    if cfg.shadow:
        log.warning("shadow mode: the gate's decisions are logged but NOT enforced")
    toolloop = None
    if cfg.tools and backend is not None:
        from so8t.agent.autonomy import store_for
        from so8t.agent.toolloop import ToolLoop
        from so8t.agent.tools.config import load_tools

        toolset, policy = load_tools(cfg.tools)
        toolloop = ToolLoop(
            gate,
            backend,
            toolset,
            policy,
            approvals,
            audit,
            max_steps=cfg.tool_max_steps,
            max_tokens=cfg.max_tokens,
            autonomy=store_for(cfg),
        )
        toolloop.autonomy.check()  # an unusable state is a warning at start (and 'ask' everywhere)
    router = Router(
        gate,
        backend,
        approvals,
        audit,
        audit_allow=cfg.audit_allow,
        approval_ttl_s=cfg.approval_ttl_s,
        max_tokens=cfg.max_tokens,
        shadow=cfg.shadow,
        toolloop=toolloop,
    )
    service = Service(cfg, gate, backend, approvals, audit, router)
    try:  # a failing store does not stop the start: the service is not ready and fails closed
        done = service.recover()
        if any(done.values()):
            log.warning("recovery at start-up: %s", done)
    except AuditError as exc:
        log.error("recovery at start-up: %s", exc)
    return service
