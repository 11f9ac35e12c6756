"""Verification of an audit log: every record's hash and the chain, with the line and the kind of
each problem, and every torn fragment set aside next to a JSONL log.

Guarantees (the rules are in ``verify``'s docstring):

* ``verify`` detects an edited, deleted, inserted or reordered record, a malformed line and a torn
  last line, and reports the line number and kind of each; ``verify_lines`` does the same checks
  on records given as lines (a database's rows, ``unit`` "row").
* A keyed log never passes as unkeyed: without the key, any record marked ``"mac"`` fails the
  log (``key_required``); with the key, a record hashed with plain SHA-256 is ``downgraded``.
* Every torn fragment (``<log>.torn-*``) is listed in the report (kept, changed, missing or
  unrecorded); one whose bytes no longer match its ``audit.recovered`` record, or that no record
  names, is a problem. A side file is only ever read inside the log's own folder.
* Event names are not checked: any non-empty event string verifies (old spellings included, see
  ``so8t.agent.audit_events``). Records missing from the END cannot be seen in the file alone:
  compare ``head_hash`` with a copy kept elsewhere.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from so8t.agent.audit_chain import (
    GENESIS,
    KEYED_LOG,
    MAC_FIELD,
    check_fields,
    check_key,
    parse_line,
    record_hash,
)
from so8t.agent.audit_events import AUDIT_RECOVERED

__all__ = [
    "TORN_INFIX",
    "Fragment",
    "Problem",
    "VerifyReport",
    "file_digest",
    "format_report",
    "recorded_side_files",
    "require_file",
    "side_files",
    "verify",
    "verify_lines",
]

TORN_INFIX = ".torn-"  # side files are <log name>.torn-<UTC time>
_DIGEST_CHUNK = 64 * 1024


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
        why = check_fields(rec)
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
    require_file(path)
    with open(path, "rb") as f:
        report = verify_lines(f, key)
    fragments = _fragments(path)
    problems = sorted(report.problems + _fragment_problems(fragments), key=lambda p: (p.line, p.kind))
    return replace(report, ok=not problems, problems=problems, fragments=fragments)


def verify_lines(lines: Iterable[bytes], key: bytes | None = None, unit: str = "line") -> VerifyReport:
    """``verify``'s checks on records given as lines (each ending in b"\\n", in the order they are
    stored), without the side files: what a database store verifies (``unit`` "row")."""
    key = check_key(key)
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
    for line, seq, name, data in recovered_records(path):
        named.add(name)
        size, digest = data.get("torn_bytes"), data.get("sha256")
        side = path.parent / name
        if "/" in name or "\\" in name or not name.startswith(path.name + TORN_INFIX):
            state = "missing"  # not a side file of this log: never read outside its folder
        elif not side.is_file():
            state = "missing"
        else:
            n, actual = file_digest(side)
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
    for name in side_files(path):
        if name not in named:
            n, digest = file_digest(path.parent / name)
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
        return self.unlinked(r, n)

    def unlinked(self, r: _Entry, n: _Entry | None) -> bool:
        """Classify ``r``, which does not chain to the anchor; True when ``n`` was consumed too."""
        a = self.anchor
        expected = a.seq + 1
        where = f"line {a.line}" if a.line else "the start"
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


# --- side files (torn fragments set aside next to a JSONL log) ----------------------------------


def require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "audit log not found", str(path))


def side_files(path: Path) -> list[str]:
    """Names of the side files of the log at ``path`` (``<name>.torn-*``), sorted."""
    prefix = path.name + TORN_INFIX
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(prefix) and (path.parent / n).is_file())


def recorded_side_files(path: Path) -> set[str]:
    """Side file names given by the log's ``audit.recovered`` records."""
    return {name for _, _, name, _ in recovered_records(path)}


def recovered_records(path: Path) -> list[tuple[int, int | None, str, dict]]:
    """(line, seq, side file, data) of each ``audit.recovered`` record naming a side file."""
    out = []
    marker = AUDIT_RECOVERED.encode()
    with open(path, "rb") as f:
        for no, raw in enumerate(f, start=1):
            if marker not in raw:
                continue
            rec = parse_line(raw.rstrip(b"\n"))
            if rec is None or rec.get("event") != AUDIT_RECOVERED or not isinstance(rec.get("data"), dict):
                continue
            name = rec["data"].get("side_file")
            if isinstance(name, str):
                seq = rec.get("seq") if isinstance(rec.get("seq"), int) else None
                out.append((no, seq, name, rec["data"]))
    return out


def file_digest(path: Path) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_DIGEST_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


# --- display ------------------------------------------------------------------------------------


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
