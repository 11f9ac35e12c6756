"""Health routes: GET /healthz (alive), /readyz (ready to serve), /metrics (Prometheus text).

Guarantees: /readyz is 200 only when the gate is loaded, the audit log takes records and the
approvals database answers, else 503 naming what is wrong; /metrics never fails because the
approvals database is down (``so8t_approvals_store_up 0`` and no queue numbers then).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from so8t.agent.service import Service
from so8t.agent.sqlstore import StoreUnavailable
from so8t.gate.gate import LATENCY_BUCKETS_MS
from so8t.server.routes.common import ServiceDep

__all__ = ["approval_gauges", "gate_metrics", "router"]

router = APIRouter()


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/readyz")
def readyz(service: ServiceDep):
    g = service.gate
    audit = service.audit_problem()  # a store that cannot take records: not ready (fail closed)
    approvals = service.approvals_problem()
    ready = g.ready and audit is None and approvals is None
    body = {
        "ready": ready,
        "model_version": g.model_version,
        "policy_version": g.policy_version,
        "error": g.load_error or audit or approvals,
        "audit": audit or "ok",
        "approvals": approvals or "ok",
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus(service: ServiceDep):
    return "\n".join(gate_metrics(service) + approval_gauges(service) + gate_state(service)) + "\n"


def gate_metrics(service: Service) -> list[str]:
    """Every decision the gate made (chat, checks-only, tool calls and results), and its latency."""
    decisions, latency = service.gate.decisions, service.gate.latency
    lines = ["# TYPE so8t_gate_decisions_total counter"]
    lines += [f'so8t_gate_decisions_total{{action="{a}",status="{s}"}} {n}' for (a, s), n in sorted(decisions.items())]
    lines += [
        "# TYPE so8t_gate_fail_closed_total counter",
        f"so8t_gate_fail_closed_total {service.gate.counts.get('fail_closed', 0)}",
        "# TYPE so8t_gate_latency_ms histogram",
    ]
    lines += [f'so8t_gate_latency_ms_bucket{{le="{b}"}} {latency[b]}' for b in LATENCY_BUCKETS_MS]
    return lines + [
        f'so8t_gate_latency_ms_bucket{{le="+Inf"}} {latency["count"]}',
        f"so8t_gate_latency_ms_sum {latency['sum']:.3f}",
        f"so8t_gate_latency_ms_count {latency['count']}",
    ]


def approval_gauges(service: Service) -> list[str]:
    """The queue's gauges, read from the shared database (the same on every replica); when it
    cannot be read, so8t_approvals_store_up 0 and no queue numbers (the gate's own metrics stay)."""
    try:
        pending, oldest = service.approvals.pending_count(), service.approvals.oldest_pending_age_s()
    except StoreUnavailable:
        return ["# TYPE so8t_approvals_store_up gauge", "so8t_approvals_store_up 0"]
    return [
        "# TYPE so8t_approvals_store_up gauge",
        "so8t_approvals_store_up 1",
        "# TYPE so8t_approvals_pending gauge",
        f"so8t_approvals_pending {pending}",
        "# TYPE so8t_approvals_oldest_pending_seconds gauge",
        f"so8t_approvals_oldest_pending_seconds {oldest or 0:.3f}",
    ]


def gate_state(service: Service) -> list[str]:
    """Readiness, queue depth, and scoring rounds by how many requests one forward pass held."""
    sizes = dict(service.gate.batch_sizes)
    return [
        "# TYPE so8t_gate_ready gauge",
        f"so8t_gate_ready {int(service.gate.ready)}",
        "# TYPE so8t_gate_queue_pending gauge",
        f"so8t_gate_queue_pending {service.gate.queue_state()['pending']}",
        "# TYPE so8t_gate_batches_total counter",
    ] + [f'so8t_gate_batches_total{{requests="{n}"}} {sizes[n]}' for n in sorted(sizes)]
