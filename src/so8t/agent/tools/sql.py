"""`sql.*`: query and (when allowed) change a database through SQLAlchemy, one statement a call.

The risk of a SQL call is in its text, so the text decides which action may run it, and each
action carries its own risk tier for the gate:

    sql.query          read    SELECT, WITH ... SELECT, VALUES, EXPLAIN, read-only PRAGMAs
    sql.tables         read    table and view names with their columns (SQLAlchemy inspect)
    sql.execute        write   INSERT, UPDATE, DELETE, REPLACE, MERGE
    sql.schema_change  delete  CREATE, ALTER, DROP, TRUNCATE (it restructures or destroys)

A statement sent to the wrong action is refused with the name of the right one, so a DELETE
cannot ride on the read tier. Everything else (transaction control, ATTACH, VACUUM, GRANT,
SET, settings PRAGMAs...) is refused by every action. All of this is decided when the call is
validated (`Toolset.validate`), before the gate sees it, and checked again when it runs.

Exactly one statement a call. The text is split by a small lexer that knows quotes, quoted
identifiers and comments the way the connected database reads them -- getting that wrong is
how "SELECT '...'; DROP TABLE x" hides a second statement -- and what the databases read
differently (a backslash inside a string anywhere but SQLite, nested `/*` comments, MySQL's
`/*! */`) is refused rather than guessed. A statement that mentions INSERT/UPDATE/DELETE/...
anywhere, even inside a WITH, counts as a data change; one that mentions CREATE/DROP/ALTER/
TRUNCATE or SELECT ... INTO, as a schema change.

Defence in depth for reads, because a lexer can be wrong:
  * read_only=True: sql.execute and sql.schema_change refuse everything; a SQLite file is
    opened with `mode=ro` (URI) and `PRAGMA query_only=ON`, so even a statement that slipped
    past the classification cannot write; MySQL sessions are set READ ONLY;
  * every sql.query runs in a transaction that is rolled back, under `PRAGMA query_only` on
    SQLite and `SET TRANSACTION READ ONLY` on PostgreSQL and MySQL;
  * the SQLite driver itself refuses a second statement.
Only the SQLite paths are tested here; database users with the least privileges needed remain
the real protection on a server database (functions with side effects are not statements).

Values are always bound (`:name` placeholders, `params`), never formatted into the SQL text.
Result values that JSON cannot carry are converted and the result says so in `converted`:
bytes -> base64, Decimal/UUID/other -> str, date/time -> isoformat.

Timeouts: `timeout_s` interrupts a long SQLite statement (progress handler) and waits that long
for a locked database; on PostgreSQL it is `statement_timeout`, on MySQL `max_execution_time`
(SELECT only); other databases get no statement timeout.

Result size: at most `max_rows` rows and `max_result_bytes` bytes (each value counted as the
JSON it becomes) come back. Rows are fetched a few at a time (`fetchmany`, with a server-side
cursor where the driver has one: PostgreSQL, MySQL -- for SELECT, WITH and VALUES, the reads
PostgreSQL can declare a cursor for) and counted as they arrive, so a huge result is never held
in memory (tested on SQLite, and on a real PostgreSQL where psycopg is installed); past either cap
the result says `truncated: true`, which cap cut it
(`truncated_by`) and a `note`. On SQLite no string or blob may be larger than max_result_bytes
(SQLITE_LIMIT_LENGTH, for the statement), so `SELECT randomblob(1000000000)` is an error that
names the cap instead of a gigabyte in memory.

Unbounded cost: a statement whose work has no bound in its text -- a recursive CTE without a
literal LIMIT inside it, randomblob/zeroblob/repeat/lpad/rpad/space/replicate with a size that
is not a literal within max_result_bytes, generate_series without literal bounds, a cross join
(CROSS JOIN, or a comma join without WHERE) without a literal LIMIT -- is flagged by the
actions' `review`: the call's `needs_approval` says why, and the tool loop queues it for a
person even where the tier runs automatically. The caps and the timeout still hold when it runs.
"""

from __future__ import annotations

import base64
import math
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError

from so8t.agent.tools.base import ToolAction, ToolError

Kind = Literal["read", "data", "schema"]
ROUTE: dict[str, str] = {"read": "sql.query", "data": "sql.execute", "schema": "sql.schema_change"}
_KIND_WORDS = {"read": "a read", "data": "a data change", "schema": "a schema change"}


# -- lexing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Syntax:
    """How one database reads quotes and comments: where they differ, statements hide."""

    backticks: bool = False  # `ident`
    brackets: str | None = None  # [ident]: "sqlite" ends at the first ], "mssql" doubles ]]
    hash_comments: bool = False  # MySQL: # to the end of the line
    dash_needs_space: bool = False  # MySQL: "-- " is a comment, "--1" is minus minus one
    dollar_quotes: bool = False  # PostgreSQL: $$...$$, $tag$...$tag$
    backslash_is_literal: bool = False  # SQLite only; elsewhere it may escape a quote: refused
    q_quotes: bool = False  # Oracle: q'[...]' -- refused
    trigger_blocks: bool = False  # SQLite: CREATE TRIGGER ... BEGIN ...; ...; END is one statement


def _syntax_for(backend: str) -> _Syntax:
    if backend == "sqlite":
        return _Syntax(backticks=True, brackets="sqlite", backslash_is_literal=True, trigger_blocks=True)
    if backend == "postgresql":
        return _Syntax(dollar_quotes=True)
    if backend in ("mysql", "mariadb"):
        return _Syntax(backticks=True, hash_comments=True, dash_needs_space=True)
    if backend == "mssql":
        return _Syntax(brackets="mssql")
    if backend == "oracle":
        return _Syntax(q_quotes=True)
    return _Syntax()


@dataclass(frozen=True)
class _Tok:
    kind: str  # space comment string quoted word number param semi punct
    text: str


class _Refused(ValueError):
    """The SQL text is refused before it reaches any database; the message says why."""


_DOLLAR = re.compile(r"\$(?:[^\W\d]\w*)?\$")  # $$ or $tag$ (a tag may be any letters)


def _quoted_end(sql: str, i: int, close: str, *, doubled: bool = True, backslash_ok: bool = True) -> int:
    """End (exclusive) of the quoted run opening at i; with doubled=True a doubled closing
    character stands for itself ('it''s', "a""b", [a]]b] in SQL Server)."""
    j = i + 1
    while True:
        k = sql.find(close, j)
        if k < 0:
            raise _Refused(f"an unterminated {sql[i]} quote")
        if doubled and sql.startswith(close + close, k):
            j = k + 2
            continue
        if not backslash_ok and "\\" in sql[i + 1 : k]:
            # MySQL reads it as an escape, PostgreSQL E'' strings too, standard SQL does not: the
            # end of the string, and so what follows it, would be in doubt.
            raise _Refused(
                f"a backslash inside a {sql[i]}-quoted literal (databases and settings disagree on "
                "whether it escapes the quote); pass the value as a :name parameter instead"
            )
        return k + 1


def _lex(sql: str, syn: _Syntax) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            j = i + 1
            while j < n and sql[j].isspace():
                j += 1
            kind = "space"
        elif (
            sql.startswith("--", i)
            and (not syn.dash_needs_space or i + 2 >= n or sql[i + 2].isspace() or ord(sql[i + 2]) < 32)
        ) or (c == "#" and syn.hash_comments):
            j = sql.find("\n", i)
            j, kind = (n if j < 0 else j + 1), "comment"
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise _Refused("an unterminated /* comment")
            body = sql[i + 2 : end]
            if "/*" in body:
                raise _Refused("a /* comment inside a comment (databases disagree on nesting)")
            if body.startswith("!"):
                raise _Refused("a /*! ... */ comment (MySQL runs its content)")
            j, kind = end + 2, "comment"
        elif c == "'":
            if syn.q_quotes and toks and toks[-1].kind == "word" and toks[-1].text.lower() in ("q", "nq"):
                raise _Refused("an Oracle q'...' literal; pass the value as a :name parameter instead")
            j, kind = _quoted_end(sql, i, "'", backslash_ok=syn.backslash_is_literal), "string"
        elif c == '"':
            j, kind = _quoted_end(sql, i, '"', backslash_ok=syn.backslash_is_literal), "quoted"
        elif c == "`" and syn.backticks:
            j, kind = _quoted_end(sql, i, "`"), "quoted"
        elif c == "[" and syn.brackets:
            j, kind = _quoted_end(sql, i, "]", doubled=syn.brackets == "mssql"), "quoted"
        elif c == "$" and syn.dollar_quotes and (m := _DOLLAR.match(sql, i)):
            end = sql.find(m.group(0), m.end())
            if end < 0:
                raise _Refused(f"an unterminated {m.group(0)} quote")
            j, kind = end + len(m.group(0)), "string"
        elif c.isalpha() or c == "_":
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] in "_$"):
                j += 1
            kind = "word"
        elif c.isdigit():
            # Digits only: letters after them (1e5, 0x1F, MySQL's 1abc) become a word of their own,
            # so no keyword can hide inside a "number".
            j = i + 1
            while j < n and (sql[j].isdigit() or sql[j] == "."):
                j += 1
            kind = "number"
        elif sql.startswith("::", i):  # PostgreSQL cast, not a placeholder
            j, kind = i + 2, "punct"
        elif c in ":@$?":
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] in "_$"):
                j += 1
            kind = "param"
        elif c == ";":
            j, kind = i + 1, "semi"
        else:
            j, kind = i + 1, "punct"
        toks.append(_Tok(kind, sql[i:j]))
        i = j
    return toks


def _split(toks: list[_Tok], syn: _Syntax) -> list[list[_Tok]]:
    """Statements (without their `;`), empty ones (only spaces and comments) dropped."""
    out: list[list[_Tok]] = [[]]
    depth = 0
    for t in toks:
        if t.kind == "semi" and depth == 0:
            out.append([])
            continue
        out[-1].append(t)
        if syn.trigger_blocks and t.kind == "word" and t.text.upper() in ("BEGIN", "CASE", "END"):
            words = [w.text.upper() for w in out[-1] if w.kind == "word"][:4]
            if words[:1] == ["CREATE"] and "TRIGGER" in words[1:4]:
                depth = depth + 1 if t.text.upper() != "END" else max(depth - 1, 0)
    return [s for s in out if any(t.kind not in ("space", "comment") for t in s)]


# -- classification ---------------------------------------------------------------------------

_READ_LEADS = {"SELECT", "WITH", "VALUES", "EXPLAIN", "PRAGMA", "SHOW", "DESCRIBE", "DESC"}
_DATA_LEADS = {"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "UPSERT"}
_SCHEMA_LEADS = {"CREATE", "DROP", "ALTER", "TRUNCATE", "RENAME", "COMMENT"}
_DATA_WORDS = {"INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT"}
_SCHEMA_WORDS = {"CREATE", "DROP", "ALTER", "TRUNCATE"}
_REFUSED_LEADS = {
    **dict.fromkeys(
        ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "END", "START", "ABORT"),
        "each call runs in its own transaction; transaction control is not available",
    ),
    **dict.fromkeys(("ATTACH", "DETACH"), "it would open or create another database file"),
    **dict.fromkeys(
        ("VACUUM", "REINDEX", "ANALYZE", "OPTIMIZE", "CHECKPOINT", "CLUSTER"),
        "maintenance statements are not available",
    ),
}
# PRAGMAs that only read. The first set takes a (table or index) argument; a value or
# argument to any other PRAGMA changes a setting (journal_mode(WAL) does too).
_PRAGMA_WITH_ARG = {
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
}
_PRAGMA_READ = _PRAGMA_WITH_ARG | {
    "database_list",
    "collation_list",
    "function_list",
    "module_list",
    "pragma_list",
    "table_list",
    "compile_options",
    "user_version",
    "schema_version",
    "application_id",
    "page_count",
    "page_size",
    "freelist_count",
    "encoding",
    "data_version",
    "journal_mode",
    "foreign_keys",
    "query_only",
}


@dataclass(frozen=True)
class _Statement:
    kind: Kind
    label: str  # "SELECT", "DELETE", "DROP TABLE": for messages
    text: str  # for sqlalchemy.text(): ':' outside code escaped so it is not a placeholder
    placeholders: tuple[str, ...]
    tokens: tuple[_Tok, ...] = field(default=(), compare=False)  # without spaces and comments


def _classify(sig: list[_Tok]) -> tuple[Kind, str]:
    first = sig[0]
    if first.kind != "word":
        raise _Refused(f"the statement starts with {first.text[:20]!r}, not with a SQL keyword")
    lead = first.text.upper()
    label = lead
    if lead in _SCHEMA_LEADS and len(sig) > 1 and sig[1].kind == "word":
        label = f"{lead} {sig[1].text.upper()}"
    if lead in _REFUSED_LEADS:
        raise _Refused(f"{lead} is not available: {_REFUSED_LEADS[lead]}")
    if lead in _DATA_LEADS:
        return "data", label
    if lead in _SCHEMA_LEADS:
        return "schema", label
    if lead not in _READ_LEADS:
        raise _Refused(
            f"{lead} statements are not available; the sql actions run SELECT, INSERT, UPDATE, DELETE, "
            "CREATE, ALTER, DROP and TRUNCATE"
        )
    if lead == "PRAGMA":
        rest = sig[1:]
        if len(rest) >= 3 and rest[1].text == ".":  # PRAGMA main.table_info(t)
            rest = rest[2:]
        name = rest[0].text.lower() if rest and rest[0].kind == "word" else ""
        if name in _PRAGMA_READ and (len(rest) == 1 or (rest[1].text == "(" and name in _PRAGMA_WITH_ARG)):
            return "read", f"PRAGMA {name}"
        raise _Refused(
            f"PRAGMA {name or '?'} in this form changes a setting (or is unknown); only reading "
            f"PRAGMAs such as table_info(t) are available"
        )
    # A read lead can still hide a change: WITH x AS (DELETE ... RETURNING *) SELECT ..., EXPLAIN ANALYZE
    # UPDATE ..., SELECT ... INTO new_table, SELECT ... INTO OUTFILE.
    words = [t.text.upper() for t in sig if t.kind == "word"]
    if {"OUTFILE", "DUMPFILE"} & set(words):
        raise _Refused("SELECT ... INTO OUTFILE/DUMPFILE writes a file on the server")
    if found := [w for w in words if w in _SCHEMA_WORDS]:
        return "schema", found[0]
    if found := [w for w in words if w in _DATA_WORDS]:
        return "data", found[0]
    if any(w == "REPLACE" and nxt == "INTO" for w, nxt in zip(words, words[1:])):
        return "data", "REPLACE"
    if "INTO" in words:
        return "schema", "SELECT ... INTO"
    return "read", label


def _prepare(sql: str, syn: _Syntax) -> _Statement:
    """Lex, split and classify one SQL text; raise _Refused with the reason."""
    toks = _lex(sql, syn)
    statements = _split(toks, syn)
    if not statements:
        raise _Refused("there is no SQL statement")
    if len(statements) > 1:
        raise _Refused(f"several statements ({len(statements)}); send one statement per call")
    stmt = statements[0]
    sig = [t for t in stmt if t.kind not in ("space", "comment")]
    if any(t.kind == "param" and t.text[0] in "?$@" for t in sig):
        bad = next(t.text for t in sig if t.kind == "param" and t.text[0] in "?$@")
        raise _Refused(f"placeholder {bad!r}: use :name placeholders with values in params")
    kind, label = _classify(sig)
    # sqlalchemy.text() reads ':word' anywhere as a placeholder, even inside quotes: escape those.
    body = "".join(
        t.text if t.kind not in ("string", "quoted", "comment") else t.text.replace(":", "\\:") for t in stmt
    ).strip()
    names = tuple(
        dict.fromkeys(t.text[1:] for t in sig if t.kind == "param" and t.text.startswith(":") and len(t.text) > 1)
    )
    return _Statement(kind, label, body, names, tuple(sig))


# -- cost -------------------------------------------------------------------------------------

# function -> the (0-based) arguments that size its output; each must be an integer literal
_SIZED = {
    "randomblob": (0,),
    "zeroblob": (0,),
    "repeat": (1,),
    "lpad": (1,),
    "rpad": (1,),
    "space": (0,),
    "replicate": (1,),
}
_SERIES_MAX = 1_000_000  # generate_series and recursive CTE LIMITs: at most this many rows
_FROM_ENDS = {
    "WHERE",
    "GROUP",
    "ORDER",
    "LIMIT",
    "HAVING",
    "WINDOW",
    "UNION",
    "EXCEPT",
    "INTERSECT",
    "RETURNING",
    "OFFSET",
    "FETCH",
}


def _literal_int(arg: list[_Tok]) -> int | None:
    """The value of an argument that is an integer literal (optionally signed), else None."""
    sign = 1
    if len(arg) == 2 and arg[0].text in "+-":
        sign, arg = (-1 if arg[0].text == "-" else 1), arg[1:]
    if len(arg) == 1 and arg[0].kind == "number" and arg[0].text.isdigit():
        return sign * int(arg[0].text)
    return None


def _call_args(toks: tuple[_Tok, ...], i: int) -> list[list[_Tok]]:
    """The arguments of the call whose '(' is toks[i], split at its own commas."""
    args: list[list[_Tok]] = [[]]
    depth = 0
    for t in toks[i:]:
        if t.text == "(":
            depth += 1
            if depth == 1:
                continue
        elif t.text == ")":
            depth -= 1
            if depth == 0:
                break
        if depth == 1 and t.text == ",":
            args.append([])
        else:
            args[-1].append(t)
    return args


def _unbounded(toks: tuple[_Tok, ...], max_bytes: int) -> str | None:
    """Why this statement's cost has no bound in its text (so a person should approve it), or
    None. A heuristic over the tokens, not a proof: the caps and the timeout are the hard limit."""
    words = [t.text.upper() if t.kind == "word" else None for t in toks]
    depth, top_limit = 0, False
    cte_limit, in_with, recursive = False, False, False
    levels: list[dict] = [{"from": False, "comma": False, "where": False}]
    cross = False

    def close(level: dict) -> bool:
        return level["comma"] and not level["where"]

    for i, t in enumerate(toks):
        w = words[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if t.text == "(":
            depth += 1
            levels.append({"from": False, "comma": False, "where": False})
            continue
        if t.text == ")":
            cross = cross or close(levels.pop())
            depth = max(depth - 1, 0)
            if not levels:
                levels.append({"from": False, "comma": False, "where": False})
            continue
        level = levels[-1]
        if w and nxt is not None and nxt.text == "(":
            name = w.lower()
            if name in _SIZED:
                args = _call_args(toks, i + 1)
                for k in _SIZED[name]:
                    size = _literal_int(args[k]) if k < len(args) else None
                    if size is None or size > max_bytes:
                        return (
                            f"{name}() with a size that is not a literal integer within max_result_bytes "
                            f"({max_bytes}): its output has no bound"
                        )
            elif name == "generate_series":
                args = _call_args(toks, i + 1)
                ends = [e for e in (_literal_int(a) for a in args[:2]) if e is not None]
                if len(ends) < 2 or abs(ends[1] - ends[0]) > _SERIES_MAX:
                    return (
                        f"generate_series() without literal bounds at most {_SERIES_MAX} apart: its rows have no bound"
                    )
        if w in ("UNION", "EXCEPT", "INTERSECT"):  # a new SELECT at this level: its own FROM and WHERE
            cross = cross or close(level)
            level.update({"from": False, "comma": False, "where": False})
        if w == "WITH" and depth == 0:
            in_with = True
        elif w == "RECURSIVE" and in_with:
            recursive = True
        elif in_with and depth == 0 and w in ("SELECT", "VALUES", "INSERT", "UPDATE", "DELETE", "REPLACE"):
            in_with = False
        if w == "LIMIT" and nxt is not None:
            n = _literal_int([nxt])
            if n is not None:
                if depth == 0 and not in_with:
                    top_limit = True
                elif in_with and depth >= 1 and n <= _SERIES_MAX:
                    cte_limit = True
        if w == "CROSS" and nxt is not None and nxt.text.upper() == "JOIN":
            cross = True
        if w == "FROM":
            level["from"] = True
        elif w in _FROM_ENDS:
            level["from"] = False
            level["where"] = level["where"] or w == "WHERE"
        elif t.text == "," and level["from"]:
            level["comma"] = True
    cross = cross or any(close(level) for level in levels)
    if recursive and not cte_limit:
        return f"a recursive CTE without a literal LIMIT (at most {_SERIES_MAX}) inside it: it can recurse without end"
    if cross and not top_limit:
        return "a cross join (CROSS JOIN, or a comma join without WHERE) without a literal LIMIT: its rows multiply"
    return None


# -- values -----------------------------------------------------------------------------------


def _jsonable(v: Any) -> tuple[Any, str | None]:
    """A value JSON can carry, and a note when it had to be converted."""
    if v is None or isinstance(v, (str, bool, int)):
        return v, None
    if isinstance(v, float):
        return (v, None) if math.isfinite(v) else (str(v), "str (non-finite float)")
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii"), "base64 (bytes)"
    if isinstance(v, (datetime, date, dtime)):
        return v.isoformat(), f"isoformat ({type(v).__name__})"
    if isinstance(v, (Decimal, uuid.UUID, timedelta)):
        return str(v), f"str ({type(v).__name__})"
    if isinstance(v, (list, tuple)):
        pairs = [_jsonable(x) for x in v]
        return [p[0] for p in pairs], next((p[1] for p in pairs if p[1]), None)
    if isinstance(v, dict):
        by_key = {str(k): _jsonable(x) for k, x in v.items()}
        return {k: p[0] for k, p in by_key.items()}, next((p[1] for p in by_key.values() if p[1]), None)
    return str(v), f"str ({type(v).__name__})"


def _json_size(v: Any) -> int:
    """About how many bytes v takes in the JSON result (strings as UTF-8, plus quotes)."""
    if v is None or isinstance(v, bool):
        return 5
    if isinstance(v, str):
        return len(v) + 2 if v.isascii() else len(v.encode("utf-8", "replace")) + 2
    if isinstance(v, (int, float)):
        return len(repr(v))
    if isinstance(v, list):
        return 2 + sum(_json_size(x) + 1 for x in v)
    if isinstance(v, dict):
        return 2 + sum(len(str(k)) + 4 + _json_size(x) for k, x in v.items())
    return len(str(v)) + 2


# -- the database -----------------------------------------------------------------------------

_FETCH = 64  # the most rows fetched from the cursor at a time
_STREAMED = {"SELECT", "WITH", "VALUES"}  # reads a server-side cursor can run (PostgreSQL: DECLARE ... FOR)


def _sqlite_read_only_url(url: URL) -> URL:
    """The same SQLite database, opened read-only by SQLite itself (URI `mode=ro`)."""
    db = url.database
    if not db or db == ":memory:":
        return url  # nothing on disk to protect; query_only still applies
    query = dict(url.query)
    if str(query.get("uri", "")).lower() in ("true", "1"):
        query["mode"] = "ro"  # already a SQLite URI: only add the mode
        return url.set(query=query)
    path = Path(db).resolve()
    if not path.is_file():
        raise ValueError(f"SQLite database {db!r} does not exist (a read-only sql tool cannot create it)")
    query.update(mode="ro", uri="true")
    return url.set(database="file:" + path.as_uri().removeprefix("file:"), query=query)


class _Database:
    """The engine, and the one place statements are executed."""

    def __init__(self, url: str, *, read_only: bool, timeout_s: float):
        u = make_url(url)
        self.backend = u.get_backend_name()
        self.syntax = _syntax_for(self.backend)
        self.read_only = read_only
        self.timeout_s = timeout_s
        kwargs: dict[str, Any] = {}
        if self.backend == "sqlite":
            if read_only:
                u = _sqlite_read_only_url(u)
            if u.get_driver_name() == "pysqlite" and "timeout" not in u.query:
                kwargs["connect_args"] = {"timeout": timeout_s}  # wait this long for a lock
        self.engine: Engine = create_engine(u, **kwargs)
        event.listen(self.engine, "connect", self._on_connect)

    def _on_connect(self, dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            if self.backend == "sqlite" and self.read_only:
                cur.execute("PRAGMA query_only=ON")
            elif self.backend in ("mysql", "mariadb"):
                if self.read_only:
                    cur.execute("SET SESSION TRANSACTION READ ONLY")
                try:  # MySQL's name; MariaDB has max_statement_time (seconds) instead
                    cur.execute(f"SET SESSION max_execution_time = {int(self.timeout_s * 1000)}")
                except Exception:
                    try:
                        cur.execute(f"SET SESSION max_statement_time = {float(self.timeout_s)}")
                    except Exception:
                        pass  # no statement timeout on this server; the rest still holds
        finally:
            cur.close()

    @contextmanager
    def _guarded(self, conn: Connection, *, write: bool, max_bytes: int | None = None) -> Iterator[None]:
        """Read-only settings for a read, the statement timeout and (SQLite) the largest string
        or blob a statement may make, for one transaction."""
        raw: Any = conn.connection.driver_connection  # sqlite3, psycopg, ...: its methods differ
        if not write and (self.backend == "postgresql" or self.backend in ("mysql", "mariadb") and not self.read_only):
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")  # first: before any other statement
        if self.backend == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(self.timeout_s * 1000))}")
        # A read-only tool's SQLite connections are query_only for good (see _on_connect).
        toggle = self.backend == "sqlite" and not write and not self.read_only
        if toggle:
            conn.exec_driver_sql("PRAGMA query_only=ON")
        handler = hasattr(raw, "set_progress_handler")
        if handler:
            deadline = time.monotonic() + self.timeout_s
            raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        length = None
        if max_bytes is not None and hasattr(raw, "setlimit"):  # sqlite3, Python >= 3.11 (as is the constant)
            length = raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(max_bytes, 1024))  # type: ignore[attr-defined]
        try:
            yield
        finally:
            if length is not None:
                raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, length)  # type: ignore[attr-defined]  # 3.11+
            if handler:
                raw.set_progress_handler(None, 0)
            if toggle:
                try:
                    conn.exec_driver_sql("PRAGMA query_only=OFF")
                except SQLAlchemyError:
                    conn.invalidate()  # never hand a stuck read-only connection to a writer

    def run(
        self,
        sql: str,
        params: Mapping[str, Any],
        *,
        write: bool,
        max_rows: int,
        max_bytes: int = 1_000_000,
        stream: bool = False,
    ) -> dict:
        """Execute one statement, already checked by the caller, in its own transaction:
        committed for a write, rolled back for a read. `stream`: through a server-side cursor
        where the driver has one (PostgreSQL declares one only for SELECT / VALUES, so only
        those may ask). Raises ToolError (without the action)."""
        started = time.monotonic()
        try:
            with self.engine.connect() as conn:
                with conn.begin() as trans:
                    with self._guarded(conn, write=write, max_bytes=max_bytes):
                        # a server-side cursor where the driver has one: rows arrive a few at a time
                        opts = {"stream_results": True, "max_row_buffer": _FETCH} if stream else {}
                        result = conn.execution_options(**opts).execute(text(sql), dict(params))
                        out: dict[str, Any] = {}
                        known = result.rowcount  # psycopg forgets it once the cursor is drained
                        if result.returns_rows:
                            out.update(self._rows(result, max_rows, max_bytes))
                        out["rowcount"] = result.rowcount if result.rowcount != -1 else known
                        result.close()
                    if not write:
                        trans.rollback()
            return out
        except StatementError as exc:
            orig = getattr(exc, "orig", None)
            if isinstance(exc, DBAPIError) and orig is not None:
                msg = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
                if "interrupted" in msg and time.monotonic() - started >= self.timeout_s:
                    raise ToolError(f"the statement timed out after {self.timeout_s:g} s") from None
                if "too big" in msg:  # SQLITE_TOOBIG: a value over SQLITE_LIMIT_LENGTH (see _guarded)
                    raise ToolError(
                        f"a value the statement makes or reads is larger than the result limit of "
                        f"{max(max_bytes, 1024)} bytes (max_result_bytes): {msg[:200]}"
                    ) from None
                raise ToolError(f"the database refused the statement: {msg[:500]}") from None
            raise ToolError(f"the statement could not run: {str(orig or exc).splitlines()[0][:500]}") from None
        except SQLAlchemyError as exc:
            raise ToolError(f"the database could not be used: {str(exc).splitlines()[0][:500]}") from None

    @staticmethod
    def _rows(result: Any, max_rows: int, max_bytes: int) -> dict:
        """At most max_rows rows and max_bytes bytes (values counted as their JSON), fetched a
        chunk at a time and counted as they come. A chunk is one row first, then as many as the
        bytes left would hold at the rows' size so far (at most _FETCH): a result never has more
        than about one chunk past a cap in memory, however wide or long it is."""
        columns = [str(c) for c in result.keys()]
        converted: dict[str, str] = {}
        rows: list[list] = []
        size = head = 2 + sum(len(c) + 3 for c in columns)
        cut, want = None, 1
        while cut is None:
            chunk = result.fetchmany(want)
            if not chunk:
                break
            for row in chunk:
                if len(rows) == max_rows:
                    cut = "rows"
                    break
                out = []
                size += 4  # "[", "]" and ", " between rows
                for col, value in zip(columns, row):
                    v, note = _jsonable(value)
                    if note:
                        converted.setdefault(col, note)
                    out.append(v)
                    size += _json_size(v) + 2  # and ", "
                if size > max_bytes:
                    cut = "bytes"
                    break
                rows.append(out)
            if cut is None and len(chunk) < want:
                break  # the cursor is exhausted (and rowcount still readable)
            per_row = max(1, (size - head) // max(1, len(rows)))
            want = max(1, min(_FETCH, max_rows - len(rows) + 1, (max_bytes - size) // per_row + 1))
        res: dict[str, Any] = {"columns": columns, "rows": rows, "row_count": len(rows), "truncated": cut is not None}
        if cut == "rows":
            res.update(
                truncated_by="max_rows",
                note=f"more rows than the limit of {max_rows} (max_rows); only the "
                "first ones are here: filter, aggregate or add a LIMIT",
            )
        elif cut == "bytes":
            res.update(
                truncated_by="max_result_bytes",
                note=f"the result is larger than {max_bytes} bytes "
                f"(max_result_bytes); it is cut after {len(rows)} rows: select fewer columns or rows",
            )
        if converted:
            res["converted"] = converted
        return res


# -- arguments --------------------------------------------------------------------------------

JsonScalar = str | int | float | bool | None
_PARAMS_DESC = (
    'Values for the :name placeholders in sql, e.g. {"name": "佐藤"}; they are bound by the '
    "database driver, never pasted into the SQL text"
)


class QueryArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sql: str = Field(
        min_length=1,
        description=(
            "One read statement: SELECT, WITH ... SELECT, VALUES, EXPLAIN, or a reading PRAGMA such as "
            "table_info(t); put values in params as :name placeholders"
        ),
    )
    params: dict[str, JsonScalar] = Field(default_factory=dict, validate_default=True, description=_PARAMS_DESC)


class ExecuteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sql: str = Field(
        min_length=1,
        description=(
            "One INSERT, UPDATE, DELETE, REPLACE or MERGE statement; put values in params as :name placeholders"
        ),
    )
    params: dict[str, JsonScalar] = Field(default_factory=dict, validate_default=True, description=_PARAMS_DESC)


class SchemaChangeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sql: str = Field(min_length=1, description="One CREATE, ALTER, DROP or TRUNCATE statement")


class TablesArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    table: str | None = Field(default=None, min_length=1, description="Only this table or view (default: all)")


def _custom(reason: str) -> PydanticCustomError:
    # A custom error keeps the message as written (no "Value error, " prefix).
    return PydanticCustomError("sql_refused", "{reason}", {"reason": reason})


# -- the tool ---------------------------------------------------------------------------------


class _SqlTool:
    def __init__(self, url: str, read_only: bool, max_rows: int, timeout_s: float, max_bytes: int = 1_000_000):
        if max_rows < 1 or max_bytes < 1024:
            raise ValueError(f"sql: max_rows must be >= 1 and max_result_bytes >= 1024, got {max_rows}, {max_bytes}")
        self.db = _Database(url, read_only=read_only, timeout_s=timeout_s)
        self.read_only = read_only
        self.max_rows, self.max_bytes = max_rows, max_bytes

    def review(self, args: QueryArgs | ExecuteArgs) -> str | None:
        """Why this (validated) statement needs a person's approval, or None: its cost has no
        bound in its text (_unbounded)."""
        why = _unbounded(_prepare(args.sql, self.db.syntax).tokens, self.max_bytes)
        return None if why is None else f"the query's cost is unbounded: {why}"

    def check(self, sql: str, kind: Kind) -> _Statement:
        """The statement if `kind`'s action may run it; raise _Refused saying why (and where to go)."""
        if self.read_only and kind != "read":
            raise _Refused(
                f"this database is connected read-only: {ROUTE[kind]} is refused (sql_tool(..., "
                f"read_only=False) allows it)"
            )
        stmt = _prepare(sql, self.db.syntax)
        if stmt.kind != kind:
            hint = f"send it with {ROUTE[stmt.kind]}"
            if self.read_only and stmt.kind != "read":
                hint = "this database is connected read-only, so it is refused"
            raise _Refused(f"{stmt.label} is {_KIND_WORDS[stmt.kind]}, not {_KIND_WORDS[kind]}: {hint}")
        return stmt

    @staticmethod
    def check_params(stmt: _Statement, params: Mapping[str, Any]) -> None:
        missing = [n for n in stmt.placeholders if n not in params]
        unused = [n for n in params if n not in stmt.placeholders]
        if missing:
            raise _Refused(f"no value in params for placeholder(s) {', '.join(':' + n for n in missing)}")
        if unused:
            raise _Refused(
                f"params {', '.join(map(repr, unused))} not used by the statement (placeholders are "
                f":name in the SQL text)"
            )

    def bind(self, base: type[BaseModel], kind: Kind) -> type[BaseModel]:
        """`base` with this tool's checks added, so `Toolset.validate` refuses a wrong statement
        before the gate ever sees it."""
        tool = self

        def sql_ok(cls: type, v: str) -> str:
            try:
                tool.check(v, kind)
            except _Refused as exc:
                raise _custom(str(exc)) from None
            return v

        validators: dict[str, Any] = {"_sql_ok": field_validator("sql")(sql_ok)}
        if "params" in base.model_fields:

            def params_ok(cls: type, v: dict, info: ValidationInfo) -> dict:
                if "sql" in info.data:  # else the sql error is reported already
                    try:
                        tool.check_params(_prepare(info.data["sql"], tool.db.syntax), v)
                    except _Refused as exc:
                        raise _custom(str(exc)) from None
                return v

            validators["_params_ok"] = field_validator("params")(params_ok)
        return create_model(base.__name__, __base__=base, __validators__=validators)

    def _run(self, action: str, kind: Kind, sql: str, params: Mapping[str, Any]) -> tuple[_Statement, dict]:
        try:
            stmt = self.check(sql, kind)  # again: run can be reached without validate
            self.check_params(stmt, params)
            stream = kind == "read" and stmt.label in _STREAMED
            return stmt, self.db.run(
                stmt.text, params, write=kind != "read", max_rows=self.max_rows, max_bytes=self.max_bytes, stream=stream
            )
        except (_Refused, ToolError) as exc:
            raise ToolError(f"{action}: {exc}") from None

    def query(self, a: QueryArgs) -> dict:
        _, out = self._run("sql.query", "read", a.sql, a.params)
        out.pop("rowcount", None)  # -1 for a SELECT: noise
        return out

    def execute(self, a: ExecuteArgs) -> dict:
        """{rowcount}, and the rows too when the statement returns some (RETURNING)."""
        return self._run("sql.execute", "data", a.sql, a.params)[1]

    def schema_change(self, a: SchemaChangeArgs) -> dict:
        stmt, _ = self._run("sql.schema_change", "schema", a.sql, {})
        return {"done": stmt.label}

    def tables(self, a: TablesArgs) -> dict:
        """Tables and views (at most max_rows of them) with their columns, read like a query:
        in a rolled-back, read-only transaction under the timeout."""
        try:
            with self.db.engine.connect() as conn, conn.begin() as trans:
                with self.db._guarded(conn, write=False):
                    insp = inspect(conn)
                    found = [("table", n) for n in insp.get_table_names()] + [
                        ("view", n) for n in insp.get_view_names()
                    ]
                    if a.table is not None:
                        found = [(k, n) for k, n in found if n == a.table]
                        if not found:
                            raise ToolError(f"sql.tables: there is no table or view named {a.table!r}")
                    out = [
                        {"name": name, "kind": kind, "columns": self._columns(insp, name, kind)}
                        for kind, name in found[: self.max_rows]
                    ]
                trans.rollback()
        except SQLAlchemyError as exc:
            raise ToolError(
                f"sql.tables: the database could not be inspected: {str(exc).splitlines()[0][:500]}"
            ) from None
        return {"tables": out, "truncated": len(found) > self.max_rows}

    @staticmethod
    def _columns(insp: Any, name: str, kind: str) -> list[dict]:
        pk = set(insp.get_pk_constraint(name).get("constrained_columns") or []) if kind == "table" else set()
        return [
            {
                "name": c["name"],
                "type": _type_name(c["type"]),
                "nullable": bool(c.get("nullable", True)),
                "primary_key": c["name"] in pk,
            }
            for c in insp.get_columns(name)
        ]


def _type_name(t: Any) -> str:
    try:
        return str(t)
    except Exception:  # some dialect types cannot render without a dialect
        return type(t).__name__


def sql_tool(
    url: str, *, read_only: bool = True, max_rows: int = 200, timeout_s: float = 10, max_result_bytes: int = 1_000_000
) -> list[ToolAction]:
    """The `sql.*` actions on one database (any SQLAlchemy URL). With read_only=True (the
    default) only sql.query and sql.tables run, and SQLite files are opened read-only. A result
    holds at most max_rows rows and max_result_bytes bytes; a statement whose cost is unbounded
    needs approval (see the module docstring)."""
    t = _SqlTool(url, read_only, max_rows, timeout_s, max_result_bytes)
    ro = " (refused: this database is connected read-only)" if read_only else ""
    return [
        ToolAction(
            "sql.query",
            f"Run one read statement (SELECT, WITH ... SELECT, VALUES, EXPLAIN, reading PRAGMA) "
            f"and return at most {max_rows} rows.",
            t.bind(QueryArgs, "read"),
            "read",
            t.query,
            review=t.review,
        ),
        ToolAction(
            "sql.tables",
            "List the tables and views with their columns (name, type, nullable, primary key).",
            TablesArgs,
            "read",
            t.tables,
        ),
        ToolAction(
            "sql.execute",
            f"Run one INSERT, UPDATE, DELETE, REPLACE or MERGE statement and return the number of rows changed{ro}.",
            t.bind(ExecuteArgs, "data"),
            "write",
            t.execute,
            review=t.review,
        ),
        ToolAction(
            "sql.schema_change",
            f"Run one CREATE, ALTER, DROP or TRUNCATE statement{ro}.",
            t.bind(SchemaChangeArgs, "schema"),
            "delete",
            t.schema_change,
        ),
    ]
