"""The gated server's routes, one ``APIRouter`` per area; ``so8t.server.app.create_app`` wires them.

* ``health``: GET /healthz, /readyz, /metrics
* ``gate``: POST /v1/gate (checks only: the decision, nothing runs)
* ``chat``: GET /v1/models, POST /v1/chat/completions (OpenAI-compatible, gated)
* ``tools``: POST /v1/tools/call (a client agent's tool call, gated and policy-checked)
* ``approvals``: GET /v1/approvals/{id} (an escalated request's status)

The operators' routes under /admin are ``so8t.server.admin``. Every route reads the Service from
``request.app.state.service`` through the ``ServiceDep`` dependency (``common``): a route holds no
state of its own, so the same routers serve any number of apps.
"""
