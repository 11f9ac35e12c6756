"""Calendar: events in one local iCalendar (.ics) file -- list (read), create/move (write),
delete (delete), invite (send).

Why `calendar.invite` is separate from `calendar.create`: an event with other attendees
involves other people, which is the `send` tier, while an event in the owner's own calendar is
an ordinary reversible `write`. So `calendar.create` refuses an `attendees` argument and names
`calendar.invite`. (This tool only records the invitation -- ORGANIZER and ATTENDEE lines in the
file; emailing it to the attendees is a separate mail.draft + mail.send.)

Times: `start`/`end` are ISO 8601 date-times, e.g. "2025-05-01T09:00:00+09:00" or
"2025-05-01T00:00:00Z"; a time without an offset is taken as UTC. New events are stored in UTC.
Existing events keep whatever the file has (time zones, all-day dates); for range filtering,
all-day dates and floating (zone-less) times count as UTC. Recurring events (RRULE) are listed
once, at their first occurrence, flagged "recurring"; `calendar.move` refuses them.

The file: every change is read-modify-write under a file lock (``<file>.lock``, via filelock)
and written to a temp file in the same folder then `os.replace`d, so concurrent writers do not
lose each other's events and a crash never leaves half a file. A missing file is created on the
first write. A file that does not parse as iCalendar -- or has a property icalendar could not
read -- is a ToolError naming the file, and is never overwritten: rewriting it would drop
whatever we failed to understand. Components we do not touch (VTODO, VTIMEZONE, X- properties)
are kept.

Event text (summary, location) may come from other people's invitations: it is data, not
instructions.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from filelock import FileLock, Timeout
from icalendar import Calendar, Event, vCalAddress
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from so8t.agent.tools.base import ToolAction, ToolError
from so8t.agent.tools.mail import check_header_text, parse_address
from so8t.fsutil import atomic_write_bytes

UTC = timezone.utc
_TIME_HELP = "ISO 8601 date-time, e.g. 2025-05-01T09:00:00+09:00; without an offset it is UTC"


def parse_datetime(text: str, what: str, *, date_ok: bool = False) -> datetime:
    """ISO 8601 -> aware datetime; naive = UTC. A bare date only where `date_ok` (its midnight, UTC)."""
    iso = text.strip()
    if iso[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat does not read "Z"
        iso = iso[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an {_TIME_HELP}") from None
    if "T" not in text.upper() and " " not in text.strip() and not date_ok:
        raise ValueError(f"{what} {text!r} has no time of day; give an {_TIME_HELP}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _one_line(v: str | None, what: str) -> str | None:
    return None if v is None else check_header_text(v, what)


class _TimeRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: str = Field(max_length=64, description=f"Start: {_TIME_HELP}.")
    end: str = Field(max_length=64, description=f"End, after start: {_TIME_HELP}.")

    @field_validator("start", "end")
    @classmethod
    def _iso(cls, v: str, info: Any) -> str:
        parse_datetime(v, info.field_name)
        return v

    @model_validator(mode="after")
    def _order(self) -> _TimeRange:
        if parse_datetime(self.end, "end") <= parse_datetime(self.start, "start"):
            raise ValueError(f"end {self.end} must be after start {self.start}")
        return self


class _EventFields(_TimeRange):
    summary: str = Field(min_length=1, max_length=255, description="Event title (one line).")
    location: str | None = Field(default=None, max_length=500, description="Where (one line).")
    description: str | None = Field(default=None, max_length=10_000, description="Notes (may be several lines).")

    @field_validator("summary", "location")
    @classmethod
    def _single_line(cls, v: str | None, info: Any) -> str | None:
        return _one_line(v, info.field_name)


class CreateArgs(_EventFields):
    """An event in the owner's own calendar, nobody else invited."""

    @model_validator(mode="before")
    @classmethod
    def _no_attendees(cls, data: Any) -> Any:
        if isinstance(data, dict) and "attendees" in data:
            raise ValueError(
                "calendar.create does not take attendees: an event that involves other people is "
                "calendar.invite (risk send)"
            )
        return data


class ListArgs(BaseModel):
    """Events overlapping an optional range, in start order."""

    model_config = ConfigDict(extra="forbid")
    from_: str | None = Field(
        default=None,
        alias="from",
        max_length=64,
        description="Range start (inclusive): a date 2025-05-01 or an ISO 8601 date-time.",
    )
    to: str | None = Field(
        default=None,
        max_length=64,
        description="Range end: a date (included, through its end) or a date-time (exclusive).",
    )
    limit: int = Field(default=200, ge=1, le=1000, description="At most this many events.")

    @field_validator("from_", "to")
    @classmethod
    def _iso(cls, v: str | None, info: Any) -> str | None:
        if v is not None:
            parse_datetime(v, "from" if info.field_name == "from_" else "to", date_ok=True)
        return v


class MoveArgs(_TimeRange):
    """Give an event a new start and end."""

    uid: str = Field(min_length=1, max_length=255, description="The event's uid, from calendar.list or create.")


class DeleteArgs(BaseModel):
    """Remove an event."""

    model_config = ConfigDict(extra="forbid")
    uid: str = Field(min_length=1, max_length=255, description="The event's uid, from calendar.list or create.")


class _InviteChecks(_EventFields):
    """What every InviteArgs checks; ``invite_args`` names the owner, who is never an attendee."""

    owner_addr: ClassVar[str]
    if TYPE_CHECKING:  # the field, declared by invite_args
        attendees: list[str]

    @field_validator("attendees", check_fields=False)
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        out, seen = [], {cls.owner_addr.lower()}
        for text in v:
            name, addr = parse_address(text)
            if addr.lower() not in seen:
                seen.add(addr.lower())
                out.append(f"{name} <{addr}>" if name else addr)
        if not out:
            raise ValueError("no attendees other than the owner: that is calendar.create")
        return out


def invite_args(owner_addr: str) -> type[_InviteChecks]:
    """The `calendar.invite` arguments of the calendar owned by ``owner_addr``."""

    class InviteArgs(_InviteChecks):
        """An event with other attendees: it involves other people."""

        attendees: list[str] = Field(
            min_length=1,
            max_length=100,
            description="Attendee email addresses ('a@example.com' or 'Name <a@example.com>').",
        )

    InviteArgs.owner_addr = owner_addr
    return InviteArgs


class _Calendar:
    """One .ics file and its owner: the state behind the `calendar.*` actions."""

    def __init__(self, ics_path: str | Path, owner: str):
        self.path = Path(ics_path)
        _, self.owner_addr = parse_address(owner)
        self.lock = FileLock(str(self.path) + ".lock", timeout=30)

    def change(self, mutate: Callable[[Calendar], dict]) -> dict:
        """Read-modify-write the file under the lock; `mutate(cal)` returns the result."""
        try:
            with self.lock:
                cal = _load(self.path)
                result = mutate(cal)
                _save(cal, self.path)
                return result
        except Timeout:
            raise ToolError(f"calendar: {self.path} is locked by another writer; try again") from None

    def list_events(self, a: ListArgs) -> dict:
        lo = parse_datetime(a.from_, "from", date_ok=True) if a.from_ else None
        hi = None
        if a.to:
            hi = parse_datetime(a.to, "to", date_ok=True)
            if len(a.to.strip()) <= 10:  # a bare date: through the end of that day
                hi += timedelta(days=1)
        events = []
        for ev in _load(self.path).walk("VEVENT"):
            start, end = _span(ev)
            if (hi is not None and start >= hi) or (lo is not None and (end <= lo if end > start else start < lo)):
                continue
            events.append((start, _describe(ev)))
        events.sort(key=lambda se: se[0])
        return {
            "events": [e for _, e in events[: a.limit]],
            "count": min(len(events), a.limit),
            "more": len(events) > a.limit,
        }

    def new_event(self, a: _EventFields, attendees: list[str] | None) -> Event:
        now = datetime.now(UTC).replace(microsecond=0)
        ev = Event()
        ev.add("uid", f"{uuid.uuid4()}@so8t")
        ev.add("dtstamp", now)
        ev.add("created", now)
        ev.add("summary", a.summary)
        ev.add("dtstart", parse_datetime(a.start, "start").astimezone(UTC))
        ev.add("dtend", parse_datetime(a.end, "end").astimezone(UTC))
        if a.location:
            ev.add("location", a.location)
        if a.description:
            ev.add("description", a.description)
        if attendees:
            ev.add("organizer", vCalAddress(f"mailto:{self.owner_addr}"))
            for text in attendees:
                ev.add("attendee", _attendee(text))
        return ev

    def add(self, ev: Event) -> dict:
        def add(cal: Calendar) -> dict:
            cal.add_component(ev)
            return _describe(ev)

        return self.change(add)

    def create(self, a: CreateArgs) -> dict:
        return self.add(self.new_event(a, None))

    def invite(self, a: _InviteChecks) -> dict:
        return self.add(self.new_event(a, a.attendees))

    def move(self, a: MoveArgs) -> dict:
        return self.change(lambda cal: _move(cal, a))

    def delete(self, a: DeleteArgs) -> dict:
        def rm(cal: Calendar) -> dict:
            found = _find(cal, a.uid, "calendar.delete", single=False)
            gone = _describe(found[0])
            cal.subcomponents[:] = [c for c in cal.subcomponents if not any(c is f for f in found)]
            return {"deleted": gone, "components_removed": len(found)}

        return self.change(rm)


def _attendee(text: str) -> vCalAddress:
    name, addr = parse_address(text)
    att = vCalAddress(f"mailto:{addr}")
    att.params.update({"ROLE": "REQ-PARTICIPANT", "PARTSTAT": "NEEDS-ACTION", "RSVP": "TRUE"})
    if name:
        att.params["CN"] = name
    return att


def _move(cal: Calendar, a: MoveArgs) -> dict:
    """Give one (non-recurring) event the new start and end; bump its SEQUENCE."""
    [ev] = _find(cal, a.uid, "calendar.move")
    if "RRULE" in ev or "RECURRENCE-ID" in ev:
        raise ToolError(f"calendar.move: event {a.uid!r} is recurring; moving recurring events is not supported")
    before = _describe(ev)
    for prop in ("DTSTART", "DTEND", "DURATION", "DTSTAMP", "LAST-MODIFIED"):
        ev.pop(prop, None)
    ev.add("dtstart", parse_datetime(a.start, "start").astimezone(UTC))
    ev.add("dtend", parse_datetime(a.end, "end").astimezone(UTC))
    now = datetime.now(UTC).replace(microsecond=0)
    ev.add("dtstamp", now)
    ev.add("last-modified", now)
    seq = int(ev.pop("SEQUENCE", 0) or 0)
    ev.add("sequence", seq + 1)
    return {**_describe(ev), "previous": {"start": before["start"], "end": before["end"]}}


def calendar_tool(ics_path: str | Path, *, owner: str) -> list[ToolAction]:
    """The actions calendar.list (read), .create / .move (write), .delete (delete), .invite (send).

    `owner` is the calendar owner's email address (ORGANIZER of invitations; ValueError if invalid).
    """
    c = _Calendar(ics_path, owner)
    return [
        ToolAction(
            "calendar.list",
            "List calendar events, optionally only those overlapping a from/to range.",
            ListArgs,
            "read",
            c.list_events,
        ),
        ToolAction(
            "calendar.create",
            "Add an event to the owner's own calendar (no other attendees; for those use calendar.invite).",
            CreateArgs,
            "write",
            c.create,
        ),
        ToolAction(
            "calendar.invite",
            "Add an event with other attendees (records ORGANIZER/ATTENDEE).",
            invite_args(c.owner_addr),
            "send",
            c.invite,
        ),
        ToolAction("calendar.move", "Change an event's start and end.", MoveArgs, "write", c.move),
        ToolAction("calendar.delete", "Delete an event.", DeleteArgs, "delete", c.delete),
    ]


# -- the file ------------------------------------------------------------------------------------


def _new_calendar() -> Calendar:
    cal = Calendar()
    cal.add("prodid", "-//so8t//agent calendar//EN")
    cal.add("version", "2.0")
    return cal


def _load(path: Path) -> Calendar:
    """Parse the file; missing (or empty) = a new calendar; anything we cannot fully read = ToolError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _new_calendar()
    except OSError as exc:
        raise ToolError(f"calendar: cannot read {path}: {exc}") from None
    if not raw.strip():
        return _new_calendar()
    hint = "it was left unchanged; fix or move it"
    try:
        cal = Calendar.from_ical(raw)
    except Exception as exc:  # noqa: BLE001 -- mostly ValueError, but any failure means the same
        raise ToolError(f"calendar: {path} is not a valid iCalendar file ({str(exc)[:200]}); {hint}") from None
    if not isinstance(cal, Calendar) or cal.name != "VCALENDAR":
        raise ToolError(
            f"calendar: {path} is not a valid iCalendar file (top component is "
            f"{getattr(cal, 'name', '?')}, not VCALENDAR); {hint}"
        )
    for comp in cal.walk():
        if getattr(comp, "errors", None):
            prop, why = comp.errors[0][:2]
            raise ToolError(f"calendar: {path} has a {comp.name} with an unreadable {prop} ({why}); {hint}")
    return cal


def _save(cal: Calendar, path: Path) -> None:
    """Atomic, keeping the old file's permissions."""
    atomic_write_bytes(path, cal.to_ical())


# -- events ----------------------------------------------------------------------------------------


def _find(cal: Calendar, uid: str, action: str, *, single: bool = True) -> list[Any]:
    found = [c for c in cal.subcomponents if c.name == "VEVENT" and str(c.get("UID", "")) == uid]
    if not found:
        raise ToolError(f"{action}: no event with uid {uid!r}")
    if single and len(found) > 1:
        raise ToolError(
            f"{action}: uid {uid!r} has {len(found)} components (a recurring event with overrides); not supported"
        )
    return found


def _as_utc(value: date | datetime) -> datetime:
    if not isinstance(value, datetime):  # an all-day date
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _bounds(ev: Any) -> tuple[date | datetime | None, date | datetime | None]:
    start = ev.get("DTSTART").dt if "DTSTART" in ev else None
    if "DTEND" in ev:
        return start, ev.get("DTEND").dt
    if "DURATION" in ev and start is not None:
        return start, start + ev.get("DURATION").dt
    if start is not None and not isinstance(start, datetime):
        return start, start + timedelta(days=1)  # an all-day event without DTEND lasts that day
    return start, start


def _span(ev: Any) -> tuple[datetime, datetime]:
    start, end = _bounds(ev)
    if start is None:
        lo = datetime.min.replace(tzinfo=UTC)
        return lo, lo
    return _as_utc(start), _as_utc(end if end is not None else start)


def _iso(value: date | datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _mailto(value: Any) -> str:
    text = str(value)
    return text[7:] if text.lower().startswith("mailto:") else text


def _describe(ev: Any) -> dict:
    start, end = _bounds(ev)
    attendees = ev.get("ATTENDEE", [])
    if not isinstance(attendees, list):
        attendees = [attendees]
    out = {
        "uid": str(ev.get("UID", "")),
        "summary": str(ev.get("SUMMARY", "")),
        "start": _iso(start),
        "end": _iso(end),
        "attendees": [_mailto(a) for a in attendees],
        "location": str(ev["LOCATION"]) if "LOCATION" in ev else None,
        "all_day": start is not None and not isinstance(start, datetime),
    }
    if "ORGANIZER" in ev:
        out["organizer"] = _mailto(ev["ORGANIZER"])
    if "RRULE" in ev:
        out["recurring"] = True
    return out
