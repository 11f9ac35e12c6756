"""Issue 13, item 8, on a real PostgreSQL server (the session's throwaway one, conftest.py;
skipped, saying so, only where the PostgreSQL server binaries are not installed): a big result
comes through a server-side cursor a chunk at a time and is cut at the byte cap, while
statements a server-side cursor cannot run (EXPLAIN, SHOW, INSERT ... RETURNING) still run, and
unbounded statements need approval as on SQLite."""

from __future__ import annotations

import tracemalloc

import pytest
from sqlalchemy import create_engine, text

from so8t.agent.toolloop import ToolPolicy
from so8t.agent.tools import Toolset
from so8t.agent.tools.sql import sql_tool


@pytest.fixture(scope="module")
def pg(postgresql) -> str:
    """A database of this module's own with a three-row table `items`; its URL."""
    url = postgresql.new_database("capped_and_streamed")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE items (id serial PRIMARY KEY, name text)"))
            conn.execute(text("INSERT INTO items (name) VALUES ('pen'), ('ink'), ('paper')"))
    finally:
        engine.dispose()
    return url


def call(ts: Toolset, action: str, sql: str) -> dict:
    return ts.execute(ts.validate(action, {"sql": sql}))


def test_a_big_result_is_streamed_and_cut_at_the_byte_cap(pg):
    ts = Toolset(sql_tool(pg, max_rows=10**7, max_result_bytes=200_000))
    sql = "SELECT x, 'a row of ordinary width, about forty bytes' AS t FROM generate_series(1, 1000000) AS x"
    tracemalloc.start()
    try:
        res = call(ts, "sql.query", sql)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res["truncated_by"] == "max_result_bytes" and 1_000 < res["row_count"] < 5_000
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # all million rows: over 100 MiB


def test_statements_a_server_side_cursor_cannot_run_still_run(pg):
    ts = Toolset(sql_tool(pg, read_only=False))
    assert call(ts, "sql.query", "EXPLAIN SELECT * FROM items")["columns"] == ["QUERY PLAN"]
    assert call(ts, "sql.query", "SHOW server_version")["row_count"] == 1
    assert call(ts, "sql.query", "VALUES (1, 'a')")["rows"] == [[1, "a"]]
    assert call(ts, "sql.query", "WITH t AS (SELECT * FROM items) SELECT count(*) FROM t")["rows"] == [[3]]
    got = call(ts, "sql.execute", "INSERT INTO items (name) VALUES ('cup') RETURNING name")
    assert got["rows"] == [["cup"]] and got["rowcount"] == 1
    assert call(ts, "sql.execute", "DELETE FROM items WHERE name = 'cup'") == {"rowcount": 1}


@pytest.mark.parametrize(
    "sql, why",
    [
        ("SELECT repeat('x', 1000000000)", "repeat()"),
        ("SELECT * FROM generate_series(1, 10000000000)", "generate_series()"),
        ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", "recursive CTE"),
        ("SELECT * FROM items a CROSS JOIN items b", "cross join"),
    ],
)
def test_unbounded_statements_need_approval(pg, sql, why):
    c = Toolset(sql_tool(pg)).validate("sql.query", {"sql": sql})
    assert why in (c.needs_approval or "") and ToolPolicy().level(c) == "approval"
