"""Staged autonomy (the seed's phase 4): per tool action, may a call the gate ALLOWs run by itself?

Levels, per domain (one tool action, e.g. ``mail.send``):

    ask   every call the gate ALLOWs waits for a person: an approval item like an escalation, but
          marked ``decision["hold"] == "autonomy"`` (the gate's ALLOW is stored as it was)
    auto  calls the gate ALLOWs run

A domain's level is the one recorded with ``so8t autonomy set``; without one, the tools config's
level for the action (its ``actions:`` entry, else its risk tier's): read-only actions are ``auto``,
actions that write, delete, send or pay are ``ask`` (``so8t.agent.tools.base`` declares each
action's tier; the defaults are ``toolloop.DEFAULT_TIERS``). A tools-config ``deny`` stays outside
autonomy: ``set`` cannot lift it.

Guaranteed:

* Only ever stricter than the gate: the level is applied after the gate said ALLOW; ESCALATE and
  REFUSE are unchanged, and a call its tool flags (``needs_approval``) waits even on ``auto``.
* Fails closed: a state file that cannot be read, is not valid JSON, or holds anything but known
  levels makes EVERY domain ``ask`` (source ``unreadable``), with a warning naming the file and
  the problem (logged once per problem); ``set`` refuses to overwrite such a file. A missing file
  is not a problem: nothing was set yet.
* Nothing changes by itself: levels change only through ``set_level``, which writes an
  ``autonomy.set`` audit record first (write-ahead; an audit log that fails means no change) and
  then replaces the state file atomically (a temporary file in the same folder, fsync, rename,
  fsync of the folder), under a file lock. ``report`` reads and proposes; it changes nothing.
* Every stored level names its ``autonomy.set`` record (``audit_hash``); ``report`` flags a level
  with no such record (a state file edited by hand) and a state that differs from the log's last
  change. A set whose state write failed is followed by ``autonomy.aborted`` naming that record.

The report counts, per domain, the gate-ALLOWed tool calls people decided on (the approval
queue's original items, not their edits) since the domain's level was last set: approved (ran or
about to), edited, rejected, still pending, expired. It proposes ``auto`` for an ``ask`` domain
with at least ``min_approvals`` approvals and no edit or rejection, and ``ask`` for an ``auto``
domain with any rejection. A person runs ``so8t autonomy set`` to act on a proposal; setting a
domain to the level it already has is recorded too, and restarts its count.

State file (JSON)::

    {"format": "so8t-autonomy/1",
     "levels": {"mail.send": {"level": "auto", "by": "carol", "at": "2026-01-01T00:00:00.000000Z",
                              "reason": "...", "audit_hash": "<hash of the autonomy.set record>"}}}
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from filelock import FileLock

from so8t import jsonerr
from so8t.agent.approvals import Approval, Status
from so8t.agent.audit import AuditError
from so8t.agent.audit_events import AUTONOMY_ABORTED, AUTONOMY_SET

log = logging.getLogger("so8t.autonomy")
LEVELS = ("ask", "auto")
STATE_FORMAT = "so8t-autonomy/1"
SET_EVENT, ABORTED_EVENT = AUTONOMY_SET, AUTONOMY_ABORTED  # so8t.agent.audit_events
DEFAULT_MIN_APPROVALS = 20
LOCK_TIMEOUT_S = 30.0
_ENTRY_KEYS = {"level", "by", "at", "reason", "audit_hash"}
_APPROVED = {Status.APPROVED, Status.EXECUTING, Status.EXECUTED, Status.FAILED}
# the tools config's words for the same ideas, so an error can point to ours
_ALIASES = {"approval": "ask", "manual": "ask", "hold": "ask", "yes": "auto", "allow": "auto"}


class AutonomyError(ValueError):
    """A bad domain or level name, or a state file that cannot be used; the message says which
    and suggests the closest valid name. Nothing was changed."""


def closest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name nearest to ``name`` (difflib), or None when nothing is close."""
    found = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.5)
    return found[0] if found else None


def check_level(level: str) -> str:
    if level in LEVELS:
        return level
    hint = _ALIASES.get(str(level).lower()) or closest(str(level), LEVELS)
    raise AutonomyError(
        f"unknown autonomy level {level!r}"
        + (f"; did you mean {hint!r}?" if hint else "")
        + f" (levels: {', '.join(LEVELS)})"
    )


def check_domain(domain: str, known: Iterable[str]) -> str:
    known = sorted(known)
    if domain in known:
        return domain
    if not known:
        raise AutonomyError(
            "no tool actions are configured: autonomy levels apply to tool actions; set tools: "
            "in the server config (a tools YAML)"
        )
    hint = closest(domain, known)
    raise AutonomyError(
        f"unknown domain {domain!r}"
        + (f"; did you mean {hint!r}?" if hint else "")
        + f" (configured tool actions: {', '.join(known)})"
    )


@dataclass(frozen=True)
class Entry:
    """One recorded level."""

    level: str
    by: str
    at: str
    reason: str = ""
    audit_hash: str = ""


@dataclass(frozen=True)
class Level:
    """A domain's level as applied: ``source`` is ``set`` (recorded), ``config`` (the tools
    config's default) or ``unreadable`` (the state file failed: ``ask``)."""

    domain: str
    level: str
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


def read_state(path: Path) -> dict[str, Entry]:
    """The recorded levels; {} when the file does not exist. AutonomyError naming the file and
    the problem when it cannot be used."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise AutonomyError(f"{path}: cannot read the autonomy state ({exc})") from None
    except ValueError as exc:
        raise AutonomyError(f"{path}: not valid JSON ({jsonerr.describe(exc)})") from None
    if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT or not isinstance(raw.get("levels"), dict):
        raise AutonomyError(
            f'{path}: not an autonomy state (expected {{"format": "{STATE_FORMAT}", "levels": {{...}}}})'
        )
    return {domain: _entry(path, domain, value) for domain, value in raw["levels"].items()}


def _entry(path: Path, domain: str, value) -> Entry:
    where = f"{path}: levels.{domain}"
    if not isinstance(value, dict) or not {"level", "by", "at"} <= set(value) or set(value) - _ENTRY_KEYS:
        raise AutonomyError(f"{where}: expected an object with level, by, at (and reason, audit_hash)")
    if value["level"] not in LEVELS:
        raise AutonomyError(f"{where}.level: {value['level']!r} is not one of {', '.join(LEVELS)}")
    if not all(isinstance(v, str) for v in value.values()):
        raise AutonomyError(f"{where}: every field must be a string")
    return Entry(**value)


def write_state(path: Path, entries: Mapping[str, Entry]) -> None:
    """Replace the state file atomically: the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        json.dumps(
            {"format": STATE_FORMAT, "levels": {d: asdict(e) for d, e in sorted(entries.items())}},
            ensure_ascii=False,
            indent=2,
        )
        + "\n"
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True)
class Change:
    domain: str
    level: str
    previous: str
    changed: bool
    audit_hash: str | None = None


def store_for(cfg) -> AutonomyStore:
    """The store a ServerConfig names: autonomy_path, or autonomy.json next to audit_path."""
    return AutonomyStore(cfg.autonomy_path or Path(cfg.audit_path).parent / "autonomy.json")


class AutonomyStore:
    """The recorded levels at ``path`` (None: nothing is ever recorded, every domain has its
    config default). Reads are cached until the file changes (its size, mtime or inode)."""

    def __init__(self, path: str | os.PathLike[str] | None):
        self.path = Path(path) if path else None
        self._seen: tuple | None = None
        self._cached: tuple[dict[str, Entry] | None, str | None] = ({}, None)
        self._warned: set[str] = set()

    def entries(self) -> tuple[dict[str, Entry] | None, str | None]:
        """(recorded levels, None), or (None, the problem) when the state cannot be used."""
        if self.path is None:
            return {}, None
        try:
            st = self.path.stat()
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        except OSError as exc:
            return None, f"{self.path}: cannot read the autonomy state ({exc})"
        if key is None or key != self._seen:
            try:
                self._cached = (read_state(self.path), None)
            except AutonomyError as exc:
                self._cached = (None, str(exc))
            self._seen = key
        return self._cached

    def check(self) -> str | None:
        """None when the state can be used; else the problem, logged as a warning once."""
        return self._warn(self.entries()[1])

    def _warn(self, problem: str | None) -> str | None:
        if problem is not None and problem not in self._warned:
            self._warned.add(problem)
            log.warning(
                "autonomy state unusable, every tool action waits for a person (ask) until it is fixed: %s", problem
            )
        return problem

    def level(self, domain: str, default: str) -> Level:
        """The level applied to ``domain``: recorded, else ``default``; ``ask`` when unreadable."""
        entries, problem = self.entries()
        if entries is None:
            self._warn(problem)
            return Level(domain, "ask", "unreadable")
        entry = entries.get(domain)
        return Level(domain, entry.level, "set") if entry else Level(domain, default, "config")

    def set_level(
        self, domain: str, level: str, *, by: str, audit, defaults: Mapping[str, str], reason: str = ""
    ) -> Change:
        """Record ``level`` for ``domain`` (audit record first, then the state file). ``defaults``:
        every configured domain -> its config level (ask, auto or deny)."""
        check_level(level)
        check_domain(domain, defaults)
        if defaults[domain] == "deny":
            raise AutonomyError(
                f"{domain} is 'deny' in the tools config; autonomy cannot lift that (change the "
                "tools config's actions: or tiers: instead)"
            )
        if self.path is None:
            raise AutonomyError("no autonomy state file is configured (autonomy_path)")
        if not by.strip():
            raise AutonomyError("by: who sets the level must be named")
        with FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S):
            entries = read_state(self.path)  # a corrupt file stops here, unchanged
            current = entries.get(domain)
            previous = current.level if current else defaults[domain]
            rec = audit.append(
                SET_EVENT,
                {
                    "domain": domain,
                    "level": level,
                    "previous": previous,
                    "previous_source": "set" if current else "config",
                    "by": by,
                    "reason": reason,
                },
            )
            self._write(entries | {domain: Entry(level, by, rec["ts"], reason, rec["hash"])}, rec, audit)
        return Change(domain, level, previous, previous != level, rec["hash"])

    def _write(self, entries: dict[str, Entry], rec: dict, audit) -> None:
        assert self.path is not None  # set_level checked it
        try:
            write_state(self.path, entries)
        except OSError as exc:
            try:
                audit.append(ABORTED_EVENT, {"aborts": rec["hash"], "domain": rec["data"]["domain"], "error": str(exc)})
            except AuditError as again:
                log.error("autonomy.aborted for %s could not be recorded: %s", rec["hash"], again)
            raise AutonomyError(
                f"{self.path}: the new level could not be written ({exc}); nothing changed "
                f"(the audit log's autonomy.set {rec['hash'][:12]} is marked aborted)"
            ) from None


# --- the report -----------------------------------------------------------------------------------


@dataclass
class DomainReport:
    domain: str
    level: str  # ask | auto | deny (deny: the tools config's, outside autonomy)
    source: str  # set | config | unreadable
    since: str | None = None  # when the level was last set: the counts start there
    approved: int = 0
    edited: int = 0
    rejected: int = 0
    pending: int = 0
    expired: int = 0
    proposal: str | None = None  # the level proposed, or None
    why: str = ""
    command: str | None = None  # the command that would apply the proposal


@dataclass
class Report:
    min_approvals: int
    domains: list[DomainReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def last_changes(records: Iterable[dict]) -> dict[str, dict]:
    """The last ``autonomy.set`` record per domain (a set marked aborted does not count)."""
    records = list(records)
    aborted = {r["data"].get("aborts") for r in records if r.get("event") == ABORTED_EVENT}
    out: dict[str, dict] = {}
    for r in records:
        if r.get("event") == SET_EVENT and r.get("hash") not in aborted and isinstance(r.get("data"), dict):
            out[str(r["data"].get("domain"))] = r
    return out


def _parse_ts(ts: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else None
    except ValueError:
        return None


def count(item: Approval, row: DomainReport) -> None:
    """Add one original, gate-ALLOWed tool-call item to its domain's counts."""
    if item.status in _APPROVED and item.approved_by:
        row.approved += 1
    elif item.status is Status.EDITED:
        row.edited += 1
    elif item.status is Status.REJECTED:
        row.rejected += 1
    elif item.status is Status.PENDING:
        row.pending += 1
    elif item.status is Status.TIMEOUT:
        row.expired += 1


def build_report(
    store: AutonomyStore,
    defaults: Mapping[str, str],
    items: Iterable[Approval],
    audit_records: Iterable[dict],
    *,
    min_approvals: int = DEFAULT_MIN_APPROVALS,
) -> Report:
    """Per domain: its level, the people's decisions since the level was last set, a proposal.
    ``defaults``: configured domain -> its tools-config level (ask, auto, deny)."""
    if min_approvals < 1:
        raise AutonomyError(f"min_approvals must be >= 1, got {min_approvals}")
    report = Report(min_approvals)
    entries, problem = store.entries()
    if problem:
        report.problems.append(f"{problem}: every domain is 'ask' until it is fixed; no proposals")
    changes = last_changes(audit_records)
    items = [i for i in items if i.kind == "tool_call" and i.parent_id is None and i.action == "ALLOW"]
    names = set(defaults) | set(entries or {}) | {str(i.request.get("tool")) for i in items}
    rows = {d: _row(d, defaults, entries, store, changes, report.problems) for d in sorted(names)}
    for item in items:
        row = rows[str(item.request.get("tool"))]
        start = _parse_ts(row.since)
        if start is None or (item.decided_at or item.created_at) >= start:  # decided since the level was set
            count(item, row)
    for row in rows.values():
        _propose(row, min_approvals, usable=problem is None)
    report.domains = list(rows.values())
    return report


def _row(domain: str, defaults, entries, store: AutonomyStore, changes: dict, problems: list[str]) -> DomainReport:
    default = defaults.get(domain)
    if default == "deny":
        return DomainReport(domain, "deny", "config", why="denied by the tools config")
    lv = store.level(domain, default or "ask")
    entry = (entries or {}).get(domain)
    last = changes.get(domain)
    since = last["ts"] if last else (entry.at if entry else None)
    row = DomainReport(domain, lv.level, lv.source, since)
    if default is None:
        problems.append(f"{domain}: not a configured tool action (its level is kept, nothing uses it)")
    if entry is not None and (last is None or entry.audit_hash != last.get("hash")):
        problems.append(
            f"{domain}: the state file says {entry.level!r} but that is not the audit log's last "
            "autonomy.set for it (was the state file edited by hand, or the audit log replaced?)"
        )
    elif entry is None and last is not None and entries is not None:
        problems.append(
            f"{domain}: the audit log's last autonomy.set says {last['data'].get('level')!r} but the "
            "state file has no level for it"
        )
    return row


def _propose(row: DomainReport, n: int, *, usable: bool) -> None:
    if row.level == "deny" or not usable:
        return
    since = f"since {row.since}" if row.since else "so far"
    if row.level == "auto" and row.rejected:
        row.proposal, row.why = "ask", f"{row.rejected} rejected {since}"
    elif row.level == "ask" and (row.rejected or row.edited):
        row.why = (
            f"{row.rejected} rejected, {row.edited} edited {since}; promotion needs {n} approvals with none; "
            f"`so8t autonomy set {row.domain} ask` restarts the count"
        )
    elif row.level == "ask" and row.approved >= n:
        row.proposal, row.why = "auto", f"{row.approved} approved {since}, none edited or rejected"
    elif row.level == "ask":
        row.why = f"{row.approved} of {n} approvals {since}"
    if row.proposal:
        row.command = f"so8t autonomy set {row.domain} {row.proposal}"


def format_report(report: Report) -> str:
    """The report as a table, then the problems and the proposals."""
    head = ("domain", "level", "source", "approved", "edited", "rejected", "pending", "expired", "proposal")
    rows = [head] + [
        (d.domain, d.level, d.source, *(str(getattr(d, k)) for k in head[3:8]), d.proposal or "-")
        for d in report.domains
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append(
        f"(counts: gate-ALLOWed tool calls people decided on since each level was last set; "
        f"promotion needs {report.min_approvals} approvals with no edit or rejection)"
    )
    lines += [f"warning: {p}" for p in report.problems]
    for d in report.domains:  # the domains with something to say: a proposal, or decisions to count
        if d.proposal or (d.level != "deny" and d.approved + d.edited + d.rejected):
            lines.append(f"{d.domain}: {d.why}" + (f" -> propose {d.proposal}: {d.command}" if d.proposal else ""))
    return "\n".join(lines)
