"""An auto-run tool call was executed before any record of the gate's decision was written: the
only record before it ran was tool.proposed (no decision), and tool.executed came after. When the
audit store failed in between (the disk filled while the gate scored), the write ran and the
AuditError came after it: an action taken with no record of why it was allowed.

Now a tool.allowed record (the decision, the level, the call hash) is written before the call
runs; if it cannot be written, nothing runs (AuditError, the server's 503). The store really
fills: the log becomes /dev/full (ENOSPC from the kernel)."""

import json

import pytest

from so8t.agent.approvals import ApprovalQueue
from so8t.agent.audit import AuditError, AuditLog
from so8t.agent.backends import OpenAIBackend
from so8t.agent.toolloop import ToolLoop, ToolPolicy
from so8t.agent.tools import Toolset
from so8t.agent.tools.files import files_tool
from so8t.gate import Gate
from so8t.server.llm_server import serve_in_thread

from full_filesystem import full_filesystem

WRITE = ("files.write", {"path": "out.txt", "content": "written"})


@pytest.fixture
def store(tmp_path):
    yield from full_filesystem("dev_full", tmp_path)


@pytest.fixture
def loop(run_with_thresholds, tmp_path, scripted_llm, store):
    root = tmp_path / "sandbox"
    root.mkdir()
    gate = Gate.load(run_with_thresholds(1.0, 0.0))  # ALLOWs everything
    app, _ = scripted_llm([{"calls": [WRITE]}, {"content": "done"}])
    with serve_in_thread(app) as h:
        audit = AuditLog(store.log)
        lp = ToolLoop(
            gate,
            OpenAIBackend(f"{h.url}/v1", "m", retries=0),
            Toolset(files_tool(root)),
            ToolPolicy.from_config({"write": "auto"}, None),
            ApprovalQueue(f"sqlite:///{tmp_path}/q.db"),
            audit,
        )
        yield lp, root
    gate.close()


def _events(store):
    return [json.loads(line)["event"] for line in store.log.read_text(encoding="utf-8").splitlines()]


def test_a_call_whose_decision_cannot_be_recorded_does_not_run(loop, store, monkeypatch):
    lp, root = loop
    decide = lp.gate.decide

    def decide_then_fill(convo):
        d = decide(convo)
        store.fill()  # the disk fills while the gate scores: tool.proposed is written, nothing after
        return d

    monkeypatch.setattr(lp.gate, "decide", decide_then_fill)
    with pytest.raises(AuditError):
        lp.run([{"role": "user", "content": "save a note"}], "alice")
    assert not (root / "out.txt").exists()
    store.free()
    assert _events(store) == ["tool.proposed"]


def test_an_allowed_call_is_recorded_with_its_decision_before_it_runs(loop, store):
    lp, root = loop
    res = lp.run([{"role": "user", "content": "save a note"}], "alice")
    assert [s.status for s in res.steps] == ["executed"] and (root / "out.txt").read_text() == "written"
    records = [json.loads(line) for line in store.log.read_text(encoding="utf-8").splitlines()]
    assert [r["event"] for r in records] == ["tool.proposed", "tool.allowed", "tool.executed"]
    allowed = records[1]["data"]
    assert allowed["decision"]["action"] == "ALLOW" and allowed["level"] == "auto"
    assert allowed["call_hash"] == records[2]["data"]["call_hash"]
