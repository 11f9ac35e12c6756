"""What the approval queue and the audit database share: one way to open a database from a
SQLAlchemy URL, create their tables, and say clearly when the database cannot be used.

Guaranteed:

* A URL is never shown with its password: every message uses ``safe_url`` (``***`` instead).
* A bad URL is a ValueError naming the URL and an example of a good one; a URL whose driver is not
  installed (``postgresql+psycopg2://``, or ``postgresql://`` on SQLAlchemy 2.0, where it means
  psycopg2) is StoreUnavailable naming the driver to use (``postgresql+psycopg://``).
* A database that cannot be reached when a store opens is StoreUnavailable naming the store and
  its URL. Later driver errors (lost connection, full or read-only disk, a missing table) become
  StoreUnavailable in the approval queue and AuditError in the audit database, after the
  transaction was rolled back: a server fails closed (503), never with a half-done change.
* SQLite: every transaction starts with BEGIN IMMEDIATE (a writer waits up to 30 s for another
  process's lock instead of failing half-way), WAL journal, synchronous FULL.
  PostgreSQL: pre-ping on checkout (a restarted server is reconnected to), a 10 s connect timeout.
* ``create_tables`` creates missing tables once, even when several processes start at the same
  moment on an empty PostgreSQL database (an advisory lock serialises them; concurrent CREATE
  TABLE would otherwise fail in one of them).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

__all__ = ["StoreUnavailable", "create_tables", "is_memory_sqlite", "open_engine", "parse_url", "reason", "safe_url"]

SQLITE_BUSY_TIMEOUT_MS = 30_000  # a writer waits this long for another process's lock
CONNECT_TIMEOUT_S = 10  # a server database that does not answer in this time is unreachable
_SCHEMA_LOCK = int.from_bytes(hashlib.sha256(b"so8t.schema").digest()[:8], "big", signed=True)
_EXAMPLES = "e.g. sqlite:///so8t-state/approvals.db or postgresql+psycopg://user:password@host:5432/so8t"


class StoreUnavailable(RuntimeError):
    """The database behind the approvals or the audit cannot be used now (nothing was changed)."""


def parse_url(url: str | URL) -> URL:
    """The URL, or ValueError naming it (without its password) and what a good one looks like."""
    if isinstance(url, URL):
        return url
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"a database URL is required ({_EXAMPLES})")
    try:
        return make_url(url.strip())
    except ArgumentError:
        shown = url.split("@", 1)[-1] if "@" in url else url  # no password, however malformed
        raise ValueError(f"{shown!r} is not a database URL ({_EXAMPLES})") from None


def safe_url(url: str | URL) -> str:
    """The URL as it may be shown: the password replaced by ***."""
    try:
        return parse_url(url).render_as_string(hide_password=True)
    except ValueError:
        return "<not a database URL>"


def reason(exc: BaseException, url: URL | None = None) -> str:
    """The driver's first line of explanation (never the SQL, never the password)."""
    orig = getattr(exc, "orig", None) or exc
    text = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    if url is not None and url.password:
        text = text.replace(str(url.password), "***")
    return text


def is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def open_engine(url: str | URL, what: str) -> Engine:
    """An engine for ``url`` set up as the module docstring says; ``what`` names the store in errors."""
    url = parse_url(url)
    try:
        if url.get_backend_name() != "sqlite":
            args: dict[str, Any] = {}
            if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg", "psycopg2"):
                args["connect_timeout"] = CONNECT_TIMEOUT_S
            return create_engine(url, pool_pre_ping=True, connect_args=args)
        if is_memory_sqlite(url):
            engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            assert url.database  # not an in-memory URL, so it names a file
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False})
    except ImportError as exc:
        hint = (
            " use postgresql+psycopg://... (the psycopg driver, pip install 'psycopg[binary]')"
            if url.get_backend_name() == "postgresql"
            else " install it, or name an installed driver in the URL"
        )
        raise StoreUnavailable(f"{what} {safe_url(url)}: its database driver is not installed ({exc});{hint}") from None
    except SQLAlchemyError as exc:  # an unknown dialect ("postgress://")
        raise ValueError(f"{what} {safe_url(url)}: {reason(exc)} ({_EXAMPLES})") from None
    _sqlite_transactions(engine, memory=is_memory_sqlite(url))
    return engine


def _sqlite_transactions(engine: Engine, *, memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so every transaction starts with BEGIN
        # IMMEDIATE (below): a writer then waits for the lock up front (busy_timeout) rather
        # than failing with SQLITE_BUSY when it upgrades a read to a write mid-transaction.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if not memory:
            # Readers do not block the writer. synchronous stays FULL (the default): with
            # NORMAL a power cut can lose a committed change (a claim: a step could run twice).
            cur.execute("PRAGMA journal_mode = WAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_tables(engine: Engine, metadata: MetaData, what: str) -> None:
    """Create the missing tables of ``metadata`` (see the module docstring); StoreUnavailable,
    naming ``what`` and the URL, when the database cannot be reached."""
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
            metadata.create_all(conn)
    except DBAPIError as exc:
        raise StoreUnavailable(
            f"{what} {safe_url(engine.url)}: cannot use the database: {reason(exc, engine.url)}"
        ) from None
