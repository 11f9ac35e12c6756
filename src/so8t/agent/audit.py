"""Tamper-evident, append-only audit log for the agent (JSONL, hash-chained).

Every REFUSE, ESCALATE, approval decision, approval expiry and gate error is written here (ALLOW
optionally); see the ``GATE_*`` / ``APPROVAL_*`` event names below. This module is the JSONL file
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
import hmac
import json
import math
import os
import re
import tempfile
import threading
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from so8t.agent.redaction import DEFAULT_ID_KEYS, DEFAULT_PATTERNS, DEFAULT_SECRET_KEYS, Redactor

GENESIS = "0" * 64  # "prev" of the first record
KEY_ENV = "SO8T_AUDIT_KEY"
LOCK_TIMEOUT_S = 60.0
FIELDS = ("seq", "ts", "event", "data", "prev", "hash")
MAC_FIELD, HMAC_SHA256 = "mac", "hmac-sha256"  # every record of a keyed log says so
KEYED_LOG = f"this log is HMAC-keyed; set {KEY_ENV} to verify it"

# Event names used by the agent (any non-empty string is accepted).
GATE_ALLOW = "gate.allow"
GATE_ESCALATE = "gate.escalate"
GATE_REFUSE = "gate.refuse"
GATE_ERROR = "gate.error"
APPROVAL_APPROVED = "approval.approved"
APPROVAL_DENIED = "approval.denied"
APPROVAL_EXPIRED = "approval.expired"
AUDIT_RECOVERED = "audit.recovered"
AUDIT_RESTORED = "audit.restored"  # the store takes records again after a failed write
TORN_INFIX = ".torn-"  # side files are <log name>.torn-<UTC time>
PROBE_BYTES = 4096  # health() writes this much next to the log

_CHUNK = 64 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


class AuditError(RuntimeError):
    """The audit log could not be written."""


def key_from_env(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The HMAC key from ``SO8T_AUDIT_KEY`` (UTF-8), or None when unset or empty."""
    value = (os.environ if environ is None else environ).get(KEY_ENV, "")
    return value.encode("utf-8") if value else None


# --- records ------------------------------------------------------------------------------------


def _json_safe(obj: Any) -> Any:
    """Plain JSON types only, so a stored record re-hashes identically after json.loads.

    Non-finite floats become strings (NaN is not JSON), unknown objects their str(), lone
    surrogates "?" (they cannot be encoded as UTF-8)."""
    if isinstance(obj, str):
        return obj.encode("utf-8", "replace").decode("utf-8")
    if obj is None or isinstance(obj, (bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, Mapping):
        return {_json_safe(str(k)): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in obj]
    return _json_safe(str(obj))


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
    rec = {"seq": seq, "ts": _utc_now(), "event": event, "data": data, "prev": prev}
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


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _encode_line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode("utf-8")


def _check_key(key: bytes | None) -> bytes | None:
    if key is None:
        return None
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"audit key must be bytes, got {type(key).__name__}")
    if not key:
        raise ValueError("audit key must not be empty (use None for an unkeyed log)")
    return bytes(key)


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


def _parse(line: bytes) -> dict | None:
    try:
        rec = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _chain_point(rec: dict | None) -> tuple[int, str] | None:
    """(seq, hash) to chain a new record to, if ``rec`` is a well-formed record."""
    if rec is None or _check_fields(rec) is not None:
        return None
    return rec["seq"], rec["hash"]


def tail(path: str | os.PathLike[str], n: int = 20) -> list[dict]:
    """The last ``n`` complete records, oldest first; a torn last line and malformed lines are skipped."""
    path = Path(path)
    if n <= 0:
        _require(path)
        return []
    fd = _open_read(path)
    try:
        size = os.fstat(fd).st_size
        out: list[dict] = []
        for _, line in _lines_reversed(fd, _pread_back_to_newline(fd, size)):
            rec = _parse(line)
            if rec is not None:
                out.append(rec)
                if len(out) == n:
                    break
        return out[::-1]
    finally:
        os.close(fd)


def _require(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "audit log not found", str(path))


def _open_read(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "audit log not found", str(path)) from None


# --- writing ------------------------------------------------------------------------------------


class AuditStore:
    """What every audit store offers: this JSONL file (AuditLog) or a database
    (so8t.agent.audit_db.DatabaseAuditLog). Records, hashes, keys and redaction are the same."""

    def __init__(self, *, redact: Redactor | None = None, key: bytes | None = None) -> None:
        self.redactor = redact if redact is not None else Redactor()
        self._key = _check_key(key)
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
        clean = []
        for event, data in items:
            if not isinstance(event, str) or not event.strip():
                raise ValueError("audit event must be a non-empty string")
            if data is None:
                data = {}
            if not isinstance(data, Mapping):
                raise TypeError(f"audit data must be a dict, got {type(data).__name__}")
            clean.append((_json_safe(event), self.redactor.redact(_json_safe(data))))
        if not clean:
            raise ValueError("append_batch needs at least one record")
        return self._append_many(clean)

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
        if not self.path.exists() and not _side_files(self.path):
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
                line = _encode_line(rec)
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
        unseen = [n for n in _side_files(self.path) if n not in self._recorded]
        if not unseen:
            return []
        self._recorded.update(_recorded_side_files(self.path))
        out = []
        for name in unseen:
            if name not in self._recorded:
                n, digest = _file_digest(self.path.parent / name)
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
            rec = _parse(line)
            point = _chain_point(rec)
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


def _side_files(path: Path) -> list[str]:
    """Names of the side files of the log at ``path`` (``<name>.torn-*``), sorted."""
    prefix = path.name + TORN_INFIX
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(prefix) and (path.parent / n).is_file())


def _recorded_side_files(path: Path) -> set[str]:
    """Side file names given by the log's ``audit.recovered`` records."""
    return {name for _, _, name, _ in _recovered_records(path)}


def _recovered_records(path: Path) -> list[tuple[int, int | None, str, dict]]:
    """(line, seq, side file, data) of each ``audit.recovered`` record naming a side file."""
    out = []
    marker = AUDIT_RECOVERED.encode()
    with open(path, "rb") as f:
        for no, raw in enumerate(f, start=1):
            if marker not in raw:
                continue
            rec = _parse(raw.rstrip(b"\n"))
            if rec is None or rec.get("event") != AUDIT_RECOVERED or not isinstance(rec.get("data"), dict):
                continue
            name = rec["data"].get("side_file")
            if isinstance(name, str):
                seq = rec.get("seq") if isinstance(rec.get("seq"), int) else None
                out.append((no, seq, name, rec["data"]))
    return out


def _file_digest(path: Path) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


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


# --- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based line in the file
    seq: int | None
    kind: str  # edited | deleted | inserted | reordered | malformed | torn | downgraded | key_required
    detail: str


@dataclass(frozen=True)
class Fragment:
    """A torn tail that was set aside into a side file, or a side file found next to the log."""

    side_file: str  # the name, in the log's folder
    line: int | None  # the audit.recovered record that names it; None: no record does
    seq: int | None
    torn_bytes: int | None  # as the record gives it (the file's size when unrecorded)
    sha256: str | None
    state: str  # kept | changed | missing | unrecorded


@dataclass
class VerifyReport:
    ok: bool
    records: int  # well-formed records in the file
    head_hash: str  # hash of the last well-formed record (GENESIS for an empty log)
    problems: list[Problem] = field(default_factory=list)
    fragments: list[Fragment] = field(default_factory=list)  # every torn fragment, recorded or not
    unit: str = "line"  # what Problem.line counts: file lines, or (a database) rows in seq order


@dataclass(frozen=True)
class _Entry:
    line: int
    seq: int
    prev: str
    hash: str
    intact: bool  # stored hash matches the content
    keyed: bool = False  # carries "mac": "hmac-sha256"
    plain: bool = False  # checked under a key, fails it, but is the plain SHA-256: re-chained without it


_ANCHOR0 = _Entry(line=0, seq=-1, prev="", hash=GENESIS, intact=True)


def _check_fields(rec: Any) -> str | None:
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


def _entry(line: int, rec: dict, key: bytes | None) -> _Entry:
    intact = hmac.compare_digest(record_hash(rec, key), rec["hash"])
    plain = key is not None and not intact and hmac.compare_digest(record_hash(rec), rec["hash"])
    return _Entry(line, rec["seq"], rec["prev"], rec["hash"], intact, MAC_FIELD in rec, plain)


def _read_entries(lines: Iterable[bytes], key: bytes | None) -> tuple[list[_Entry], list[Problem], str]:
    """Parse every line; well-formed records become entries, the rest problems."""
    entries: list[_Entry] = []
    problems: list[Problem] = []
    head = GENESIS
    for no, raw in enumerate(lines, start=1):
        if not raw.endswith(b"\n"):
            problems.append(
                Problem(
                    no,
                    None,
                    "torn",
                    f"last line has no newline ({len(raw)} bytes): "
                    "a write was interrupted; the next append sets it aside",
                )
            )
            break
        try:
            rec = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            problems.append(Problem(no, None, "malformed", "not valid UTF-8"))
            continue
        except ValueError as e:  # JSONDecodeError, or a plain ValueError (an integer of over 4300 digits)
            msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
            problems.append(Problem(no, None, "malformed", "empty line" if not raw.strip() else f"not JSON ({msg})"))
            continue
        why = _check_fields(rec)
        if why is not None:
            seq = rec.get("seq") if isinstance(rec, dict) and isinstance(rec.get("seq"), int) else None
            problems.append(Problem(no, seq, "malformed", why))
            continue
        entries.append(_entry(no, rec, key))
        head = rec["hash"]
    return entries, problems, head


def verify(path: str | os.PathLike[str], key: bytes | None = None) -> VerifyReport:
    """Check every record's hash and the chain; say which line is wrong and how.

    Walks the records in file order against an anchor (the last record accepted into the chain),
    with one record of look-ahead and the set of hashes that some record names as ``prev``:

    * edited: the stored hash does not match the content; or the content and hash of a record were
      recomputed so the next record no longer chains to it (reported on the re-hashed record).
    * deleted: seq jumps past the expected one and prev does not chain: records are missing before
      this line (unless the missing seqs turn up later in the file: then they were moved).
    * inserted: a record that does not belong: the next record chains to the record before it and
      nothing chains to this one, or it repeats the seq of a record already in the chain, or it
      does not chain to the previous record while keeping the expected seq.
    * reordered: two adjacent records swapped (reported on the first of the pair), or a record
      whose seq appears after later ones and was never seen before (it was moved).
    * malformed: not UTF-8 / JSON / an object, or a field is missing or of the wrong type.
    * torn: the last line has no newline (an interrupted write).
    * downgraded (with a key): the hash is the plain SHA-256 of the record, not its HMAC: the record
      was written or re-chained without the key.
    * key_required (without a key): the log is keyed (a record carries ``"mac": "hmac-sha256"``);
      its hashes cannot be checked, so it fails, on the first keyed line: "this log is HMAC-keyed;
      set SO8T_AUDIT_KEY to verify it".

    Lines are 1-based file lines. Limits: records missing from the END, or a re-hashed last record,
    cannot be seen in the file alone (compare ``head_hash`` with a copy kept elsewhere); when the
    second-to-last record is re-hashed, the last one is reported as inserted (either could be the
    forgery); a record moved up by several places is reported through the records it displaced.
    Raises FileNotFoundError for a missing file; an empty file is ok with 0 records.
    """
    path = Path(path)
    _require(path)
    with open(path, "rb") as f:
        report = verify_lines(f, key)
    fragments = _fragments(path)
    problems = sorted(report.problems + _fragment_problems(fragments), key=lambda p: (p.line, p.kind))
    return replace(report, ok=not problems, problems=problems, fragments=fragments)


def verify_lines(lines: Iterable[bytes], key: bytes | None = None, unit: str = "line") -> VerifyReport:
    """``verify``'s checks on records given as lines (each ending in b"\\n", in the order they are
    stored), without the side files: what a database store verifies (``unit`` "row")."""
    key = _check_key(key)
    entries, problems, head = _read_entries(lines, key)
    keyed = next((e for e in entries if e.keyed), None)
    if key is None and keyed is not None:  # unkeyed hashes must not pass for a keyed log
        problems.append(Problem(keyed.line, keyed.seq, "key_required", KEYED_LOG))
    else:
        malformed = sorted(p.line for p in problems if p.kind == "malformed")
        problems += _Classifier(entries, malformed, _edit_hint(entries, key is not None)).run()
    problems.sort(key=lambda p: (p.line, p.kind))
    return VerifyReport(ok=not problems, records=len(entries), head_hash=head, problems=problems, unit=unit)


def _fragments(path: Path) -> list[Fragment]:
    """Every side file an ``audit.recovered`` record names (kept as recorded, changed, or missing),
    then every side file of the log that no record names (unrecorded)."""
    out, named = [], set()
    for line, seq, name, data in _recovered_records(path):
        named.add(name)
        size, digest = data.get("torn_bytes"), data.get("sha256")
        side = path.parent / name
        if "/" in name or "\\" in name or not name.startswith(path.name + TORN_INFIX):
            state = "missing"  # not a side file of this log: never read outside its folder
        elif not side.is_file():
            state = "missing"
        else:
            n, actual = _file_digest(side)
            state = "kept" if (n, actual) == (size, digest) else "changed"
        out.append(
            Fragment(
                name,
                line,
                seq,
                size if isinstance(size, int) else None,
                digest if isinstance(digest, str) else None,
                state,
            )
        )
    for name in _side_files(path):
        if name not in named:
            n, digest = _file_digest(path.parent / name)
            out.append(Fragment(name, None, None, n, digest, "unrecorded"))
    return out


def _fragment_problems(fragments: list[Fragment]) -> list[Problem]:
    out = []
    for f in fragments:
        if f.state == "unrecorded":
            out.append(
                Problem(
                    0,
                    None,
                    "unrecorded_fragment",
                    f"{f.side_file} ({f.torn_bytes} bytes) was set aside "
                    "from the log but no audit.recovered record names it; the server records it at "
                    "start-up (AuditLog.recover)",
                )
            )
        elif f.state == "changed":
            out.append(
                Problem(
                    f.line or 0,
                    f.seq,
                    "fragment_changed",
                    f"{f.side_file} no longer has the length and SHA-256 this audit.recovered record gives",
                )
            )
    return out


def _edit_hint(entries: list[_Entry], key_given: bool) -> str:
    if entries and not any(e.intact for e in entries):  # nothing verifies: most likely the key
        return (
            " under this HMAC key (every record fails: wrong key?)"
            if key_given
            else " (every record fails: if the log was written with SO8T_AUDIT_KEY, verify with that key)"
        )
    return " under this HMAC key" if key_given else ""


class _Classifier:
    """The walk described in ``verify``: file order against an anchor, one record of look-ahead."""

    def __init__(self, entries: list[_Entry], malformed_lines: list[int], edit_hint: str) -> None:
        self.entries, self.malformed, self.edit_hint = entries, malformed_lines, edit_hint
        self.referenced = Counter(e.prev for e in entries)  # hashes that some record chains to
        self.first_line: dict[int, int] = {}
        self.last_line: dict[int, int] = {}
        for e in entries:
            self.first_line.setdefault(e.seq, e.line)
            self.last_line[e.seq] = e.line
        self.seqs = sorted(self.last_line)
        self.by_hash = {e.hash: e for e in entries}
        self.anchor = _ANCHOR0  # the last record accepted into the chain
        self.accepted: set[int] = set()
        self.out: dict[tuple[int, str], Problem] = {}  # one problem per (line, kind)

    def report(self, e: _Entry, kind: str, detail: str) -> None:
        self.out.setdefault((e.line, kind), Problem(e.line, e.seq, kind, detail))

    def report_broken(self, r: _Entry) -> None:
        if r.plain:
            self.report(
                r,
                "downgraded",
                "plain SHA-256 hash, not the HMAC under this key: written or re-chained without the key",
            )
        else:
            self.report(r, "edited", "stored hash does not match the content" + self.edit_hint)

    def accept(self, x: _Entry, seq: int | None = None) -> None:
        self.anchor = replace(x, seq=x.seq if seq is None else seq)
        self.accepted.add(self.anchor.seq)

    def holes(self, r: _Entry) -> int:
        """Malformed lines between the anchor and ``r``: each may be one of the missing records."""
        return bisect_left(self.malformed, r.line) - bisect_right(self.malformed, self.anchor.line)

    def missing(self, lo: int, hi: int, line: int) -> tuple[int, int, int]:
        """How many seqs in [lo, hi) are absent from the rest of the file (first, last of them).
        Seqs that turn up after ``line`` were moved, not deleted. Bounded by the records present,
        not by hi - lo (a forged seq of 10**12 must not hang verify)."""
        late = {
            s for s in self.seqs[bisect_left(self.seqs, lo) : bisect_left(self.seqs, hi)] if self.last_line[s] > line
        }
        first, last = lo, hi - 1
        while first in late:
            first += 1
        while last in late:
            last -= 1
        return hi - lo - len(late), first, last

    def orphan(self, r: _Entry) -> bool:
        """Nothing chains to ``r`` and it does not fit anywhere later in the file either (a genuine
        record moved up still names its real predecessor, found further down)."""
        if r.hash in self.referenced:
            return False
        p = self.by_hash.get(r.prev)
        moved = (
            p is not None and p.seq == r.seq - 1 and p.line > r.line and self.first_line[r.seq] == self.last_line[r.seq]
        )
        return not moved

    def run(self) -> list[Problem]:
        skip = -1
        for i, r in enumerate(self.entries):
            if i != skip:
                n = self.entries[i + 1] if i + 1 < len(self.entries) else None
                if self.step(r, n):
                    skip = i + 1
        return list(self.out.values())

    def step(self, r: _Entry, n: _Entry | None) -> bool:
        """Classify ``r``; True when ``n`` was consumed too (a swapped pair)."""
        a = self.anchor
        expected, links = a.seq + 1, r.prev == a.hash
        where = f"line {a.line}" if a.line else "the start"
        if not r.intact:
            self.report_broken(r)
            if links or r.seq == expected:
                self.accept(r, expected)  # in place: the next record still chains to its stored hash
                return False
        if links:
            if n is not None and n.prev == a.hash and self.orphan(r):
                self.report(r, "inserted", f"line {n.line} also chains to {where} and no record chains to this one")
                return False
            if r.seq != expected:
                self.report(
                    r,
                    "edited",
                    f"seq {r.seq} should be {expected} (prev chains to {where}): seq rewritten and hash recomputed",
                )
            self.accept(r, expected)
            return False
        if n is not None and n.prev == a.hash and r.prev == n.hash:
            self.report(r, "reordered", f"lines {r.line} and {n.line} are swapped (seq {r.seq} before {n.seq})")
            self.accept(n)
            self.accept(r)
            return True
        if n is not None and n.prev == a.hash and self.orphan(r):
            self.report(
                r, "inserted", f"does not chain to {where}; line {n.line} does, and no record chains to this one"
            )
            return False
        if r.seq < expected:  # not advancing the anchor: the records after still chain to it
            if r.seq in self.accepted:
                self.report(r, "inserted", f"repeats seq {r.seq} (first at line {self.first_line[r.seq]})")
            else:
                self.accepted.add(r.seq)
                self.report(r, "reordered", f"seq {r.seq} appears after seq {a.seq} ({where})")
            return False
        if r.seq > expected:
            count, first, last = self.missing(expected, r.seq, r.line)
            if count > self.holes(r):
                span = str(first) if count == 1 else f"{first}..{last}"
                self.report(r, "deleted", f"{count} record(s) missing before line {r.line} (seq {span})")
            self.accept(r)
            return False
        # The expected seq, but prev names some other hash.
        if a is _ANCHOR0:
            self.report(r, "edited", "the first record's prev is not 64 zeros")
        elif a.hash not in self.referenced and r.hash in self.referenced:
            self.out.setdefault(
                (a.line, "edited"),
                Problem(
                    a.line,
                    a.seq,
                    "edited",
                    f"line {r.line} chains to a different hash: this record's content and hash were changed",
                ),
            )
        else:
            maybe = f" (or line {a.line} was edited and re-hashed)" if a.hash not in self.referenced else ""
            self.report(r, "inserted", f"prev does not match the hash of line {a.line}{maybe}")
        self.accept(r)
        return False


# --- display ------------------------------------------------------------------------------------


def format_record(rec: Mapping[str, Any], width: int = 160) -> str:
    """One line: seq, ts, event and the data as compact JSON cut to ``width`` characters."""
    summary = json.dumps(rec.get("data", {}), ensure_ascii=False, separators=(",", ":"), default=str)
    if len(summary) > width:
        summary = summary[: width - 1] + "…"
    seq = rec.get("seq")
    return f"{'?' if seq is None else seq!s:>6} {rec.get('ts', '?')} {rec.get('event', '?')} {summary}"


def format_report(report: VerifyReport) -> str:
    frags = report.fragments
    note = f"; {len(frags)} torn fragment(s) set aside, listed below" if frags else ""
    if report.ok:
        lines = [f"OK: {report.records} records, head {report.head_hash}{note}"]
    else:
        lines = [
            (f"FAILED: {report.records} records, {len(report.problems)} problem(s), head {report.head_hash}{note}")
        ]
    for p in report.problems:
        seq = "?" if p.seq is None else p.seq
        lines.append(
            f"{report.unit} {p.line} (seq {seq}): {p.kind}: {p.detail}"
            if p.line
            else f"outside the log: {p.kind}: {p.detail}"
        )
    for f in frags:
        where = f"audit.recovered at line {f.line} (seq {f.seq})" if f.line else "no audit.recovered record"
        lines.append(f"torn fragment {f.side_file}: {f.torn_bytes} bytes, sha256 {f.sha256}, {f.state}; {where}")
    return "\n".join(lines)


__all__ = [
    "APPROVAL_APPROVED",
    "APPROVAL_DENIED",
    "APPROVAL_EXPIRED",
    "AUDIT_RECOVERED",
    "AUDIT_RESTORED",
    "AuditError",
    "AuditLog",
    "AuditStore",
    "DEFAULT_ID_KEYS",
    "DEFAULT_PATTERNS",
    "DEFAULT_SECRET_KEYS",
    "GATE_ALLOW",
    "GATE_ERROR",
    "GATE_ESCALATE",
    "GATE_REFUSE",
    "GENESIS",
    "Fragment",
    "HMAC_SHA256",
    "KEYED_LOG",
    "KEY_ENV",
    "MAC_FIELD",
    "Problem",
    "Redactor",
    "VerifyReport",
    "canonical_bytes",
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
