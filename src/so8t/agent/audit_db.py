"""The audit log in a database (SQLite or PostgreSQL): the same records and hash chain as the JSONL
file (``so8t.agent.audit``), shared by several server processes on several machines.

Each record is stored as the JSON text a JSONL log holds on its line, in the table ``so8t_audit``
(``seq`` BIGINT PRIMARY KEY, ``record`` TEXT). Everything ``so8t.agent.audit`` guarantees about
records holds here too: the SHA-256 (or, with ``SO8T_AUDIT_KEY``, HMAC-SHA256) chain, keyed and
unkeyed records never mixed, redaction before anything is stored. In addition:

* One chain, whoever writes: an append first takes the table's write lock (PostgreSQL:
  ``LOCK TABLE so8t_audit IN EXCLUSIVE MODE``, held until the commit; readers are not blocked.
  SQLite: ``BEGIN IMMEDIATE``), then reads the last record and chains to it. Appends from any
  number of processes and replicas therefore form a single chain, in commit order. ``seq`` is the
  primary key, so a writer that skipped the lock could not fork the chain either: its insert fails.
* All or nothing: the records of one ``append_batch`` commit in one transaction, or none do and
  ``AuditError`` is raised (the database is unreachable, the connection was lost, the disk is full
  ...), naming the URL without its password. Callers write a change's records before they commit
  the change (write-ahead), as with the file, so a change without its record never commits.
* ``health()`` reads the head of the chain (for /readyz); after a failed write the store counts as
  failing until a write succeeds (``audit.restored``, naming the failure), as with the file.
* ``verify`` reads the records in seq order and applies the file's rules (edited, deleted,
  inserted, reordered, malformed, downgraded, key_required; ``row N`` is the N-th record in seq
  order). There are no torn lines in a database: a transaction commits whole or not at all, so
  ``recover()`` has nothing to do.

Not guaranteed (as with the file): whoever can write the table can rewrite the whole chain;
an HMAC key kept away from the database's users, and the head hash kept elsewhere, defend it.
Only SQLite and PostgreSQL are supported (other databases lock tables differently).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from sqlalchemy import BigInteger, Column, MetaData, Table, Text, func, insert, inspect, select
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from so8t.agent.audit_chain import (
    GENESIS,
    AuditError,
    AuditStore,
    chain_point,
    check_key,
    check_mode,
    encode_line,
    new_record,
    parse_line,
)
from so8t.agent.audit_verify import VerifyReport, verify_lines
from so8t.agent.redaction import Redactor
from so8t.agent.sqlstore import StoreUnavailable, create_tables, open_engine, parse_url, reason, safe_url

__all__ = [
    "SUPPORTED",
    "TABLE",
    "DatabaseAuditLog",
    "is_database_url",
    "open_audit_store",
    "tail_records",
    "verify_database",
]

TABLE = "so8t_audit"
SUPPORTED = ("sqlite", "postgresql")
STORE = "the audit database"
_metadata = MetaData()
_records = Table(
    TABLE,
    _metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("record", Text, nullable=False),
)


def is_database_url(target: str) -> bool:
    """Whether an audit location is a database URL (``scheme://...``) rather than a file path."""
    return "://" in target


def _engine(url: str | URL) -> tuple[URL, Engine]:
    url = parse_url(url)
    if url.get_backend_name() not in SUPPORTED:
        raise ValueError(
            f"{STORE} {safe_url(url)}: {url.get_backend_name()!r} is not supported; the audit "
            "chain is kept in SQLite (sqlite:///path/audit.db) or PostgreSQL "
            "(postgresql+psycopg://user:password@host/db)"
        )
    return url, open_engine(url, STORE)


class DatabaseAuditLog(AuditStore):
    """The hash-chained audit log in the database at ``url`` (see the module docstring).

    Raises StoreUnavailable (naming the URL without its password) when the database cannot be
    reached at start, ValueError for a URL that is not SQLite or PostgreSQL."""

    def __init__(self, url: str | URL, *, redact: Redactor | None = None, key: bytes | None = None) -> None:
        super().__init__(redact=redact, key=key)
        self.url, self.engine = _engine(url)
        self.location = safe_url(self.url)
        # One connection for a memory database (StaticPool): serialise its users. Elsewhere this
        # only orders this process's threads; the database lock orders processes.
        self._tlock = threading.Lock()
        with self._tlock:
            create_tables(self.engine, _metadata, STORE)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A transaction holding the table's write lock (see the module docstring)."""
        with self._tlock, self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"LOCK TABLE {TABLE} IN EXCLUSIVE MODE")
            yield conn

    def _append_many(self, items: list[tuple[str, dict]]) -> list[dict]:
        try:
            with self._writing() as conn:
                seq, prev = self._chain_to(conn)
                out = []
                for event, data in items:
                    seq += 1
                    out.append(new_record(seq, event, data, prev, self._key))
                    prev = out[-1]["hash"]
                conn.execute(
                    insert(_records), [{"seq": r["seq"], "record": encode_line(r).decode("utf-8")[:-1]} for r in out]
                )
        except AuditError as exc:
            self._failure = str(exc)
            raise
        except SQLAlchemyError as exc:
            err = AuditError(f"{STORE} {self.location} could not be written: {reason(exc, self.url)}")
            self._failure = str(err)
            raise err from None
        self._failure = None
        return out

    def _chain_to(self, conn: Connection) -> tuple[int, str]:
        """Seq and hash of the last well-formed record (rows that are not are stepped over, as
        garbage lines in a file are; verify reports them), once its mode is known to match."""
        rows = conn.execute(select(_records.c.record).order_by(_records.c.seq.desc()).execution_options(yield_per=64))
        for (text,) in rows:
            rec = parse_line(text.encode("utf-8"))
            point = chain_point(rec)
            if rec is not None and point is not None:
                check_mode(rec, self._key, self.location)
                return point
        return -1, GENESIS

    def recover(self) -> list[dict]:
        """Nothing to recover: a transaction is never half-written (see the module docstring)."""
        return []

    def _probe(self) -> str | None:
        """A read of the table: the database is reachable and the table is there."""
        try:
            with self._tlock, self.engine.connect() as conn:
                conn.execute(select(func.max(_records.c.seq)))
        except SQLAlchemyError as exc:
            return f"{STORE} {self.location} cannot take records: {reason(exc, self.url)}"
        return None

    def verify(self) -> VerifyReport:
        return verify_database(self.url, self._key, engine=self.engine)

    def tail(self, n: int = 20) -> list[dict]:
        with self._tlock:
            return _tail(self.engine, n)


def _tail(engine: Engine, n: int) -> list[dict]:
    if n <= 0:
        return []
    with engine.connect() as conn:
        rows = conn.execute(select(_records.c.record).order_by(_records.c.seq.desc()).limit(n)).scalars().all()
    return [rec for rec in (parse_line(t.encode("utf-8")) for t in reversed(rows)) if rec is not None]


@contextlib.contextmanager
def _reading(url: str | URL, engine: Engine | None = None) -> Iterator[Engine]:
    """An engine on an existing audit table (FileNotFoundError naming the URL when there is none);
    driver errors become StoreUnavailable."""
    own = engine is None
    if engine is None:
        url, engine = _engine(url)
    try:
        if not inspect(engine).has_table(TABLE):
            raise FileNotFoundError(
                f"{STORE} {safe_url(url)} has no table {TABLE}: nothing was audited there "
                "(is it the server config's audit_url?)"
            )
        yield engine
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"{STORE} {safe_url(url)} cannot be read: {reason(exc, parse_url(url))}") from None
    finally:
        if own:
            engine.dispose()


def verify_database(url: str | URL, key: bytes | None = None, *, engine: Engine | None = None) -> VerifyReport:
    """``so8t.agent.audit.verify`` for the chain in a database: every record, in seq order.

    Raises StoreUnavailable when the database cannot be read, FileNotFoundError when it holds no
    audit table (a wrong URL, most likely)."""
    key = check_key(key)
    with _reading(url, engine) as eng, eng.connect() as conn:
        rows = conn.execute(select(_records.c.record).order_by(_records.c.seq).execution_options(yield_per=512))
        return verify_lines((text.encode("utf-8") + b"\n" for (text,) in rows), key, unit="row")


def open_audit_store(target: str, *, redact: Redactor | None = None, key: bytes | None = None) -> AuditStore:
    """The audit store at ``target``: a database URL (``scheme://...``) or a JSONL file path."""
    from so8t.agent.audit import AuditLog

    if is_database_url(target):
        return DatabaseAuditLog(target, redact=redact, key=key)
    return AuditLog(target, redact=redact, key=key)


def tail_records(target: str, n: int) -> list[dict]:
    """The last ``n`` records of the store at ``target`` (a database URL or a JSONL path)."""
    from so8t.agent.audit import tail

    if is_database_url(target):
        with _reading(target) as engine:
            return _tail(engine, n)
    return tail(target, n)
