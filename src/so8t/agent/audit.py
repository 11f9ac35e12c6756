"""Tamper-evident, append-only audit log for the agent (JSONL, hash-chained).

Split by seam: the event names are ``so8t.agent.audit_events`` (one list, used everywhere); what a
record is, how it is hashed and keyed, and the store API are ``so8t.agent.audit_chain``;
redaction is ``so8t.agent.redaction``; verification is ``so8t.agent.audit_verify``. This module is
the JSONL file store (``AuditLog``, ``tail``) and re-exports all of those names, so
``from so8t.agent.audit import ...`` keeps working.

Every REFUSE, ESCALATE, approval decision, approval expiry and gate error is written here (ALLOW
optionally); the event names are ``so8t.agent.audit_events``. This module is the JSONL file
store; ``so8t.agent.audit_db`` keeps the same records and chain in a database (SQLite or
PostgreSQL), for several server replicas that share one chain (server config ``audit_url``).

Format: one UTF-8 JSON object per line (Japanese stays readable, ``ensure_ascii=False``)::

    {"seq": 0, "ts": "2026-01-01T00:00:00.000000Z", "event": "gate.refuse", "data": {...},
     "prev": "000...0", "hash": "<hex>"}

``hash`` is SHA-256 over the canonical JSON (sorted keys, no spaces, ``ensure_ascii=False``) of the
record without ``hash``; ``prev`` is the previous record's ``hash`` (64 zeros for the first). With a
key (``AuditLog(path, key=...)``; the CLI reads it from the environment variable ``SO8T_AUDIT_KEY``,
see ``key_from_env``) the hash is HMAC-SHA256 instead, and every record says so with
``"mac": "hmac-sha256"`` (covered by the hash).

Guaranteed:

* Append-only: earlier lines are never rewritten. Each record is written with a single ``os.write``
  on an ``O_APPEND`` descriptor and ``fsync``-ed before ``append`` returns, under a ``FileLock`` on
  ``<path>.lock``; the last seq / hash are re-read from the file under the lock, so threads and
  processes can share one log.
* Crash safety: a process killed mid-write can leave only a partial last line. The next append
  moves those bytes to ``<path>.torn-<UTC timestamp>`` (kept as evidence, fsync-ed first), cuts them
  off, and logs an ``audit.recovered`` record with their length and SHA-256. A record whose
  ``append`` returned is never lost.
* A write that fails leaves nothing: ``append`` / ``append_batch`` either write every record of the
  call or raise ``AuditError`` with the file cut back to where it was (a full disk, ENOSPC, a short
  write, EIO). Callers write the record of a state change first and commit the change only when
  that returned (write-ahead; see ``so8t.agent.approvals``). A side file that cannot be written in
  full is removed again. ``failure`` says why the last write failed; ``health()`` probes the
  filesystem (for a readiness check) and stays failing until a write succeeds again
  (``audit.restored``).
* Every torn fragment is accounted for: each side file is named by its own ``audit.recovered``
  record. One left without a record (a crash or failure between setting it aside and recording it)
  is recorded by ``recover()`` (the server runs it at start-up and in its worker), and until then
  ``verify`` fails on it (``unrecorded_fragment``). ``verify`` lists every fragment in its report
  (``fragments``: kept, changed, missing or unrecorded); a side file whose bytes no longer match its
  record is a problem (``fragment_changed``).
* ``verify`` detects an edited, deleted, inserted or reordered record, a malformed line and a torn
  last line, and reports the line number and kind of each (see ``verify`` for the rules).
* A keyed log cannot pass as an unkeyed one: ``verify`` without the key fails on any record marked
  ``"mac"`` ("this log is HMAC-keyed; set SO8T_AUDIT_KEY to verify it"), and with the key reports a
  record whose hash is the plain SHA-256 as ``downgraded`` (re-chained without the key). A writer
  without the key refuses to extend a keyed log, and a writer with the key refuses to chain to a
  record that does not verify under it, so keyed and unkeyed records are never mixed.
* Secrets and personal data are redacted before anything is written (``Redactor``, see
  ``so8t.agent.redaction`` for what it catches; configurable); ids and hashes are never changed.

Not guaranteed:

* The plain chain only detects tampering by someone who does NOT recompute it. Whoever can write the
  file can also edit a record and recompute every later hash, or drop records from the end (the
  chain cannot tell a shorter log from a complete one); plain ``verify`` then passes. Two defences:
  (1) an HMAC key kept away from whoever can edit the file, so forged hashes cannot be recomputed;
  (2) ``verify`` prints the head hash (the last record's hash): copy it somewhere else (a ticket,
  another machine, a commit); every later version of the log must still contain a record with that
  hash, and if it does not, history before it was rewritten or cut off.
* The keyed marker is in the file, so whoever rewrites the WHOLE file can drop it and re-chain with
  plain SHA-256: that log verifies without the key. Verify a keyed log where ``SO8T_AUDIT_KEY`` is set
  (every re-chained record is then ``downgraded``) and keep the head hash elsewhere.
* Redaction is pattern-based: it catches the shapes listed in ``so8t.agent.redaction`` and values
  under secret-looking dict keys, not every secret. Dict keys and JSON numbers are not redacted.
* A side file deleted after its record was written is reported as ``missing``, not as a failure: the
  record keeps its length and SHA-256. Records are only as durable as the filesystem's fsync.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from so8t.agent.audit_chain import (
    FIELDS,
    GENESIS,
    HMAC_SHA256,
    KEY_ENV,
    KEYED_LOG,
    MAC_FIELD,
    AuditError,
    AuditStore,
    canonical_bytes,
    chain_point,
    check_fields,
    check_key,
    check_mode,
    encode_line,
    key_from_env,
    new_record,
    parse_line,
    record_hash,
)
from so8t.agent.audit_events import (
    APPROVAL_APPROVED,
    APPROVAL_DENIED,
    APPROVAL_EXPIRED,
    AUDIT_RECOVERED,
    AUDIT_RESTORED,
    GATE_ALLOW,
    GATE_ERROR,
    GATE_ESCALATE,
    GATE_REFUSE,
)
from so8t.agent.audit_verify import (
    TORN_INFIX,
    Fragment,
    Problem,
    VerifyReport,
    file_digest,
    format_report,
    recorded_side_files,
    require_file,
    side_files,
    verify,
    verify_lines,
)
from so8t.agent.redaction import DEFAULT_ID_KEYS, DEFAULT_PATTERNS, DEFAULT_SECRET_KEYS, Redactor

# The names these helpers had when they lived here (so8t.agent.audit_db used them).
_parse, _chain_point, _check_key, _encode_line = parse_line, chain_point, check_key, encode_line

LOCK_TIMEOUT_S = 60.0
PROBE_BYTES = 4096  # health() writes this much next to the log

_CHUNK = 64 * 1024  # reading from the end: one pread per chunk


# --- reading from the end -----------------------------------------------------------------------


def _read_at(fd: int, size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # Windows; O_APPEND writes still go to the end
    return os.read(fd, size)


def _pread_back_to_newline(fd: int, end: int) -> int:
    """Offset just after the last b"\\n" before ``end`` (0 if none): where a torn tail starts."""
    pos = end
    while pos > 0:
        start = max(0, pos - _CHUNK)
        i = _read_at(fd, pos - start, start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def _lines_reversed(fd: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line without b"\\n") of each complete line ending at or before ``end``, newest first.

    ``end`` must be 0 or just after a b"\\n". Reads 64 KiB chunks, so a tail of a huge log is cheap."""
    buf, pos = b"", end  # buf holds file[pos:end'] and always ends with b"\n"
    while end > 0:
        j = buf.rfind(b"\n", 0, len(buf) - 1) if buf else -1
        if j >= 0:
            yield pos + j + 1, buf[j + 1 : -1]
            buf = buf[: j + 1]
        elif pos == 0:
            if buf:
                yield 0, buf[:-1]
            return
        else:
            start = max(0, pos - _CHUNK)
            buf = _read_at(fd, pos - start, start) + buf
            pos = start


def tail(path: str | os.PathLike[str], n: int = 20) -> list[dict]:
    """The last ``n`` complete records, oldest first; a torn last line and malformed lines are skipped."""
    path = Path(path)
    if n <= 0:
        require_file(path)
        return []
    fd = _open_read(path)
    try:
        size = os.fstat(fd).st_size
        out: list[dict] = []
        for _, line in _lines_reversed(fd, _pread_back_to_newline(fd, size)):
            rec = parse_line(line)
            if rec is not None:
                out.append(rec)
                if len(out) == n:
                    break
        return out[::-1]
    finally:
        os.close(fd)


def _open_read(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "audit log not found", str(path)) from None


class AuditLog(AuditStore):
    """Append-only, hash-chained JSONL audit log at ``path``.

    ``redact`` defaults to ``Redactor()`` (the default patterns); pass ``Redactor({}, secret_keys=None)``
    to store data as given. ``key`` switches the chain to HMAC-SHA256 (verify with the same key).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, redact: Redactor | None = None, key: bytes | None = None
    ) -> None:
        super().__init__(redact=redact, key=key)
        self.path = Path(path)
        self._lock = FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S)
        # filelock's per-thread state already excludes threads; this makes it independent of that.
        self._tlock = threading.Lock()
        self._recorded: set[str] = set()  # side files known to have an audit.recovered record

    def recover(self) -> list[dict]:
        """Account for every torn fragment; returns the ``audit.recovered`` records it wrote.

        A torn last line is set aside (as every append does), and every side file
        ``<log>.torn-*`` that no ``audit.recovered`` record names gets a record of its own (one per
        fragment: its name, length and SHA-256). Such a side file is left by a process that died, or
        a write that failed, between setting a tail aside and recording it. The server runs this at
        start-up and in its worker; ``verify`` reports an unrecorded side file until it has run."""
        if not self.path.exists() and not side_files(self.path):
            return []  # nothing to recover, and no empty log is created
        return self._append_many([], orphans=True)

    def _probe(self) -> str | None:
        """Writes, fsyncs and removes a ``PROBE_BYTES`` probe file next to the log, so a full or
        read-only filesystem shows up before a record is lost."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.probe-")
            try:
                written = os.write(fd, b"\0" * PROBE_BYTES)
                if written != PROBE_BYTES:
                    raise OSError(errno.ENOSPC, f"short write ({written}/{PROBE_BYTES} bytes)")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(tmp)
        except OSError as exc:
            return f"the audit store {self.path.parent} cannot take records: {exc.strerror or exc}"
        return None

    def verify(self) -> VerifyReport:
        return verify(self.path, key=self._key)

    def tail(self, n: int = 20) -> list[dict]:
        return tail(self.path, n)

    def _append_many(self, items: list[tuple[str, dict]], *, orphans: bool = False) -> list[dict]:
        """Write ``items`` (already redacted) under the locks; every OSError becomes AuditError."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._tlock, self._lock:
                created = not self.path.exists()
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    if created:
                        _fsync_dir(self.path.parent)  # so the new file itself survives a crash
                    out = self._write(fd, items, orphans)
                finally:
                    os.close(fd)
        except AuditError as exc:
            self._failure = str(exc)
            raise
        except OSError as exc:  # ENOSPC, EIO, EROFS, a lock timeout, ...
            err = AuditError(f"the audit log {self.path} could not be written: {exc.strerror or exc}")
            self._failure = str(err)
            raise err from exc
        if out:  # a write succeeded: the store takes records again
            self._failure = None
        return out

    def _write(self, fd: int, items: list[tuple[str, dict]], orphans: bool) -> list[dict]:
        size = os.fstat(fd).st_size
        torn_at = _pread_back_to_newline(fd, size)
        seq, prev = self._chain_to(fd, torn_at)  # before the torn tail is touched
        found: list[tuple[str, dict]] = []
        if torn_at < size:
            found.append((AUDIT_RECOVERED, self._set_aside(fd, torn_at, size)))
        if orphans:
            named = {d["side_file"] for _, d in found}
            found += [(AUDIT_RECOVERED, d) for d in self._unrecorded_side_files() if d["side_file"] not in named]
        start, out = torn_at, []
        try:
            for event, data in found + items:
                seq += 1
                rec = new_record(seq, event, data, prev, self._key)
                prev = rec["hash"]
                line = encode_line(rec)
                written = os.write(fd, line)  # one write: a crash leaves at most a torn tail
                if written != len(line):
                    raise AuditError(
                        f"short write to {self.path} ({written}/{len(line)} bytes): the filesystem is probably full"
                    )
                os.fsync(fd)
                out.append(rec)
        except BaseException:
            _cut_back(fd, start)  # all or nothing: no record of a failed batch stays behind
            raise
        self._recorded.update(d["side_file"] for _, d in found)
        return out

    def _unrecorded_side_files(self) -> list[dict]:
        """A description of each side file of this log that no ``audit.recovered`` record names.
        The log is read only when there is a side file this object has not seen recorded."""
        unseen = [n for n in side_files(self.path) if n not in self._recorded]
        if not unseen:
            return []
        self._recorded.update(recorded_side_files(self.path))
        out = []
        for name in unseen:
            if name not in self._recorded:
                n, digest = file_digest(self.path.parent / name)
                out.append(
                    {
                        "torn_bytes": n,
                        "sha256": digest,
                        "side_file": name,
                        "found": "a side file that no audit.recovered record named (a write that failed "
                        "or a process that died after setting it aside)",
                    }
                )
        return out

    def _set_aside(self, fd: int, start: int, size: int) -> dict:
        """Move the torn tail [start, size) to a side file, cut it off, describe it."""
        torn = _read_at(fd, size - start, start)
        side = _create_side_file(self.path, torn)
        os.ftruncate(fd, start)
        os.fsync(fd)
        return {
            "torn_bytes": len(torn),
            "sha256": hashlib.sha256(torn).hexdigest(),
            "offset": start,
            "side_file": side.name,
        }

    def _chain_to(self, fd: int, end: int) -> tuple[int, str]:
        """Seq and hash of the last record in the file (not from memory: another process may have
        appended), once it is known to be written the way this log writes (see ``check_mode``).
        Garbage lines at the end are stepped over; verify reports them."""
        for _, line in _lines_reversed(fd, end):
            rec = parse_line(line)
            point = chain_point(rec)
            if rec is not None and point is not None:
                check_mode(rec, self._key, str(self.path))
                return point
        return -1, GENESIS


def _create_side_file(path: Path, payload: bytes) -> Path:
    """A new ``<log>.torn-<UTC time>`` holding ``payload``, fsync-ed; if it cannot be written in
    full (a full disk), it is removed again and the error raised: no partial fragment is left."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    for i in range(1000):
        side = path.with_name(f"{path.name}{TORN_INFIX}{stamp}" + (f"-{i}" if i else ""))
        try:
            fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        try:
            try:
                written = os.write(fd, payload)
                if written != len(payload):
                    raise OSError(errno.ENOSPC, f"short write to {side.name} ({written}/{len(payload)} bytes)")
                os.fsync(fd)  # the evidence is durable before the bytes leave the log
            finally:
                os.close(fd)
        except BaseException:
            side.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return side
    raise AuditError(f"could not create a side file for the torn tail of {path}")


def _cut_back(fd: int, size: int) -> None:
    """Truncate to ``size`` after a failed write (needs no free space); if even that fails, the
    partial line stays as a torn tail and the next append sets it aside."""
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError:
        pass


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. Windows); the data itself is fsync-ed
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- display ------------------------------------------------------------------------------------


def format_record(rec: Mapping[str, Any], width: int = 160) -> str:
    """One line: seq, ts, event and the data as compact JSON cut to ``width`` characters."""
    summary = json.dumps(rec.get("data", {}), ensure_ascii=False, separators=(",", ":"), default=str)
    if len(summary) > width:
        summary = summary[: width - 1] + "…"
    seq = rec.get("seq")
    return f"{'?' if seq is None else seq!s:>6} {rec.get('ts', '?')} {rec.get('event', '?')} {summary}"


__all__ = [
    "APPROVAL_APPROVED",
    "APPROVAL_DENIED",
    "APPROVAL_EXPIRED",
    "AUDIT_RECOVERED",
    "AUDIT_RESTORED",
    "DEFAULT_ID_KEYS",
    "DEFAULT_PATTERNS",
    "DEFAULT_SECRET_KEYS",
    "FIELDS",
    "GATE_ALLOW",
    "GATE_ERROR",
    "GATE_ESCALATE",
    "GATE_REFUSE",
    "GENESIS",
    "HMAC_SHA256",
    "KEYED_LOG",
    "KEY_ENV",
    "MAC_FIELD",
    "TORN_INFIX",
    "AuditError",
    "AuditLog",
    "AuditStore",
    "Fragment",
    "Problem",
    "Redactor",
    "VerifyReport",
    "canonical_bytes",
    "check_fields",
    "check_mode",
    "format_record",
    "format_report",
    "key_from_env",
    "new_record",
    "record_hash",
    "tail",
    "verify",
    "verify_lines",
]
