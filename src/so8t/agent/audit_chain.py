"""The hash chain every audit store shares: what a record is, how it is hashed and keyed, and the
write API (``AuditStore``) that the JSONL file (``so8t.agent.audit.AuditLog``) and the database
(``so8t.agent.audit_db.DatabaseAuditLog``) implement.

Guarantees:

* A record is ``{"seq", "ts", "event", "data", "prev", "hash"}`` (``FIELDS``), plus
  ``"mac": "hmac-sha256"`` in a keyed log; ``check_fields`` says why anything else is not one.
* ``hash`` is SHA-256 (HMAC-SHA256 under a key) of the canonical JSON of the record without
  ``hash`` (``canonical_bytes``: sorted keys, no spaces, ``ensure_ascii=False``); ``prev`` is the
  previous record's hash, ``GENESIS`` (64 zeros) for the first.
* Keyed and unkeyed records are never mixed (``check_mode``): without the key a keyed log is not
  extended, and with the key only a record whose HMAC verifies under it is chained to.
* What ``AuditStore.append`` / ``append_batch`` store is plain JSON, redacted first
  (``so8t.agent.redaction.clean_records``); a batch is written whole or not at all (``AuditError``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from so8t.agent.audit_events import AUDIT_RESTORED
from so8t.agent.redaction import Redactor, clean_records

if TYPE_CHECKING:
    from so8t.agent.audit_verify import VerifyReport

__all__ = [
    "FIELDS",
    "GENESIS",
    "HMAC_SHA256",
    "KEYED_LOG",
    "KEY_ENV",
    "MAC_FIELD",
    "AuditError",
    "AuditStore",
    "canonical_bytes",
    "chain_point",
    "check_fields",
    "check_key",
    "check_mode",
    "encode_line",
    "key_from_env",
    "new_record",
    "parse_line",
    "record_hash",
]

GENESIS = "0" * 64  # "prev" of the first record
KEY_ENV = "SO8T_AUDIT_KEY"
FIELDS = ("seq", "ts", "event", "data", "prev", "hash")
MAC_FIELD, HMAC_SHA256 = "mac", "hmac-sha256"  # every record of a keyed log says so
KEYED_LOG = f"this log is HMAC-keyed; set {KEY_ENV} to verify it"

_HEX64 = re.compile(r"[0-9a-f]{64}")


class AuditError(RuntimeError):
    """The audit log could not be written."""


def key_from_env(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The HMAC key from ``SO8T_AUDIT_KEY`` (UTF-8), or None when unset or empty."""
    value = (os.environ if environ is None else environ).get(KEY_ENV, "")
    return value.encode("utf-8") if value else None


# --- records ------------------------------------------------------------------------------------


def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """What the hash covers: the record without "hash", as canonical JSON."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def record_hash(record: Mapping[str, Any], key: bytes | None = None) -> str:
    data = canonical_bytes(record)
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def new_record(seq: int, event: str, data: dict, prev: str, key: bytes | None) -> dict:
    """The record that follows ``prev`` at ``seq``: timestamped, marked when keyed, hashed."""
    rec = {"seq": seq, "ts": utc_now(), "event": event, "data": data, "prev": prev}
    if key is not None:
        rec[MAC_FIELD] = HMAC_SHA256
    rec["hash"] = record_hash(rec, key)
    return rec


def check_mode(last: dict, key: bytes | None, where: str) -> None:
    """Never mix keyed and unkeyed records: without the key, a keyed log is not extended (that
    would downgrade it); with the key, only a record with a valid HMAC under it is chained to
    (a plain or re-chained log, or the wrong key, stops the write). ``where`` names the log."""
    if key is None:
        if MAC_FIELD in last:
            raise AuditError(f"{where}: this log is HMAC-keyed; set {KEY_ENV} to append to it")
        return
    if not hmac.compare_digest(record_hash(last, key), last["hash"]):
        plain = hmac.compare_digest(record_hash(last), last["hash"])
        raise AuditError(
            f"{where}: the last record (seq {last['seq']}) "
            + (
                "has a plain SHA-256 hash: the log is unkeyed or was re-chained without the key; start a "
                "new log to use a key"
                if plain
                else "does not verify under this HMAC key: wrong key, or the record was altered"
            )
            + "; run `so8t audit verify`"
        )


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode("utf-8")


def check_key(key: bytes | None) -> bytes | None:
    if key is None:
        return None
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"audit key must be bytes, got {type(key).__name__}")
    if not key:
        raise ValueError("audit key must not be empty (use None for an unkeyed log)")
    return bytes(key)


def check_fields(rec: Any) -> str | None:
    """Why ``rec`` is not a well-formed record, or None."""
    if not isinstance(rec, dict):
        return f"not a JSON object ({type(rec).__name__})"
    for name in FIELDS:
        if name not in rec:
            return f"missing field {name!r}"
    seq = rec["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return "field 'seq' is not a non-negative integer"
    for name in ("ts", "event"):
        if not isinstance(rec[name], str):
            return f"field {name!r} is not a string"
    if not isinstance(rec["data"], dict):
        return "field 'data' is not an object"
    for name in ("prev", "hash"):
        if not isinstance(rec[name], str) or not _HEX64.fullmatch(rec[name]):
            return f"field {name!r} is not 64 lowercase hex digits"
    if rec.get(MAC_FIELD, HMAC_SHA256) != HMAC_SHA256:
        return f"field {MAC_FIELD!r} is not {HMAC_SHA256!r}"
    return None


def parse_line(line: bytes) -> dict | None:
    try:
        rec = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def chain_point(rec: dict | None) -> tuple[int, str] | None:
    """(seq, hash) to chain a new record to, if ``rec`` is a well-formed record."""
    if rec is None or check_fields(rec) is not None:
        return None
    return rec["seq"], rec["hash"]


# --- the write API ------------------------------------------------------------------------------


class AuditStore:
    """What every audit store offers: this JSONL file (AuditLog) or a database
    (so8t.agent.audit_db.DatabaseAuditLog). Records, hashes, keys and redaction are the same."""

    def __init__(self, *, redact: Redactor | None = None, key: bytes | None = None) -> None:
        self.redactor = redact if redact is not None else Redactor()
        self._key = check_key(key)
        self._failure: str | None = None

    @property
    def failure(self) -> str | None:
        """Why the last write failed, or None when it succeeded (or nothing was written yet)."""
        return self._failure

    def append(self, event: str, data: Mapping[str, Any] | None = None) -> dict:
        """Redact ``data``, chain, write and fsync one record; returns the record as stored.

        Raises AuditError (nothing of the record is left in the log) when it cannot be written."""
        return self.append_batch([(event, data)])[-1]

    def append_batch(self, items: list[tuple[str, Mapping[str, Any] | None]]) -> list[dict]:
        """Write several records as one unit: all of them, or none and AuditError.

        A write that fails part-way (ENOSPC, EIO, a short write) cuts the file back to where it was
        before the batch, so a caller that writes a record before it commits a change (write-ahead)
        knows the change has no record exactly when this raises."""
        return self._append_many(clean_records(items, self.redactor))

    def preview(self, text: str, limit: int) -> str:
        """``text`` as this log's redactor would store it, cut to ``limit`` characters (redacted
        first, so a secret straddling the limit is still caught)."""
        return self.redactor.preview(text, limit)

    def _append_many(self, items: list[tuple[str, dict]]) -> list[dict]:
        raise NotImplementedError

    def recover(self) -> list[dict]:
        raise NotImplementedError

    def health(self) -> str | None:
        """None when the store can take a record now; otherwise why not (for readiness checks).

        The store's own probe runs first. After a failed write the store counts as failing until a
        write succeeds: when the probe passes, this writes an ``audit.restored`` record (naming the
        failure), which is that test."""
        problem = self._probe()
        if problem is not None:
            return problem
        if self._failure is not None:
            try:
                self.append(AUDIT_RESTORED, {"after": self._failure})
            except AuditError as exc:
                return str(exc)
        return None

    def _probe(self) -> str | None:
        """Why the store cannot take a record now, or None; writes no record."""
        raise NotImplementedError

    def verify(self) -> VerifyReport:
        raise NotImplementedError

    def tail(self, n: int = 20) -> list[dict]:
        raise NotImplementedError
