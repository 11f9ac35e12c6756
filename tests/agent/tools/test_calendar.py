"""calendar.* on a real .ics file, through Toolset.validate + execute as the agent calls them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from icalendar import Calendar

from so8t.agent.tools import ToolError, Toolset
from so8t.agent.tools.calendar import calendar_tool

OWNER = "me@example.com"


def _tools(path: Path) -> Toolset:
    return Toolset(calendar_tool(path, owner=OWNER))


def _run(ts: Toolset, name: str, args: dict) -> dict:
    return ts.execute(ts.validate(name, args))


def test_create_list_move_delete_round_trip(tmp_path):
    ics = tmp_path / "sub" / "cal.ics"
    ts = _tools(ics)
    assert _run(ts, "calendar.list", {}) == {"events": [], "count": 0, "more": False} and not ics.exists()

    a = _run(
        ts,
        "calendar.create",
        {
            "summary": "歯医者",
            "start": "2025-05-01T09:00:00+09:00",
            "end": "2025-05-01T10:00:00+09:00",
            "location": "駅前クリニック",
        },
    )
    assert ics.exists()  # created on the first write, folder included
    b = _run(
        ts,
        "calendar.create",
        {
            "summary": "Lunch",
            "start": "2025-05-02T12:00",
            "end": "2025-05-02T13:00",
            "description": "naive times are UTC\nsecond line",
        },
    )
    assert a["start"] == "2025-05-01T00:00:00+00:00" and a["end"] == "2025-05-01T01:00:00+00:00"  # stored in UTC
    assert b["start"] == "2025-05-02T12:00:00+00:00" and a["uid"] != b["uid"]

    listed = _run(ts, "calendar.list", {})["events"]
    assert [e["summary"] for e in listed] == ["歯医者", "Lunch"]
    assert listed[0] == {
        "uid": a["uid"],
        "summary": "歯医者",
        "start": "2025-05-01T00:00:00+00:00",
        "end": "2025-05-01T01:00:00+00:00",
        "attendees": [],
        "location": "駅前クリニック",
        "all_day": False,
    }

    def day(**r):
        return [e["summary"] for e in _run(ts, "calendar.list", r)["events"]]

    assert day(**{"from": "2025-05-02"}) == ["Lunch"]
    assert day(to="2025-05-01") == ["歯医者"]  # a date "to" includes that whole day
    assert day(**{"from": "2025-05-01T00:30Z", "to": "2025-05-02T12:00Z"}) == ["歯医者"]  # overlap; "to" exclusive
    assert day(**{"from": "2025-05-03"}) == []
    assert _run(ts, "calendar.list", {"limit": 1})["more"] is True

    moved = _run(ts, "calendar.move", {"uid": b["uid"], "start": "2025-05-03T12:00Z", "end": "2025-05-03T14:00Z"})
    assert moved["start"] == "2025-05-03T12:00:00+00:00" and moved["previous"]["start"] == "2025-05-02T12:00:00+00:00"
    assert day(**{"from": "2025-05-03"}) == ["Lunch"]
    ev = next(e for e in Calendar.from_ical(ics.read_bytes()).walk("VEVENT") if str(e["UID"]) == b["uid"])
    assert int(ev["SEQUENCE"]) == 1 and str(ev["DESCRIPTION"]) == "naive times are UTC\nsecond line"

    gone = _run(ts, "calendar.delete", {"uid": a["uid"]})
    assert gone["deleted"]["summary"] == "歯医者"
    assert [e["uid"] for e in _run(ts, "calendar.list", {})["events"]] == [b["uid"]]
    with pytest.raises(ToolError, match="no event with uid"):
        _run(ts, "calendar.delete", {"uid": a["uid"]})
    assert not [p for p in ics.parent.iterdir() if p.name.endswith(".tmp")]  # no temp files left behind


def test_attendees_are_an_invite_which_is_the_send_tier(tmp_path):
    ts = _tools(tmp_path / "cal.ics")
    assert {n: a.risk for n, a in ts.actions.items()} == {
        "calendar.list": "read",
        "calendar.create": "write",
        "calendar.invite": "send",
        "calendar.move": "write",
        "calendar.delete": "delete",
    }
    base = {"summary": "Sync", "start": "2025-06-01T09:00Z", "end": "2025-06-01T09:30Z"}
    with pytest.raises(ToolError, match="calendar.create does not take attendees.*calendar.invite"):
        ts.validate("calendar.create", {**base, "attendees": ["bob@example.com"]})
    with pytest.raises(ToolError, match="no attendees other than the owner"):
        ts.validate("calendar.invite", {**base, "attendees": [OWNER]})
    r = _run(ts, "calendar.invite", {**base, "attendees": ["Bob <bob@example.com>", OWNER, "carol@example.org"]})
    assert r["attendees"] == ["bob@example.com", "carol@example.org"] and r["organizer"] == OWNER
    ev = Calendar.from_ical((tmp_path / "cal.ics").read_bytes()).walk("VEVENT")[0]
    assert ev["ATTENDEE"][0].params["CN"] == "Bob" and ev["ATTENDEE"][0].params["PARTSTAT"] == "NEEDS-ACTION"


def test_concurrent_writers_lose_no_events(tmp_path):
    ics = tmp_path / "cal.ics"
    errors: list[Exception] = []
    shared = _tools(ics)

    def writer(k: int) -> None:
        # two writers share one tool (threads of one agent); two have their own, like other processes
        ts = shared if k < 2 else _tools(ics)
        try:
            for i in range(8):
                _run(
                    ts,
                    "calendar.create",
                    {
                        "summary": f"w{k}-{i}",
                        "start": f"2025-07-{k + 1:02d}T{i:02d}:00Z",
                        "end": f"2025-07-{k + 1:02d}T{i:02d}:30Z",
                    },
                )
        except Exception as exc:  # noqa: BLE001 -- reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    summaries = sorted(e["summary"] for e in _run(_tools(ics), "calendar.list", {"limit": 1000})["events"])
    assert summaries == sorted(f"w{k}-{i}" for k in range(4) for i in range(8))


@pytest.mark.parametrize(
    "content, why",
    [
        (b"this is not a calendar\n", "not a valid iCalendar file"),
        (b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:x\r\n", "not a valid iCalendar file"),  # truncated
        (b"BEGIN:VEVENT\r\nUID:x\r\nEND:VEVENT\r\n", "top component is VEVENT"),
        (
            b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:x\r\nDTSTART:notadate\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
            "VEVENT with an unreadable DTSTART",
        ),
        (b"\xff\xfe\x00garbage", "not a valid iCalendar file"),
    ],
)
def test_a_corrupt_file_is_named_and_never_overwritten(tmp_path, content, why):
    ics = tmp_path / "cal.ics"
    ics.write_bytes(content)
    ts = _tools(ics)
    for name, args in [
        ("calendar.list", {}),
        ("calendar.create", {"summary": "x", "start": "2025-01-01T09:00Z", "end": "2025-01-01T10:00Z"}),
        ("calendar.delete", {"uid": "x"}),
    ]:
        with pytest.raises(ToolError, match=f"{ics}.*{why}.*left unchanged"):
            _run(ts, name, args)
    assert ics.read_bytes() == content


FOREIGN = (
    b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Other//App//EN\r\nX-WR-CALNAME:Work\r\n"
    b"BEGIN:VEVENT\r\nUID:allday@other\r\nSUMMARY:Holiday\r\nDTSTART;VALUE=DATE:20250505\r\nEND:VEVENT\r\n"
    b"BEGIN:VEVENT\r\nUID:tz@other\r\nSUMMARY:Tokyo call\r\nDTSTART;TZID=Asia/Tokyo:20250506T090000\r\n"
    b"DURATION:PT1H\r\nX-CUSTOM:keep me\r\nEND:VEVENT\r\n"
    b"BEGIN:VEVENT\r\nUID:weekly@other\r\nSUMMARY:Standup\r\nDTSTART:20250501T010000Z\r\n"
    b"DTEND:20250501T011500Z\r\nRRULE:FREQ=WEEKLY\r\nEND:VEVENT\r\n"
    b"BEGIN:VTODO\r\nUID:todo@other\r\nSUMMARY:Taxes\r\nEND:VTODO\r\nEND:VCALENDAR\r\n"
)


def test_an_existing_calendar_is_read_and_what_we_do_not_touch_is_kept(tmp_path):
    ics = tmp_path / "cal.ics"
    ics.write_bytes(FOREIGN)
    ts = _tools(ics)
    events = {e["uid"]: e for e in _run(ts, "calendar.list", {})["events"]}
    assert events["allday@other"]["all_day"] and events["allday@other"]["start"] == "2025-05-05"
    assert events["allday@other"]["end"] == "2025-05-06"
    assert events["tz@other"]["start"] == "2025-05-06T09:00:00+09:00"
    assert events["tz@other"]["end"] == "2025-05-06T10:00:00+09:00"
    assert events["weekly@other"]["recurring"] is True
    on_the_6th = _run(ts, "calendar.list", {"from": "2025-05-06", "to": "2025-05-06"})["events"]
    assert [e["uid"] for e in on_the_6th] == ["tz@other"]
    with pytest.raises(ToolError, match="recurring"):
        _run(ts, "calendar.move", {"uid": "weekly@other", "start": "2025-05-02T01:00Z", "end": "2025-05-02T02:00Z"})
    moved = _run(ts, "calendar.move", {"uid": "tz@other", "start": "2025-05-07T00:00Z", "end": "2025-05-07T01:00Z"})
    assert moved["previous"]["start"] == "2025-05-06T09:00:00+09:00" and moved["end"] == "2025-05-07T01:00:00+00:00"
    text = ics.read_bytes()
    for kept in (
        b"X-WR-CALNAME:Work",
        b"X-CUSTOM:keep me",
        b"BEGIN:VTODO",
        b"RRULE:FREQ=WEEKLY",
        b"PRODID:-//Other//App//EN",
    ):
        assert kept in text
    assert b"DURATION" not in text  # replaced by DTEND on move


def test_an_empty_file_is_a_new_calendar(tmp_path):
    ics = tmp_path / "cal.ics"
    ics.write_bytes(b"")
    _run(_tools(ics), "calendar.create", {"summary": "x", "start": "2025-01-01T09:00Z", "end": "2025-01-01T10:00Z"})
    assert b"PRODID:-//so8t//agent calendar//EN" in ics.read_bytes()


EVENT = {"summary": "x", "start": "2025-01-01T09:00Z", "end": "2025-01-01T10:00Z"}


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("calendar.create", {**EVENT, "color": "red"}, "color: Extra inputs are not permitted"),
        ("calendar.create", {**EVENT, "end": "2025-01-01T08:00Z"}, "must be after start"),
        ("calendar.create", {**EVENT, "end": EVENT["start"]}, "must be after start"),
        ("calendar.create", {**EVENT, "start": "2025-01-01"}, "has no time of day"),
        ("calendar.create", {**EVENT, "start": "tomorrow 9am"}, "is not an ISO 8601 date-time"),
        ("calendar.create", {**EVENT, "start": 1735722000}, "start: Input should be a valid string"),
        ("calendar.create", {**EVENT, "summary": "a\r\nATTENDEE:mailto:x@evil.test"}, "control character"),
        ("calendar.create", {**EVENT, "summary": ""}, "summary: String should have at least 1 character"),
        ("calendar.create", {"summary": "x", "start": "2025-01-01T09:00Z"}, "end: Field required"),
        ("calendar.invite", {**EVENT, "attendees": "bob@example.com"}, "attendees: Input should be a valid list"),
        ("calendar.invite", {**EVENT, "attendees": ["bob@example.com\r\nBcc: x@evil.test"]}, "control character"),
        ("calendar.invite", {**EVENT, "attendees": ["not-an-address"]}, "not a valid email address"),
        (
            "calendar.move",
            {"uid": "u", "start": "2025-01-01T09:00Z", "end": "2025-01-01T10:00Z", "summary": "y"},
            "summary: Extra inputs are not permitted",
        ),
        ("calendar.delete", {"uid": 7}, "uid: Input should be a valid string"),
        ("calendar.list", {"from": "last week"}, "from: Value error"),
        ("calendar.list", {"from_": "2025-01-01"}, "from_: Extra inputs are not permitted"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, name, args, message):
    ts = _tools(tmp_path / "cal.ics")
    with pytest.raises(ToolError, match=message):
        ts.validate(name, args)
    assert not (tmp_path / "cal.ics").exists()


def test_move_of_an_unknown_uid_changes_nothing(tmp_path):
    ics = tmp_path / "cal.ics"
    ts = _tools(ics)
    _run(ts, "calendar.create", EVENT)
    before = ics.read_bytes()
    with pytest.raises(ToolError, match="no event with uid 'nope'"):
        _run(ts, "calendar.move", {"uid": "nope", "start": "2025-01-02T09:00Z", "end": "2025-01-02T10:00Z"})
    assert ics.read_bytes() == before


def test_a_bad_owner_is_a_construction_error(tmp_path):
    with pytest.raises(ValueError):
        calendar_tool(tmp_path / "cal.ics", owner="me")
