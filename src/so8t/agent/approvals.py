"""Durable approval queue: where ESCALATE decisions wait for a human.

A request that the gate escalates is stored as canonical JSON together with its sha256, the gate
decision, the requester, and a creation and expiry time. A human approves it, rejects it with a
reason, or edits it; an approved request is then claimed and run exactly once, exactly as
approved. The queue lives in SQLite by default (``sqlite:///approvals.db``); any SQLAlchemy
database URL works, so several agent processes and a reviewer's CLI can share one queue.

State machine (each transition is one conditional UPDATE; any other raises InvalidTransition)::

                     submit
                       |
                       v
    TIMEOUT <-expiry- PENDING -reject-> REJECTED
                       |   \\
               approve |    \\ edit --> EDITED   (superseded_by = the new item)
                       v                   :
                   APPROVED                :..> new item, parent_id = the edited one,
                       |                        gate run again on the edited request:
                 claim |                        PENDING (ALLOW / ESCALATE) or REJECTED (REFUSE)
                       v
                   EXECUTING
                   /       \\
         complete /         \\ fail
                 v           v
             EXECUTED      FAILED

Terminal: REJECTED, TIMEOUT, EDITED, EXECUTED, FAILED. Choices worth knowing:

* Only PENDING items expire. Expiry denies: the item becomes TIMEOUT (reason "expired",
  decided_at = its expires_at), which is distinct from REJECTED so a report can tell "a human
  said no" from "nobody answered". Every method expires a due item before it reads or changes it,
  so an expired item can never be approved, even if nobody ran ``expire_due``; ``approve`` checks
  the expiry again inside its own transaction, so an item that falls due while it is being
  approved is timed out, not approved.
* An edit is not an approval: the edited request goes through the gate again (``regate``) and
  the new item is PENDING when the gate says ALLOW or ESCALATE, so a human still approves the
  exact new arguments; a REFUSE makes it REJECTED at once. The new item keeps the original
  requester and kind; the editor is recorded on the edited item (decided_by).
* Exactly once: ``claim`` moves APPROVED -> EXECUTING with one ``UPDATE ... WHERE status =
  'APPROVED'`` and checks the row count, so of any number of claimers (threads, processes) one
  wins. A step that crashes after its claim stays EXECUTING and is never run again by the queue;
  ``recover_stuck`` (or an operator, with ``fail``) closes it. A FAILED item is not retried: submit
  a new request.
* Several servers on one database (replicas sharing PostgreSQL): every change reads its row with
  ``SELECT ... FOR UPDATE`` and then makes the conditional UPDATE above, so two approvers, two
  claimers or two expiring workers on different machines serialise on the row: one changes it,
  the other sees the change (AlreadyClaimed / InvalidTransition naming the new status; an item
  already expired is not expired again, so ``approval.timeout`` is recorded once).
* A database that cannot be used (unreachable, connection lost, disk full) raises
  ``so8t.agent.sqlstore.StoreUnavailable`` naming the URL without its password; the transaction is
  rolled back, so nothing changed (the server answers 503). ``health()`` says so for /readyz.
* Exactly as approved: the stored text is re-hashed at approve and claim time and compared with
  the stored hash and with an ``expected_hash`` the caller may pass (the hash ``submit``
  returned). A mismatch raises RequestHashMismatch and leaves the item as it was. Someone who can
  rewrite both columns defeats the first check, not the second: callers should keep the hash.
* Write-ahead records: ``write_ahead(events)`` is called inside the transaction, after the change
  is made and before it commits, with every event of that change as ``[(name, Approval.to_dict())]``
  (an edit has two or three). If it raises (the audit log could not be written), the transaction
  rolls back and the exception reaches the caller: no state change commits without its record.
  If the commit itself fails after the records were written, ``write_ahead`` is called once more,
  best-effort, with ``approval.aborted`` for each of them (``error`` says why), so the log does not
  claim a change the queue does not have. The server passes the audit log here.
* ``on_event(name, data)`` is called after the change is committed (never for a rolled-back
  change), with ``Approval.to_dict()``; an exception it raises propagates to the caller, but the
  state change it reports has already happened. It is a notification, not a record.
* A step that never finishes (the process died, or its completion could not be recorded) is
  closed by ``recover_stuck(older_than_s)``: every item EXECUTING since longer than that becomes
  FAILED with the reason "interrupted: ..." and the event ``approval.interrupted`` (the server runs
  it at start-up and in its worker). It may have run in part or in full: it is never run again.
* Ids are 32 hexadecimal characters (uuid4). ``resolve_id`` turns a unique prefix of at least
  ``MIN_ID_PREFIX`` (8) characters, as the approvals page shows, into the full id for an operator's
  tools (the CLI); ``get`` and the HTTP routes take only full ids. An ambiguous prefix raises
  AmbiguousApprovalId naming the matches, an unknown one ApprovalNotFound with the closest id.
* ``sqlite://`` / ``sqlite:///:memory:`` is supported for tests and demos: one connection shared
  through a StaticPool and guarded by a lock, gone when the process exits, invisible to others.
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import enum
import json
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import DateTime, Index, Integer, String, Text, func, inspect, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from so8t.agent.audit_events import (
    APPROVAL_ABORTED,
    APPROVAL_APPROVED,
    APPROVAL_EDITED,
    APPROVAL_EVENTS,
    APPROVAL_EXECUTED,
    APPROVAL_EXECUTING,
    APPROVAL_FAILED,
    APPROVAL_INTERRUPTED,
    APPROVAL_RECOVERY_EVENTS,
    APPROVAL_REJECTED,
    APPROVAL_REQUESTED,
    APPROVAL_TIMEOUT,
)
from so8t.agent.sqlstore import (
    StoreUnavailable,
    create_tables,
    is_memory_sqlite,
    open_engine,
    parse_url,
    reason,
    safe_url,
)
from so8t.canonical import canonical_json, hash_text as _hash_text, request_hash
from so8t.labels import parse_label

__all__ = [
    "AlreadyClaimed",
    "AmbiguousApprovalId",
    "Approval",
    "ApprovalError",
    "ApprovalNotFound",
    "ApprovalQueue",
    "ClaimedRequest",
    "EVENTS",
    "InvalidTransition",
    "MIN_ID_PREFIX",
    "RECOVERY_EVENTS",
    "RequestHashMismatch",
    "Status",
    "StoreUnavailable",
    "canonical_json",
    "request_hash",
]

DEFAULT_URL = "sqlite:///approvals.db"
EXPIRED_REASON = "expired"
GATE_REFUSED_EDIT_REASON = "gate refused the edited request"
SYSTEM_EXPIRY = "system:expiry"  # decided_by of a TIMEOUT: nobody decided
SYSTEM_RECOVERY = "system:recovery"  # decided_by of a step recover_stuck closed
GATE_DECIDER = "gate"  # decided_by of an edit the gate refused
INTERRUPTED_REASON = "interrupted"  # the reason of a step recover_stuck closed starts with this
STORE = "the approvals database"  # how errors name it
_MAX_ERROR_CHARS = 4000
MIN_ID_PREFIX = 8  # resolve_id: the shortest id prefix accepted (the page shows 12 characters)
_HEX = re.compile(r"[0-9a-f]+")

EVENTS = APPROVAL_EVENTS  # the life of an item (so8t.agent.audit_events, the one list of names)
# Not part of the normal life of an item: a step closed by recover_stuck, and (best-effort, in the
# write-ahead log only) a change whose records were written but whose commit failed.
RECOVERY_EVENTS = APPROVAL_RECOVERY_EVENTS
WriteAhead = Callable[[list[tuple[str, dict[str, Any]]]], None]


class Status(str, enum.Enum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    TIMEOUT = "TIMEOUT"
    EDITED = "EDITED"
    EXECUTING = "EXECUTING"
    EXECUTED = "EXECUTED"
    FAILED = "FAILED"

    def __str__(self) -> str:  # so messages read "APPROVED", not "Status.APPROVED"
        return self.value


TERMINAL = frozenset({Status.REJECTED, Status.TIMEOUT, Status.EDITED, Status.EXECUTED, Status.FAILED})


# --- errors ------------------------------------------------------------------------------------


class ApprovalError(Exception):
    """Base of every error this module raises about queue items (bad arguments raise ValueError)."""


class ApprovalNotFound(ApprovalError, LookupError):
    def __init__(self, id: str, message: str | None = None):
        super().__init__(message or f"no approval with id {id!r}")
        self.id = id


class AmbiguousApprovalId(ApprovalError, LookupError):
    """An id prefix that more than one item's id starts with; ``matches`` lists (some of) them."""

    def __init__(self, prefix: str, matches: list[str]):
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        many = f"more than {len(matches) - 1}" if len(matches) > 5 else str(len(matches))
        super().__init__(
            f"approval id prefix {prefix!r} is ambiguous: {many} ids start with it ({shown}); "
            "give more of its characters"
        )
        self.prefix, self.matches = prefix, matches


class InvalidTransition(ApprovalError):
    def __init__(self, id: str, status: Status | str, action: str, detail: str = ""):
        status = Status(status)
        msg = f"cannot {action} approval {id}: it is {status}"
        super().__init__(msg + (f" ({detail})" if detail else ""))
        self.id, self.status, self.action = id, status, action


class AlreadyClaimed(InvalidTransition):
    """claim / run_once on an item that is no longer APPROVED: someone else has it (or had it)."""


class RequestHashMismatch(ApprovalError):
    """The stored request does not hash to the stored hash, or not to the hash the caller expected."""


# --- storage -----------------------------------------------------------------------------------


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in and out, stored naive UTC: SQLite drops tzinfo without converting,
    so an aware non-UTC value would otherwise be stored wrong and read back naive."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the approval queue only stores timezone-aware times")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class _Base(DeclarativeBase):
    pass


class ApprovalRow(_Base):
    __tablename__ = "approvals"
    __table_args__ = (
        Index("ix_approvals_status_expires", "status", "expires_at"),
        Index("ix_approvals_created", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    request_json: Mapped[str] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(String(64))
    decision_json: Mapped[str] = mapped_column(Text)
    requester: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    superseded_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)  # -> EXECUTING


# --- snapshots ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Approval:
    """A read-only snapshot of one item; ``request`` / ``decision`` / ``result`` parse a fresh copy."""

    id: str
    kind: str
    status: Status
    request_json: str
    request_hash: str
    decision_json: str
    requester: str
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    reason: str | None
    superseded_by: str | None
    parent_id: str | None
    result_json: str | None
    version: int
    claimed_at: datetime | None = None

    @classmethod
    def _from_row(cls, row: ApprovalRow) -> Approval:
        return cls(
            id=row.id,
            kind=row.kind,
            status=Status(row.status),
            request_json=row.request_json,
            request_hash=row.request_hash,
            decision_json=row.decision_json,
            requester=row.requester,
            created_at=row.created_at,
            expires_at=row.expires_at,
            decided_at=row.decided_at,
            decided_by=row.decided_by,
            reason=row.reason,
            superseded_by=row.superseded_by,
            parent_id=row.parent_id,
            result_json=row.result_json,
            version=row.version,
            claimed_at=row.claimed_at,
        )

    @property
    def request(self) -> dict[str, Any]:
        return json.loads(self.request_json)

    @property
    def decision(self) -> dict[str, Any]:
        return json.loads(self.decision_json)

    @property
    def action(self) -> str | None:
        """The gate's action in the stored decision, if it has one."""
        return self.decision.get("action")

    @property
    def result(self) -> Any:
        return None if self.result_json is None else json.loads(self.result_json)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 UTC, status as its name, JSON columns kept as text."""
        d = asdict(self)
        d["status"] = self.status.value
        for k in ("created_at", "expires_at", "decided_at", "claimed_at"):
            d[k] = None if d[k] is None else d[k].isoformat()
        return d

    @property
    def approved_by(self) -> str | None:
        """Who approved an item that was approved (APPROVED, EXECUTING, EXECUTED, FAILED), if recorded."""
        if (
            self.status in (Status.APPROVED, Status.EXECUTING, Status.EXECUTED, Status.FAILED)
            and self.decided_by
            and not self.decided_by.startswith("system:")
        ):
            return self.decided_by
        return None

    def to_readable_dict(self) -> dict[str, Any]:
        """``to_dict()`` for people: ``request``, ``decision`` and ``result`` as JSON values instead
        of the JSON text columns (the request's hash stays, to bind an approval to it), and
        ``approved_by``."""
        d = self.to_dict()
        for k in ("request", "decision", "result"):
            d.pop(f"{k}_json")
        d.update(request=self.request, decision=self.decision, result=self.result, approved_by=self.approved_by)
        return d


@dataclass(frozen=True)
class ClaimedRequest:
    """What the winner of a claim runs: ``request`` is parsed from the stored canonical text."""

    id: str
    kind: str
    request: dict[str, Any]
    request_hash: str
    approval: Approval


# --- the queue ---------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _require_text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    return value.strip()


def _ttl(ttl_s: float) -> timedelta:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"ttl_s must be a positive finite number of seconds, got {ttl_s!r}")
    return timedelta(seconds=ttl_s)


class ApprovalQueue:
    """The approval queue on one database; safe to share between threads, and (through the
    database) between processes. See the module docstring for the state machine."""

    def __init__(
        self,
        url: str | URL = DEFAULT_URL,
        *,
        default_ttl_s: float = 3600,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        clock: Callable[[], datetime] | None = None,
        write_ahead: WriteAhead | None = None,
    ):
        self.default_ttl_s = default_ttl_s
        _ttl(default_ttl_s)
        self._on_event = on_event
        self._write_ahead = write_ahead
        self._clock = clock or _utcnow
        self.url = parse_url(url)
        self._memory = is_memory_sqlite(self.url)
        # A memory database is one shared connection: serialise its users. File databases and
        # servers get real per-thread connections and rely on the database's own locking.
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self._memory else contextlib.nullcontext()
        )
        self.engine = open_engine(self.url, STORE)
        with self._lock:
            create_tables(self.engine, _Base.metadata, STORE)
            try:
                self._add_missing_columns()
            except DBAPIError as exc:
                raise self._unavailable(exc) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"{STORE} {safe_url(self.url)} cannot be used: {reason(exc, self.url)}; nothing was changed"
        )

    def health(self) -> str | None:
        """None when the database answers; otherwise why not (for a readiness check)."""
        try:
            with self._lock, self.engine.connect() as conn:
                conn.execute(select(func.count()).select_from(ApprovalRow).where(ApprovalRow.id == ""))
        except SQLAlchemyError as exc:
            return str(self._unavailable(exc))
        return None

    def _add_missing_columns(self) -> None:
        """A queue created by an older version lacks ``claimed_at``: add it (NULL for old rows)."""
        have = {c["name"] for c in inspect(self.engine).get_columns(ApprovalRow.__tablename__)}
        if "claimed_at" in have:
            return
        kind = ApprovalRow.__table__.c.claimed_at.type.compile(dialect=self.engine.dialect)
        try:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {ApprovalRow.__tablename__} ADD COLUMN claimed_at {kind}")
        except OperationalError:  # another process added it first
            have = {c["name"] for c in inspect(self.engine).get_columns(ApprovalRow.__tablename__)}
            if "claimed_at" not in have:
                raise

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ApprovalQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if not isinstance(now, datetime) or now.tzinfo is None:
            raise ValueError("the clock must return a timezone-aware datetime")
        return now.astimezone(timezone.utc)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[tuple[Session, builtins.list[tuple[str, Approval]]]]:
        """One committed transaction; the events it collected are sent only after the commit."""
        events: builtins.list[tuple[str, Approval]] = []
        written: builtins.list[tuple[str, dict[str, Any]]] = []
        try:
            with self._lock, self._sessions.begin() as session:
                yield session, events
                if events and self._write_ahead is not None:
                    # the records first: if they cannot be written, the change rolls back
                    batch = [(name, snap.to_dict()) for name, snap in events]
                    self._write_ahead(batch)
                    written = batch
        except DBAPIError as exc:  # rolled back: the database is gone, full, read-only, ...
            self._aborted(written, exc)
            raise self._unavailable(exc) from None
        except BaseException as exc:
            self._aborted(written, exc)
            raise
        if self._on_event is not None:
            for name, snap in events:
                self._on_event(name, snap.to_dict())

    def _aborted(self, written: builtins.list[tuple[str, dict[str, Any]]], exc: BaseException) -> None:
        if written and self._write_ahead is not None:  # recorded, then the commit failed: say so (best-effort)
            error = f"{type(exc).__name__}: {reason(exc, self.url)}"[:_MAX_ERROR_CHARS]
            with contextlib.suppress(Exception):
                self._write_ahead(
                    [(APPROVAL_ABORTED, {**data, "aborted": name, "error": error}) for name, data in written]
                )

    @staticmethod
    def _load(session: Session, id: str, *, lock: bool = False) -> ApprovalRow:
        """The row as committed now; ``lock``: SELECT ... FOR UPDATE, held to the end of the
        transaction (PostgreSQL: a second replica changing the same item waits, then sees this
        change; SQLite: BEGIN IMMEDIATE already holds the whole database)."""
        row = (
            session.get(ApprovalRow, id, populate_existing=True, with_for_update=lock) if isinstance(id, str) else None
        )
        if row is None:
            raise ApprovalNotFound(id)
        return row

    @staticmethod
    def _move(session: Session, row: ApprovalRow, action: str, frm: Status, to: Status, **values: Any) -> Approval:
        """The one way a status changes: UPDATE ... WHERE id, status and version still match.

        Under SQLite's BEGIN IMMEDIATE nobody can change the row between our read and this
        write; on a server database someone can, and the row count tells us.
        """
        if row.status != frm:
            cls = AlreadyClaimed if action == "claim" and row.status in _CLAIMED else InvalidTransition
            raise cls(row.id, row.status, action)
        res = session.execute(
            update(ApprovalRow)
            .where(ApprovalRow.id == row.id, ApprovalRow.status == frm.value, ApprovalRow.version == row.version)
            .values(status=to.value, version=row.version + 1, **values)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]  # an UPDATE gives a CursorResult
            now_status = session.execute(select(ApprovalRow.status).where(ApprovalRow.id == row.id)).scalar_one()
            cls = AlreadyClaimed if action == "claim" and now_status in _CLAIMED else InvalidTransition
            raise cls(row.id, now_status, action, "changed concurrently")
        session.refresh(row)
        return Approval._from_row(row)

    @staticmethod
    def _verify(row: ApprovalRow, expected_hash: str | None, action: str) -> str:
        """The stored text, after checking it still is what was submitted (and what the caller saw)."""
        text = row.request_json
        if _hash_text(text) != row.request_hash:
            raise RequestHashMismatch(
                f"cannot {action} approval {row.id}: the stored request no longer matches its hash "
                f"{row.request_hash} (modified in the database)"
            )
        if expected_hash is not None and expected_hash != row.request_hash:
            raise RequestHashMismatch(
                f"cannot {action} approval {row.id}: its request hash is {row.request_hash}, "
                f"the caller expected {expected_hash}"
            )
        return text

    def _expire(self, id: str | None = None) -> builtins.list[Approval]:
        now = self._now()
        with self._tx() as (s, events):
            q = select(ApprovalRow).where(ApprovalRow.status == Status.PENDING.value, ApprovalRow.expires_at <= now)
            if id is not None:
                q = q.where(ApprovalRow.id == id)
            # FOR UPDATE: of two replicas expiring at once, the second waits for the first, and
            # PostgreSQL then re-checks status = PENDING on the new row: it skips what was expired.
            q = q.order_by(ApprovalRow.expires_at, ApprovalRow.id).with_for_update()
            out = []
            for row in s.scalars(q.execution_options(populate_existing=True)).all():
                snap = self._timeout(s, row)
                events.append((APPROVAL_TIMEOUT, snap))
                out.append(snap)
        return out

    def _timeout(self, session: Session, row: ApprovalRow) -> Approval:
        """PENDING -> TIMEOUT for a due row (decided at its expires_at, by the expiry)."""
        return self._move(
            session,
            row,
            "expire",
            Status.PENDING,
            Status.TIMEOUT,
            decided_at=row.expires_at,
            decided_by=SYSTEM_EXPIRY,
            reason=EXPIRED_REASON,
        )

    # --- API -----------------------------------------------------------------------------------

    def submit(
        self,
        request: dict[str, Any],
        decision: dict[str, Any],
        requester: str,
        *,
        kind: str = "chat",
        ttl_s: float | None = None,
    ) -> Approval:
        """Queue a request (PENDING). Keep the returned ``request_hash`` to pass to claim/run_once."""
        if not isinstance(request, dict):
            raise ValueError(f"request must be a dict, got {type(request).__name__}")
        if not isinstance(decision, dict):
            raise ValueError(f"decision must be a dict, got {type(decision).__name__}")
        text = canonical_json(request)  # serialised now: later changes to the caller's dict do not matter
        decision_text = canonical_json(decision)
        requester = _require_text(requester, "requester")
        kind = _require_text(kind, "kind")
        ttl = _ttl(self.default_ttl_s if ttl_s is None else ttl_s)
        now = self._now()
        row = ApprovalRow(
            id=uuid.uuid4().hex,
            kind=kind,
            request_json=text,
            request_hash=_hash_text(text),
            decision_json=decision_text,
            requester=requester,
            status=Status.PENDING.value,
            created_at=now,
            expires_at=now + ttl,
            version=1,
        )
        with self._tx() as (s, events):
            s.add(row)
            s.flush()
            snap = Approval._from_row(row)
            events.append((APPROVAL_REQUESTED, snap))
        return snap

    def resolve_id(self, prefix: str) -> str:
        """The full id of the one item whose id starts with ``prefix``: at least MIN_ID_PREFIX
        hexadecimal characters, any case, surrounding spaces ignored (a full id is a prefix too).

        ValueError for a prefix too short or not hexadecimal; AmbiguousApprovalId when several
        ids start with it; ApprovalNotFound (naming the closest id, if one is close) when none does."""
        if not isinstance(prefix, str):
            raise ValueError(f"an approval id must be a string, got {type(prefix).__name__}")
        p = prefix.strip().lower()
        if not _HEX.fullmatch(p):
            raise ValueError(
                f"{prefix!r} is not an approval id: ids are hexadecimal (0-9, a-f), as "
                "`so8t approvals list` and the approvals page show them"
            )
        if len(p) < MIN_ID_PREFIX:
            raise ValueError(
                f"approval id {prefix!r} is too short: give at least {MIN_ID_PREFIX} of its characters "
                "(the approvals page shows 12)"
            )
        with self._tx() as (s, _):
            q = select(ApprovalRow.id).where(ApprovalRow.id.startswith(p, autoescape=True))
            matches = builtins.list(s.scalars(q.order_by(ApprovalRow.id).limit(6)).all())
            if len(matches) == 1:
                return matches[0]
            if matches:
                raise AmbiguousApprovalId(prefix.strip(), matches)
            ids = builtins.list(s.scalars(select(ApprovalRow.id)).all())
        heads = {i[: len(p)]: i for i in ids}
        close = difflib.get_close_matches(p, builtins.list(heads), n=1, cutoff=0.75)
        hint = (
            f"; did you mean {heads[close[0]][: max(12, len(p))]!r}?"
            if close
            else "; `so8t approvals list` shows the ids"
            if ids
            else "; the queue is empty"
        )
        raise ApprovalNotFound(prefix.strip(), f"no approval whose id starts with {prefix.strip()!r}{hint}")

    def get(self, id: str) -> Approval:
        self._expire(id)
        with self._tx() as (s, _):
            return Approval._from_row(self._load(s, id))

    def expire_due(self) -> builtins.list[Approval]:
        """Mark every PENDING item past its expiry TIMEOUT; returns those it marked."""
        return self._expire()

    def pending_count(self) -> int:
        self._expire()
        with self._tx() as (s, _):
            q = select(func.count()).select_from(ApprovalRow).where(ApprovalRow.status == Status.PENDING.value)
            return int(s.execute(q).scalar_one())

    def oldest_pending_age_s(self) -> float | None:
        """Seconds the oldest PENDING item has waited; None when nothing is pending."""
        self._expire()
        with self._tx() as (s, _):
            q = select(func.min(ApprovalRow.created_at)).where(ApprovalRow.status == Status.PENDING.value)
            oldest = s.execute(q).scalar_one()
        if oldest is None:
            return None
        # func.min bypasses the column type on some backends: normalise here too
        created = UTCDateTime().process_result_value(
            datetime.fromisoformat(oldest) if isinstance(oldest, str) else oldest, None
        )
        assert created is not None  # not None in, not None out
        return max(0.0, (self._now() - created).total_seconds())

    def approve(self, id: str, approver: str, note: str | None = None, *, expected_hash: str | None = None) -> Approval:
        """PENDING -> APPROVED. Pass ``expected_hash`` to bind the approval to the request you saw."""
        approver = _require_text(approver, "approver")
        self._expire(id)
        with self._tx() as (s, events):
            row = self._load(s, id, lock=True)
            now = self._now()
            if row.status == Status.PENDING.value and row.expires_at <= now:
                # it fell due after the check above: expire it here, in the approval's own transaction
                snap = self._timeout(s, row)
                events.append((APPROVAL_TIMEOUT, snap))
            else:
                if row.status == Status.PENDING.value:
                    self._verify(row, expected_hash, "approve")
                snap = self._move(
                    s,
                    row,
                    "approve",
                    Status.PENDING,
                    Status.APPROVED,
                    decided_at=now,
                    decided_by=approver,
                    reason=note,
                )
                events.append((APPROVAL_APPROVED, snap))
        if snap.status is Status.TIMEOUT:
            raise InvalidTransition(id, Status.TIMEOUT, "approve")
        return snap

    def reject(self, id: str, approver: str, reason: str) -> Approval:
        """PENDING -> REJECTED; a non-empty reason is required (it goes to the requester and the audit)."""
        approver = _require_text(approver, "approver")
        reason = _require_text(reason, "reason")
        self._expire(id)
        with self._tx() as (s, events):
            row = self._load(s, id, lock=True)
            snap = self._move(
                s,
                row,
                "reject",
                Status.PENDING,
                Status.REJECTED,
                decided_at=self._now(),
                decided_by=approver,
                reason=reason,
            )
            events.append((APPROVAL_REJECTED, snap))
        return snap

    def edit(
        self,
        id: str,
        new_request: dict[str, Any],
        editor: str,
        regate: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        note: str | None = None,
        ttl_s: float | None = None,
    ) -> Approval:
        """PENDING -> EDITED, and a new item for ``new_request`` whose decision is ``regate(new_request)``.

        Returns the new item: PENDING if the gate says ALLOW or ESCALATE (an edit is not an
        approval: a human approves the new arguments like any others), REJECTED with reason
        "gate refused the edited request" if it says REFUSE. ``regate`` runs outside any
        transaction (it may be a model call); if the old item changed meanwhile, nothing is stored.
        """
        editor = _require_text(editor, "editor")
        if not isinstance(new_request, dict):
            raise ValueError(f"new_request must be a dict, got {type(new_request).__name__}")
        text = canonical_json(new_request)
        ttl = _ttl(self.default_ttl_s if ttl_s is None else ttl_s)
        current = self.get(id)
        if current.status is not Status.PENDING:
            raise InvalidTransition(id, current.status, "edit")
        decision = regate(json.loads(text))  # a fresh copy of the canonical form: what will be stored
        if not isinstance(decision, dict):
            raise ValueError(f"regate must return a dict, got {type(decision).__name__}")
        if "action" not in decision:
            raise ValueError("regate returned a decision without an 'action'")
        action = parse_label(decision["action"]).name
        decision_text = canonical_json(decision)
        self._expire(id)  # it may have expired while the gate ran
        now = self._now()
        with self._tx() as (s, events):
            old = self._load(s, id, lock=True)
            refused = action == "REFUSE"
            new = ApprovalRow(
                id=uuid.uuid4().hex,
                kind=old.kind,
                request_json=text,
                request_hash=_hash_text(text),
                decision_json=decision_text,
                requester=old.requester,
                status=(Status.REJECTED if refused else Status.PENDING).value,
                created_at=now,
                expires_at=now + ttl,
                parent_id=old.id,
                version=1,
                decided_at=now if refused else None,
                decided_by=GATE_DECIDER if refused else None,
                reason=GATE_REFUSED_EDIT_REASON if refused else None,
            )
            edited = self._move(
                s,
                old,
                "edit",
                Status.PENDING,
                Status.EDITED,
                decided_at=now,
                decided_by=editor,
                reason=note,
                superseded_by=new.id,
            )
            s.add(new)
            s.flush()
            snap = Approval._from_row(new)
            events.append((APPROVAL_EDITED, edited))
            events.append((APPROVAL_REQUESTED, snap))
            if refused:
                events.append((APPROVAL_REJECTED, snap))
        return snap

    def claim(self, id: str, expected_hash: str | None = None) -> ClaimedRequest:
        """APPROVED -> EXECUTING for exactly one caller; returns the request exactly as approved.

        Raises AlreadyClaimed (naming the status) if the item is EXECUTING, EXECUTED or FAILED,
        InvalidTransition if it was never approved, RequestHashMismatch if the request changed.
        """
        self._expire(id)
        with self._tx() as (s, events):
            row = self._load(s, id, lock=True)
            # verify only what could be claimed: a second claimer must hear AlreadyClaimed
            text = self._verify(row, expected_hash, "claim") if row.status == Status.APPROVED.value else ""
            snap = self._move(s, row, "claim", Status.APPROVED, Status.EXECUTING, claimed_at=self._now())
            events.append((APPROVAL_EXECUTING, snap))
        # snap.request_json == text: the UPDATE ran in the same locked transaction as the check
        return ClaimedRequest(
            id=snap.id, kind=snap.kind, request=json.loads(text), request_hash=snap.request_hash, approval=snap
        )

    def complete(self, id: str, result: Any) -> Approval:
        """EXECUTING -> EXECUTED, storing ``result`` (canonical JSON) for idempotent replays."""
        result_text = canonical_json(result)
        with self._tx() as (s, events):
            row = self._load(s, id, lock=True)
            snap = self._move(s, row, "complete", Status.EXECUTING, Status.EXECUTED, result_json=result_text)
            events.append((APPROVAL_EXECUTED, snap))
        return snap

    def fail(self, id: str, error: str) -> Approval:
        """EXECUTING -> FAILED; also how an operator closes a step that crashed after its claim."""
        error = _require_text(error, "error")[:_MAX_ERROR_CHARS]
        with self._tx() as (s, events):
            row = self._load(s, id, lock=True)
            snap = self._move(s, row, "fail", Status.EXECUTING, Status.FAILED, reason=error)
            events.append((APPROVAL_FAILED, snap))
        return snap

    def recover_stuck(self, older_than_s: float, by: str = SYSTEM_RECOVERY) -> builtins.list[Approval]:
        """EXECUTING -> FAILED for every item claimed more than ``older_than_s`` seconds ago (0: all),
        reason "interrupted: ...", event ``approval.interrupted``; returns those it closed.

        For a step whose process died, or whose completion could not be recorded: it stays
        EXECUTING otherwise, forever. It may have run in part or in full, so it is not run again.
        An item claimed before ``claimed_at`` existed (NULL) counts as stuck."""
        if (
            isinstance(older_than_s, bool)
            or not isinstance(older_than_s, (int, float))
            or not math.isfinite(older_than_s)
            or older_than_s < 0
        ):
            raise ValueError(f"older_than_s must be a finite number of seconds >= 0, got {older_than_s!r}")
        by = _require_text(by, "by")
        cutoff = self._now() - timedelta(seconds=older_than_s)
        with self._tx() as (s, _):
            q = select(ApprovalRow.id).where(
                ApprovalRow.status == Status.EXECUTING.value,
                (ApprovalRow.claimed_at.is_(None)) | (ApprovalRow.claimed_at <= cutoff),
            )
            ids = builtins.list(s.scalars(q.order_by(ApprovalRow.created_at)).all())
        out = []
        for id in ids:  # one transaction (and one record) each: a failure stops at that item
            with self._tx() as (s, events):
                row = self._load(s, id, lock=True)
                if row.status != Status.EXECUTING.value:
                    continue  # completed meanwhile
                since = "an unknown time" if row.claimed_at is None else row.claimed_at.isoformat()
                snap = self._move(
                    s,
                    row,
                    "recover",
                    Status.EXECUTING,
                    Status.FAILED,
                    decided_by=by,
                    reason=f"{INTERRUPTED_REASON}: EXECUTING since {since} and never completed (the process "
                    "stopped, or its completion could not be recorded); it may have run in part or in full, "
                    "and is not run again: check before submitting it again",
                )
                events.append((APPROVAL_INTERRUPTED, snap))
            out.append(snap)
        return out

    def run_once(self, id: str, fn: Callable[[dict[str, Any]], Any], *, expected_hash: str | None = None) -> Any:
        """claim + fn(request) + complete (or fail and re-raise). Idempotent: if the item is
        already EXECUTED, returns the stored result without calling fn."""
        current = self.get(id)
        if current.status is Status.EXECUTED:
            return self._replay(current, expected_hash)
        try:
            claimed = self.claim(id, expected_hash)
        except AlreadyClaimed as exc:
            if exc.status is Status.EXECUTED:  # another caller finished it between get and claim
                return self._replay(self.get(id), expected_hash)
            raise
        try:
            result = fn(claimed.request)
            canonical_json(result)  # an unstorable result must fail the item, not leave it EXECUTING
        except BaseException as exc:  # Ctrl-C too: the step may have half-run, never run it again
            self.fail(id, f"{type(exc).__name__}: {exc}")  # if this cannot be recorded: recover_stuck
            raise
        try:
            return self.complete(id, result).result
        except BaseException as exc:  # it ran, but EXECUTED could not be committed (or recorded)
            with contextlib.suppress(Exception):
                self.fail(id, f"ran, but its completion could not be recorded: {type(exc).__name__}: {exc}")
            raise

    @staticmethod
    def _replay(done: Approval, expected_hash: str | None) -> Any:
        if expected_hash is not None and expected_hash != done.request_hash:
            raise RequestHashMismatch(
                f"approval {done.id} ran request {done.request_hash}, the caller expected {expected_hash}"
            )
        return done.result

    def list(self, status: Status | str | None = None, limit: int = 100) -> builtins.list[Approval]:
        """Items, newest first, optionally of one status."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        st = None if status is None else Status(status)
        self._expire()
        with self._tx() as (s, _):
            q = select(ApprovalRow)
            if st is not None:
                q = q.where(ApprovalRow.status == st.value)
            q = q.order_by(ApprovalRow.created_at.desc(), ApprovalRow.id.desc()).limit(limit)
            return [Approval._from_row(r) for r in s.scalars(q).all()]


_CLAIMED = frozenset({Status.EXECUTING.value, Status.EXECUTED.value, Status.FAILED.value})
