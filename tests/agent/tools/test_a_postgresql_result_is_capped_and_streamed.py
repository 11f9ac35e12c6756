"""Issue 13, item 8, on a real PostgreSQL server (started here in a temporary folder on a free
loopback port; skipped when the PostgreSQL binaries or the psycopg driver are not installed):
a big result comes through a server-side cursor a chunk at a time and is cut at the byte cap,
while statements a server-side cursor cannot run (EXPLAIN, SHOW, INSERT ... RETURNING) still
run, and unbounded statements need approval as on SQLite."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest

from so8t.agent.toolloop import ToolPolicy
from so8t.agent.tools import Toolset
from so8t.agent.tools.sql import sql_tool

pytest.importorskip("psycopg", reason="the PostgreSQL tests need the psycopg driver (pip install 'psycopg[binary]')")


def _bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="module")
def pg():
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl)")
    # not under pytest's tmp folder: as root that is private to root, and the server runs as postgres
    root = Path(tempfile.mkdtemp(prefix="so8t-pg-"))
    as_root = os.geteuid() == 0                  # postgres refuses to run as root: use its own user
    if as_root:
        try:
            shutil.chown(root, "postgres")
        except (LookupError, PermissionError):
            pytest.skip("running as root without a 'postgres' user")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd: str) -> None:
        line = " ".join(f"'{c}'" for c in cmd)
        full = ["su", "postgres", "-c", line] if as_root else ["sh", "-c", line]
        done = subprocess.run(full, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip(f"cannot start PostgreSQL: {done.stderr.strip()[-300:]}")

    data = root / "data"
    run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres")
    run(pg_ctl, "-D", str(data), "-w", "-l", str(root / "log"), "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    from sqlalchemy import create_engine, text
    engine = create_engine(url)
    for _ in range(50):
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE items (id serial PRIMARY KEY, name text)"))
                conn.execute(text("INSERT INTO items (name) VALUES ('pen'), ('ink'), ('paper')"))
            break
        except Exception:  # noqa: BLE001 - still starting
            time.sleep(0.1)
    engine.dispose()
    yield url
    run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
    shutil.rmtree(root, ignore_errors=True)


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
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MiB"     # all million rows: over 100 MiB


def test_statements_a_server_side_cursor_cannot_run_still_run(pg):
    ts = Toolset(sql_tool(pg, read_only=False))
    assert call(ts, "sql.query", "EXPLAIN SELECT * FROM items")["columns"] == ["QUERY PLAN"]
    assert call(ts, "sql.query", "SHOW server_version")["row_count"] == 1
    assert call(ts, "sql.query", "VALUES (1, 'a')")["rows"] == [[1, "a"]]
    assert call(ts, "sql.query", "WITH t AS (SELECT * FROM items) SELECT count(*) FROM t")["rows"] == [[3]]
    got = call(ts, "sql.execute", "INSERT INTO items (name) VALUES ('cup') RETURNING name")
    assert got["rows"] == [["cup"]] and got["rowcount"] == 1
    assert call(ts, "sql.execute", "DELETE FROM items WHERE name = 'cup'") == {"rowcount": 1}


@pytest.mark.parametrize("sql, why", [
    ("SELECT repeat('x', 1000000000)", "repeat()"),
    ("SELECT * FROM generate_series(1, 10000000000)", "generate_series()"),
    ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", "recursive CTE"),
    ("SELECT * FROM items a CROSS JOIN items b", "cross join"),
])
def test_unbounded_statements_need_approval(pg, sql, why):
    c = Toolset(sql_tool(pg)).validate("sql.query", {"sql": sql})
    assert why in (c.needs_approval or "") and ToolPolicy().level(c) == "approval"
