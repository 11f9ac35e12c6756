"""Issue 13, item 8, on real SQLite files: `SELECT randomblob(N)` and large result sets used to
take as much memory as they asked for (a gigabyte blob came back whole, base64 and all; with a
high max_rows every row was fetched at once). Now a result is capped in rows and bytes, fetched
a few rows at a time and counted as it comes, SQLite refuses to make a value over the cap, and a
statement whose cost has no bound in its text needs a person's approval even on the read tier."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
import tracemalloc

import pytest
from sqlalchemy import event

from so8t.agent.approvals import ApprovalQueue, Status
from so8t.agent.audit import AuditLog
from so8t.agent.backends import OpenAIBackend
from so8t.agent.toolloop import ToolLoop, ToolPolicy
from so8t.agent.tools import ToolError, Toolset
from so8t.agent.tools.config import load_tools
from so8t.agent.tools.sql import _prepare, _syntax_for, _unbounded, sql_tool
from so8t.gate import Gate
from so8t.server.llm_server import serve_in_thread


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "shop.db"
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);"
        "INSERT INTO items (name) VALUES ('pen'), ('ink'), ('paper');"
    )
    con.commit()
    con.close()
    return path


def counted(ts: Toolset) -> list:
    """Count the rows SQLite actually produces for the tool: tick(x) in a query returns x and
    records it (registered on every connection of the tool's own engine)."""
    ticks: list = []
    engine = ts.actions["sql.query"].run.__self__.db.engine
    event.listen(engine, "connect", lambda dbapi, _: dbapi.create_function("tick", 1, lambda x: ticks.append(x) or x))
    return ticks


def test_a_gigabyte_randomblob_is_an_error_naming_the_cap_and_memory_stays_small(db):
    child = textwrap.dedent(f"""
        import json, resource
        from so8t.agent.tools import ToolError, Toolset
        from so8t.agent.tools.sql import sql_tool
        ts = Toolset(sql_tool("sqlite:///{db}"))
        call = ts.validate("sql.query", {{"sql": "SELECT randomblob(1000000000) AS b"}})
        out = {{"needs_approval": call.needs_approval}}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        try:
            res = ts.execute(call)
            out["result_bytes"] = len(json.dumps(res))
        except ToolError as exc:
            out["error"] = str(exc)
        out["peak_growth_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
        print(json.dumps(out))
    """)
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    # Before: no error, a 1.3 GB result, and the process's peak grew by gigabytes.
    assert "max_result_bytes" in out.get("error", "") and "1000000 bytes" in out["error"], out
    assert out["peak_growth_mb"] < 100, out
    assert "randomblob" in out["needs_approval"] and time.monotonic() - t0 < 60


def query_traced(ts: Toolset, sql: str) -> tuple[dict, int]:
    """The tool's result for `sql` and the peak bytes Python allocated while producing it."""
    tracemalloc.start()
    try:
        res = ts.execute(ts.validate("sql.query", {"sql": sql}))
        return res, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_huge_result_set_is_cut_by_bytes_and_fetched_a_chunk_at_a_time(db):
    ts = Toolset(sql_tool(f"sqlite:///{db}", max_rows=10**7, max_result_bytes=200_000))
    ticks = counted(ts)
    sql = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000000) "
        "SELECT tick(x) AS x, 'a row of ordinary width, about forty bytes' AS t FROM c"
    )
    res, peak = query_traced(ts, sql)
    assert res["truncated"] is True and res["truncated_by"] == "max_result_bytes" and "200000" in res["note"]
    assert 1_000 < res["row_count"] == len(res["rows"]) < 5_000
    assert len(json.dumps(res, ensure_ascii=False)) <= 200_000 + 1_000
    # Before: all 1,000,000 rows were fetched (fetchmany(max_rows + 1)), about 200 MB at peak.
    assert len(ticks) <= res["row_count"] + 70, f"{len(ticks)} rows fetched for {res['row_count']} returned"
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_wide_rows_stop_at_the_byte_cap(db):
    ts = Toolset(sql_tool(f"sqlite:///{db}"))  # defaults: 200 rows, 1,000,000 bytes
    ticks = counted(ts)
    sql = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 150) "
        "SELECT tick(x) AS x, randomblob(300000) AS b FROM c"
    )
    res, peak = query_traced(ts, sql)
    assert res["truncated_by"] == "max_result_bytes" and res["row_count"] == 2 and len(ticks) <= 4
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # before: 150 rows of 400 kB base64, ~100 MiB


def test_the_row_cap_says_so(db):
    ts = Toolset(sql_tool(f"sqlite:///{db}", max_rows=2))
    res = ts.execute(ts.validate("sql.query", {"sql": "SELECT name FROM items"}))
    assert res["row_count"] == 2 and res["truncated"] and res["truncated_by"] == "max_rows"


def test_the_caps_come_from_the_tools_config(db, tmp_path):
    (tmp_path / "tools.yaml").write_text(f"sql: {{url: 'sqlite:///{db}', max_result_bytes: 4096, max_rows: 500}}\n")
    ts, _ = load_tools(tmp_path / "tools.yaml")
    res = ts.execute(ts.validate("sql.query", {"sql": "SELECT randomblob(2000) AS b FROM items"}))
    assert res["truncated_by"] == "max_result_bytes" and res["row_count"] == 1
    with pytest.raises(ToolError, match="max_result_bytes"):
        ts.execute(ts.validate("sql.query", {"sql": "SELECT zeroblob(5000)"}))


UNBOUNDED = [
    ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", "recursive CTE"),
    ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c LIMIT 10", "recursive CTE"),
    (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000000000) SELECT x FROM c",
        "recursive CTE",
    ),
    ("SELECT randomblob(1000000000)", "randomblob()"),
    ("SELECT randomblob(1e9)", "randomblob()"),
    ("SELECT zeroblob(id * 1000000) FROM items", "zeroblob()"),
    ("SELECT randomblob(:n)", "randomblob()"),
    ("SELECT * FROM items a CROSS JOIN items b", "cross join"),
    ("SELECT * FROM items a, items b, items c", "cross join"),
    ("SELECT a.id FROM items a, items b WHERE a.id = 1 UNION SELECT x.id FROM items x, items y", "cross join"),
    ("SELECT value FROM generate_series(1, :n)", "generate_series()"),
]
BOUNDED = [
    "SELECT * FROM items",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100) SELECT count(*) FROM c",
    "WITH t AS (SELECT * FROM items) SELECT * FROM t",
    "SELECT randomblob(16) AS token",
    "SELECT a.name, b.name FROM items a, items b WHERE a.id = b.id",
    "SELECT * FROM items a JOIN items b ON a.id = b.id",
    "SELECT * FROM items a CROSS JOIN items b LIMIT 10",
    "SELECT substr(name, 1, 2), coalesce(name, 'x') FROM items",
    "SELECT value FROM generate_series(1, 100)",
]


@pytest.mark.parametrize("sql, why", UNBOUNDED)
def test_a_query_with_unbounded_cost_needs_approval(db, sql, why):
    params = {"n": 10} if ":n" in sql else {}
    call = Toolset(sql_tool(f"sqlite:///{db}")).validate("sql.query", {"sql": sql, "params": params})
    assert call.needs_approval and why in call.needs_approval and "unbounded" in call.needs_approval
    assert ToolPolicy().level(call) == "approval"  # the read tier is 'auto' by default


@pytest.mark.parametrize("sql", BOUNDED)
def test_an_ordinary_query_runs_on_its_tier(db, sql):
    call = Toolset(sql_tool(f"sqlite:///{db}")).validate("sql.query", {"sql": sql})
    assert call.needs_approval is None and ToolPolicy().level(call) == "auto"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT repeat('x', 1000000000)",
        "SELECT lpad('', n, 'x') FROM t",
        "SELECT * FROM generate_series(1, 10000000000)",
    ],
)
def test_postgresql_size_functions_are_judged_the_same_way(sql):
    assert _unbounded(_prepare(sql, _syntax_for("postgresql")).tokens, 1_000_000)


def test_a_write_with_an_unbounded_value_is_flagged_too(db):
    call = Toolset(sql_tool(f"sqlite:///{db}", read_only=False)).validate(
        "sql.execute", {"sql": "INSERT INTO items (name) SELECT randomblob(:n)", "params": {"n": 5}}
    )
    assert "randomblob" in call.needs_approval


def test_an_unbounded_query_waits_for_a_person_in_the_tool_loop(db, tmp_path, run_with_thresholds, scripted_llm):
    """The real loop: a scripted LLM proposes the calls, the real gate (allowing) judges them,
    the read tier is 'auto'; the unbounded query is queued, not run, until approved."""
    gate = Gate.load(run_with_thresholds(1.0, 0.0))
    audit = AuditLog(tmp_path / "audit.jsonl")
    queue = ApprovalQueue(f"sqlite:///{tmp_path}/q.db")
    ts = Toolset(sql_tool(f"sqlite:///{db}"))
    ticks = counted(ts)
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT tick(x) FROM c"
    app, _ = scripted_llm(
        [
            {"calls": [("sql.query", {"sql": "SELECT name FROM items ORDER BY id"})]},
            {"calls": [("sql.query", {"sql": forever})]},
            {"content": "done"},
        ]
    )
    h = serve_in_thread(app)
    try:
        loop = ToolLoop(gate, OpenAIBackend(f"{h.url}/v1", "m", retries=0), ts, ToolPolicy(), queue, audit)
        res = loop.run([{"role": "user", "content": "Count everything"}], "alice")
    finally:
        h.stop()
        gate.close()
    assert [s.status for s in res.steps] == ["executed", "pending"] and res.outcome == "pending"
    assert "unbounded" in res.steps[1].detail and "recursive CTE" in res.steps[1].detail
    assert ticks == [] and queue.get(res.approval_id).status == Status.PENDING
    escalated = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines() if '"tool.escalated"' in x]
    assert len(escalated) == 1 and "recursive CTE" in json.dumps(escalated[0])
