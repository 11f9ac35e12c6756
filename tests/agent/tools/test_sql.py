"""sql.* on real SQLite files: one statement a call, the right action for each statement, and
read-only meaning read-only down to the connection."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest

from so8t.agent.tools import ToolError, Toolset
from so8t.agent.tools.files import files_tool
from so8t.agent.tools.sql import (
    ExecuteArgs,
    QueryArgs,
    SchemaChangeArgs,
    _Database,
    _jsonable,
    _prepare,
    _Refused,
    _syntax_for,
    sql_tool,
)


@pytest.fixture
def db(tmp_path):
    """A SQLite file with a Japanese name: 顧客 (customers) with 5 rows, and a view."""
    path = tmp_path / "顧客データ.db"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE 顧客 (id INTEGER PRIMARY KEY, 名前 TEXT NOT NULL, メモ TEXT, 写真 BLOB);
        CREATE VIEW 名簿 AS SELECT 名前 FROM 顧客;
    """)
    con.executemany(
        "INSERT INTO 顧客 (名前, メモ, 写真) VALUES (?, ?, ?)",
        [
            ("佐藤", "常連", b"\x89PNG\x00"),
            ("鈴木", None, None),
            ("高橋", "a:b", None),
            ("田中", None, None),
            ("伊藤", None, None),
        ],
    )
    con.commit()
    con.close()
    return path


def url(path) -> str:
    return f"sqlite:///{path}"


def call(ts: Toolset, name: str, args: dict) -> dict:
    """What the agent does: validate completely, then execute."""
    return ts.execute(ts.validate(name, args))


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def names(path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return [r[0] for r in con.execute("SELECT 名前 FROM 顧客 ORDER BY id")]
    finally:
        con.close()


# -- sql.query --------------------------------------------------------------------------------


def test_query_with_bound_params_and_converted_values(db):
    ts = Toolset(sql_tool(url(db)))
    got = call(
        ts, "sql.query", {"sql": "SELECT id, 名前, 写真 FROM 顧客 WHERE 名前 = :名前", "params": {"名前": "佐藤"}}
    )
    assert got == {
        "columns": ["id", "名前", "写真"],
        "rows": [[1, "佐藤", "iVBORwA="]],
        "row_count": 1,
        "truncated": False,
        "converted": {"写真": "base64 (bytes)"},
    }
    # Colons inside strings and comments are text, not placeholders.
    got = call(ts, "sql.query", {"sql": "SELECT 名前 FROM 顧客 WHERE メモ = 'a:b' -- :not_a_param"})
    assert got["rows"] == [["高橋"]]


def test_an_injection_string_stays_data(db):
    ts = Toolset(sql_tool(url(db), read_only=False))
    evil = "x' OR '1'='1"
    assert call(ts, "sql.query", {"sql": "SELECT * FROM 顧客 WHERE 名前 = :n", "params": {"n": evil}})["rows"] == []
    drop = "x'); DROP TABLE 顧客; --"
    assert call(ts, "sql.execute", {"sql": "INSERT INTO 顧客 (名前) VALUES (:n)", "params": {"n": drop}}) == {
        "rowcount": 1
    }
    assert names(db)[-1] == drop and len(names(db)) == 6


def test_row_limit_and_truncated_flag(db):
    ts = Toolset(sql_tool(url(db), max_rows=3))
    got = call(ts, "sql.query", {"sql": "SELECT id FROM 顧客 ORDER BY id"})
    assert got["rows"] == [[1], [2], [3]] and got["row_count"] == 3 and got["truncated"] is True
    got = call(ts, "sql.query", {"sql": "SELECT id FROM 顧客 WHERE id <= 3 ORDER BY id"})
    assert got["row_count"] == 3 and got["truncated"] is False


@pytest.mark.parametrize(
    "sql",
    [
        "WITH 常連 AS (SELECT * FROM 顧客 WHERE メモ = '常連') SELECT 名前 FROM 常連",
        "VALUES (1, 'a')",
        "EXPLAIN QUERY PLAN SELECT * FROM 顧客 WHERE id = 1",
        "PRAGMA table_info(顧客)",
        "PRAGMA main.index_list('顧客')",
        "PRAGMA user_version",
        "SELECT replace(名前, '藤', 'とう') FROM 顧客",
        "  /* leading comment; with a semicolon */ SELECT 1 ; ",
        'SELECT \';\' AS semi, "x;y" FROM (SELECT 1 AS "x;y") -- trailing ; comment',
        "SELECT 1;\n-- a comment after the only statement",
    ],
)
def test_read_statements_run_through_sql_query(db, sql):
    assert "rows" in call(Toolset(sql_tool(url(db))), "sql.query", {"sql": sql})


def test_a_runaway_query_times_out(db):
    ts = Toolset(sql_tool(url(db), timeout_s=0.3))
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    with pytest.raises(ToolError, match=r"sql.query: the statement timed out after 0.3 s"):
        call(ts, "sql.query", {"sql": forever})
    assert call(ts, "sql.query", {"sql": "SELECT count(*) FROM 顧客"})["rows"] == [[5]]  # still usable


# -- one statement, the right action ----------------------------------------------------------


@pytest.mark.parametrize(
    "sql, reason",
    [
        ("SELECT 1; DROP TABLE 顧客", "several statements (2); send one statement per call"),
        ("SELECT 1; SELECT 2;", "several statements (2)"),
        ("SELECT ';'; DELETE FROM 顧客 -- ;", "several statements (2)"),
        ("SELECT 1 /* ; */; /* */ DELETE FROM 顧客", "several statements (2)"),
        ("", "String should have at least 1 character"),
        ("  -- only a comment", "there is no SQL statement"),
        ("SELECT 'unterminated", "an unterminated ' quote"),
        ("SELECT 1 /* unterminated", "an unterminated /* comment"),
        ("SELECT * FROM 顧客 WHERE id = ?", "placeholder '?': use :name placeholders"),
    ],
)
def test_exactly_one_statement(db, sql, reason):
    with pytest.raises(ToolError, match="sql.query: invalid arguments: sql: .*" + re.escape(reason)):
        Toolset(sql_tool(url(db))).validate("sql.query", {"sql": sql})


@pytest.mark.parametrize(
    "action, sql, message",
    [
        ("sql.query", "DELETE FROM 顧客", "DELETE is a data change, not a read: send it with sql.execute"),
        ("sql.query", "UPDATE 顧客 SET メモ = NULL", "UPDATE is a data change, not a read: send it with sql.execute"),
        ("sql.query", "INSERT INTO 顧客 (名前) VALUES ('x')", "INSERT is a data change"),
        ("sql.query", "WITH x AS (SELECT 1) DELETE FROM 顧客", "DELETE is a data change, not a read: send it with"),
        ("sql.query", "EXPLAIN QUERY PLAN DELETE FROM 顧客", "DELETE is a data change"),
        ("sql.query", "DROP TABLE 顧客", "DROP TABLE is a schema change, not a read: send it with sql.schema_change"),
        (
            "sql.query",
            "create table x (a)",
            "CREATE TABLE is a schema change, not a read: send it with sql.schema_change",
        ),
        ("sql.execute", "SELECT * FROM 顧客", "SELECT is a read, not a data change: send it with sql.query"),
        ("sql.execute", "DROP TABLE 顧客", "DROP TABLE is a schema change, not a data change: send it with sql.schema"),
        ("sql.execute", "ALTER TABLE 顧客 ADD COLUMN x", "ALTER TABLE is a schema change"),
        (
            "sql.schema_change",
            "DELETE FROM 顧客",
            "DELETE is a data change, not a schema change: send it with sql.execute",
        ),
        ("sql.schema_change", "SELECT 1", "SELECT is a read, not a schema change: send it with sql.query"),
    ],
)
def test_a_statement_sent_to_the_wrong_action_is_refused_naming_the_right_one(db, action, sql, message):
    ts = Toolset(sql_tool(url(db), read_only=False))
    before = digest(db)
    with pytest.raises(ToolError, match=f"{action}: invalid arguments: sql: {message}"):
        ts.validate(action, {"sql": sql})
    # And at run time too, for a caller that skipped validation.
    model = {"sql.query": QueryArgs, "sql.execute": ExecuteArgs, "sql.schema_change": SchemaChangeArgs}[action]
    fields = {"sql": sql} | ({"params": {}} if "params" in model.model_fields else {})
    with pytest.raises(ToolError, match=f"^{action}: {message}"):
        ts.actions[action].run(model.model_construct(**fields))
    assert digest(db) == before


@pytest.mark.parametrize(
    "sql, reason",
    [
        (
            "ATTACH DATABASE 'other.db' AS other",
            "ATTACH is not available: it would open or create another database file",
        ),
        ("BEGIN", "BEGIN is not available: each call runs in its own transaction"),
        ("COMMIT", "transaction control is not available"),
        ("VACUUM", "maintenance statements are not available"),
        ("PRAGMA journal_mode=WAL", "PRAGMA journal_mode in this form changes a setting"),
        ("PRAGMA journal_mode(WAL)", "PRAGMA journal_mode in this form changes a setting"),
        ("PRAGMA query_only=OFF", "PRAGMA query_only in this form changes a setting"),
        ("GRANT ALL ON x TO y", "GRANT statements are not available"),
        ("(SELECT 1)", "the statement starts with '(', not with a SQL keyword"),
    ],
)
@pytest.mark.parametrize("action", ["sql.query", "sql.execute", "sql.schema_change"])
def test_statements_no_action_runs(db, action, sql, reason):
    with pytest.raises(ToolError, match=f"{action}: invalid arguments: sql: .*{re.escape(reason)}"):
        Toolset(sql_tool(url(db), read_only=False)).validate(action, {"sql": sql})
    assert not (db.parent / "other.db").exists()


# -- read-only ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action, sql",
    [
        ("sql.execute", "DELETE FROM 顧客"),
        ("sql.schema_change", "DROP TABLE 顧客"),
        ("sql.execute", "SELECT 1"),  # refused before it is even classified
    ],
)
def test_read_only_refuses_execute_and_schema_change(db, action, sql):
    ts = Toolset(sql_tool(url(db)))  # read_only=True is the default
    before = digest(db)
    with pytest.raises(
        ToolError, match=f"{action}: invalid arguments: sql: this database is connected read-only: {action} is refused"
    ):
        ts.validate(action, {"sql": sql})
    model = ExecuteArgs if action == "sql.execute" else SchemaChangeArgs
    fields = {"sql": sql} | ({"params": {}} if action == "sql.execute" else {})
    with pytest.raises(ToolError, match=f"^{action}: this database is connected read-only"):
        ts.actions[action].run(model.model_construct(**fields))
    assert digest(db) == before and len(names(db)) == 5


def test_read_only_holds_at_the_connection_even_for_a_misclassified_write(db):
    """Past the classifier (as if it were wrong): SQLite itself refuses to write."""
    before = digest(db)
    ro = _Database(url(db), read_only=True, timeout_s=5)
    for sql in ["INSERT INTO 顧客 (名前) VALUES ('侵入')", "DROP TABLE 顧客", "CREATE TABLE x (a)"]:
        for write in (True, False):
            with pytest.raises(
                ToolError, match="the database refused the statement: attempt to write a readonly database"
            ):
                ro.run(sql, {}, write=write, max_rows=10)
    # Turning query_only off does not help: the file itself is open read-only (mode=ro).
    ro.run("PRAGMA query_only=OFF", {}, write=True, max_rows=10)
    with pytest.raises(ToolError, match="readonly database"):
        ro.run("UPDATE 顧客 SET 名前 = 'x'", {}, write=True, max_rows=10)
    assert digest(db) == before and len(names(db)) == 5


def test_reads_on_a_writable_database_cannot_write_either(db):
    rw = _Database(url(db), read_only=False, timeout_s=5)
    with pytest.raises(ToolError, match="attempt to write a readonly database"):
        rw.run("DELETE FROM 顧客", {}, write=False, max_rows=10)  # a read runs under query_only
    assert len(names(db)) == 5
    assert rw.run("DELETE FROM 顧客 WHERE id = 5", {}, write=True, max_rows=10) == {"rowcount": 1}  # writes still work
    assert len(names(db)) == 4


def test_the_sqlite_driver_refuses_a_second_statement_too(db):
    """The last layer under the splitter: sqlite3 runs one statement per execute."""
    rw = _Database(url(db), read_only=False, timeout_s=5)
    with pytest.raises(ToolError, match="one statement at a time"):
        rw.run("SELECT 1; DELETE FROM 顧客", {}, write=True, max_rows=10)
    assert len(names(db)) == 5


def test_read_only_needs_an_existing_file_and_never_creates_one(tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(ValueError, match="does not exist \\(a read-only sql tool cannot create it\\)"):
        sql_tool(url(missing))
    assert not missing.exists()


# -- writes -----------------------------------------------------------------------------------


def test_execute_returns_rowcount_and_returning_rows(db):
    ts = Toolset(sql_tool(url(db), read_only=False))
    assert call(
        ts, "sql.execute", {"sql": "UPDATE 顧客 SET メモ = :m WHERE id > :n", "params": {"m": "新規", "n": 3}}
    ) == {"rowcount": 2}
    got = call(
        ts, "sql.execute", {"sql": "INSERT INTO 顧客 (名前) VALUES (:n) RETURNING id, 名前", "params": {"n": "渡辺"}}
    )
    assert got["columns"] == ["id", "名前"] and got["rows"] == [[6, "渡辺"]]
    assert (
        call(ts, "sql.execute", {"sql": "DELETE FROM 顧客 WHERE 名前 = :n", "params": {"n": "渡辺"}})["rowcount"] == 1
    )
    assert names(db) == ["佐藤", "鈴木", "高橋", "田中", "伊藤"]


def test_a_failing_write_is_rolled_back_and_explained(db):
    ts = Toolset(sql_tool(url(db), read_only=False))
    with pytest.raises(ToolError, match="sql.execute: the database refused the statement: NOT NULL constraint failed"):
        call(ts, "sql.execute", {"sql": "UPDATE 顧客 SET 名前 = NULL"})
    assert len(names(db)) == 5 and None not in names(db)


def test_schema_change_when_allowed(db):
    ts = Toolset(sql_tool(url(db), read_only=False))
    assert call(ts, "sql.schema_change", {"sql": "CREATE TABLE 注文 (id INTEGER PRIMARY KEY, 顧客id INTEGER)"}) == {
        "done": "CREATE TABLE"
    }
    assert call(ts, "sql.schema_change", {"sql": "ALTER TABLE 注文 ADD COLUMN 金額 NUMERIC"}) == {"done": "ALTER TABLE"}
    # A trigger body holds several statements, and is still one statement.
    trigger = (
        "CREATE TRIGGER 削除記録 AFTER DELETE ON 顧客 BEGIN "
        "INSERT INTO 注文 (顧客id, 金額) VALUES (old.id, CASE WHEN old.id > 2 THEN 1 ELSE 0 END); "
        "UPDATE 注文 SET 金額 = 金額 + 1; END;"
    )
    assert call(ts, "sql.schema_change", {"sql": trigger}) == {"done": "CREATE TRIGGER"}
    call(ts, "sql.execute", {"sql": "DELETE FROM 顧客 WHERE id = 3"})
    assert call(ts, "sql.query", {"sql": "SELECT 顧客id, 金額 FROM 注文"})["rows"] == [[3, 2]]
    assert call(ts, "sql.schema_change", {"sql": "DROP TABLE 注文"}) == {"done": "DROP TABLE"}
    assert [t["name"] for t in call(ts, "sql.tables", {})["tables"]] == ["顧客", "名簿"]


def test_tables_lists_tables_views_and_columns(db):
    ts = Toolset(sql_tool(url(db)))
    got = call(ts, "sql.tables", {})
    assert got["truncated"] is False
    assert got["tables"] == [
        {
            "name": "顧客",
            "kind": "table",
            "columns": [
                {"name": "id", "type": "INTEGER", "nullable": True, "primary_key": True},
                {"name": "名前", "type": "TEXT", "nullable": False, "primary_key": False},
                {"name": "メモ", "type": "TEXT", "nullable": True, "primary_key": False},
                {"name": "写真", "type": "BLOB", "nullable": True, "primary_key": False},
            ],
        },
        {
            "name": "名簿",
            "kind": "view",
            "columns": [{"name": "名前", "type": "TEXT", "nullable": True, "primary_key": False}],
        },
    ]
    assert [t["name"] for t in call(ts, "sql.tables", {"table": "名簿"})["tables"]] == ["名簿"]
    with pytest.raises(ToolError, match="sql.tables: there is no table or view named '注文'"):
        call(ts, "sql.tables", {"table": "注文"})


# -- params and values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        ({"sql": "SELECT * FROM 顧客 WHERE id = :id"}, "params: no value in params for placeholder\\(s\\) :id"),
        ({"sql": "SELECT 1", "params": {"id": 1}}, "params: params 'id' not used by the statement"),
        ({"sql": "SELECT :a", "params": {"a": [1, 2]}}, "params.a"),
        ({"sql": "SELECT 1", "limit": 5}, "limit: Extra inputs are not permitted"),
        ({"params": {}}, "sql: Field required"),
    ],
)
def test_params_and_arguments_are_validated(db, args, message):
    with pytest.raises(ToolError, match="sql.query: invalid arguments: .*" + message):
        Toolset(sql_tool(url(db))).validate("sql.query", args)


def test_values_json_cannot_carry_are_converted_and_said_so():
    assert _jsonable(b"\x00\x01") == ("AAE=", "base64 (bytes)")
    assert _jsonable(Decimal("1.10")) == ("1.10", "str (Decimal)")
    assert _jsonable(datetime(2024, 4, 1, 9, 30)) == ("2024-04-01T09:30:00", "isoformat (datetime)")
    assert _jsonable(date(2024, 4, 1)) == ("2024-04-01", "isoformat (date)")
    assert _jsonable(timedelta(hours=1)) == ("1:00:00", "str (timedelta)")
    u = uuid.UUID(int=1)
    assert _jsonable(u) == (str(u), "str (UUID)")
    assert _jsonable(float("nan")) == ("nan", "str (non-finite float)")
    assert _jsonable([1, Decimal("2")]) == ([1, "2"], "str (Decimal)")
    assert _jsonable("文字") == ("文字", None) and _jsonable(None) == (None, None) and _jsonable(True) == (True, None)


# -- what other databases read differently ------------------------------------------------------


@pytest.mark.parametrize(
    "backend, sql, refused",
    [
        # A backslash: MySQL (and PostgreSQL E'') read it as an escape, so the string would end elsewhere.
        ("mysql", r"SELECT '\', 'x; DELETE FROM t; --'", "a backslash inside a '-quoted literal"),
        ("postgresql", r"SELECT E'\', 'x; DELETE FROM t; --'", "a backslash inside a '-quoted literal"),
        ("sqlite", r"SELECT '\', 'x; DELETE FROM t; --'", None),  # SQLite: a backslash is a backslash
        # MySQL comments: '#', "-- " only with a space, and /*! */ which MySQL runs.
        ("mysql", "SELECT 1 # '\n; DELETE FROM t; -- '", "several statements"),
        ("mysql", "SELECT 1 --1; DELETE FROM t", "several statements"),
        ("mysql", "SELECT 1 /*! ; DROP TABLE t */", "a /*! ... */ comment"),
        # PostgreSQL dollar quotes, and nested comments (only some databases nest them).
        ("postgresql", "SELECT $$'$$; DELETE FROM t; --'", "several statements"),
        ("postgresql", "SELECT $fn$ ; DROP TABLE t; $fn$", None),
        ("postgresql", "SELECT $タグ$'$タグ$; DELETE FROM t; --'", "several statements"),
        ("mysql", "SELECT 1DELETE FROM t", "data"),  # no keyword hides in a number
        ("postgresql", "SELECT /* /* */ 1 */", "a /* comment inside a comment"),
        ("postgresql", "SELECT a::int FROM t WHERE b = :b", None),
        # SQL Server doubles ]] inside [identifiers].
        ("mssql", "SELECT [a]]' ]; DELETE FROM t; --'", "several statements"),
        ("oracle", "SELECT q'[it's]' FROM dual", "an Oracle q'...' literal"),
        # Hidden changes inside a read.
        ("postgresql", "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "data"),
        ("postgresql", "EXPLAIN ANALYZE UPDATE t SET a = 1", "data"),
        ("postgresql", "SELECT * INTO copy_of_t FROM t", "schema"),
        ("mysql", "SELECT * FROM t INTO OUTFILE '/tmp/t.csv'", "writes a file on the server"),
    ],
)
def test_the_lexer_reads_each_database_its_own_way(backend, sql, refused):
    syntax = _syntax_for(backend)
    if refused in ("data", "schema"):
        assert _prepare(sql, syntax).kind == refused
    elif refused is None:
        assert _prepare(sql, syntax).kind == "read"
    else:
        with pytest.raises(_Refused, match=re.escape(refused)):
            _prepare(sql, syntax)


# -- together -----------------------------------------------------------------------------------


def test_schemas_risk_tiers_and_a_toolset_with_files_and_sql(db, tmp_path):
    ts = Toolset(files_tool(tmp_path) + sql_tool(url(db)))
    assert {n: a.risk for n, a in ts.actions.items() if n.startswith("sql.")} == {
        "sql.query": "read",
        "sql.tables": "read",
        "sql.execute": "write",
        "sql.schema_change": "delete",
    }
    schemas = {s["function"]["name"]: s["function"] for s in ts.schemas()}
    assert len(schemas) == 9
    q = schemas["sql.query"]["parameters"]
    assert q["required"] == ["sql"] and q["additionalProperties"] is False
    assert all(p.get("description") for p in q["properties"].values())
    assert "read-only" in schemas["sql.execute"]["description"]
    call_ = ts.validate("sql.query", {"params": {"n": "佐藤"}, "sql": "SELECT * FROM 顧客 WHERE 名前 = :n"})
    assert (
        call_.canonical
        == ('{"arguments":{"params":{"n":"佐藤"},"sql":"SELECT * FROM 顧客 WHERE 名前 = :n"},"name":"sql.query"}')
        and call_.risk == "read"
    )
    assert ts.execute(call_)["rows"][0][1] == "佐藤"
