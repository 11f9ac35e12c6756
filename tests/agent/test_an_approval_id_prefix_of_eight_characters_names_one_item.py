"""Issue 17, item 9: the approvals page shows 12-character ids, and `so8t approvals show` wanted
all 32. ApprovalQueue.resolve_id turns a unique prefix of at least 8 characters into the full id;
an ambiguous, unknown, too short or non-hexadecimal one is a clear error. get() stays exact."""

from __future__ import annotations

import uuid

import pytest

from so8t.agent.approvals import AmbiguousApprovalId, ApprovalNotFound, ApprovalQueue

ESCALATE = {"action": "ESCALATE", "status": "ok"}


@pytest.fixture
def q(tmp_path):
    with ApprovalQueue(f"sqlite:///{tmp_path / 'approvals.db'}") as queue:
        yield queue


def _with_id(q: ApprovalQueue, id: str, monkeypatch) -> str:
    """Submit an item whose id is ``id``: two random ids sharing 8 characters would take ~2^16
    submissions, so the uuid4 that submit draws is fixed for this one call."""
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(hex=id))
    item = q.submit({"messages": [{"role": "user", "content": f"request {id[:4]}"}]}, ESCALATE, "alice")
    monkeypatch.undo()
    return item.id


def test_the_twelve_characters_the_page_shows_name_the_item(q):
    a = q.submit({"messages": [{"role": "user", "content": "Wire 5,000 EUR"}]}, ESCALATE, "bob")
    assert q.resolve_id(a.id[:12]) == a.id
    assert q.resolve_id(a.id[:8].upper()) == a.id and q.resolve_id(f"  {a.id[:10]} ") == a.id
    assert q.resolve_id(a.id) == a.id


def test_a_prefix_two_ids_share_is_ambiguous_and_names_both(q, monkeypatch):
    one = _with_id(q, "abcdef12" + "1" * 24, monkeypatch)
    two = _with_id(q, "abcdef12" + "2" * 24, monkeypatch)
    with pytest.raises(AmbiguousApprovalId) as err:
        q.resolve_id("abcdef12")
    assert one in str(err.value) and two in str(err.value) and "2 ids start with it" in str(err.value)
    assert "give more" in str(err.value)
    assert q.resolve_id("abcdef121") == one  # one more character settles it


def test_an_unknown_prefix_names_the_closest_id(q, monkeypatch):
    known = _with_id(q, "0123456789abcdef" * 2, monkeypatch)
    with pytest.raises(ApprovalNotFound) as err:
        q.resolve_id("0123456788ab")  # one character mistyped
    assert "no approval whose id starts with '0123456788ab'" in str(err.value)
    assert f"did you mean {known[:12]!r}" in str(err.value)
    with pytest.raises(ApprovalNotFound, match="approvals list"):
        q.resolve_id("ffffffffffff")


def test_an_empty_queue_says_so(q):
    with pytest.raises(ApprovalNotFound, match="the queue is empty"):
        q.resolve_id("abcdef12")


@pytest.mark.parametrize(
    "given, says",
    [
        ("abc1234", "too short: give at least 8"),
        ("row-abcdef12", "ids are hexadecimal"),
        ("abcd%123", "ids are hexadecimal"),
        ("", "ids are hexadecimal"),
    ],
)
def test_a_short_or_non_hex_prefix_is_refused_before_any_lookup(q, given, says):
    with pytest.raises(ValueError, match=says):
        q.resolve_id(given)


def test_get_takes_only_the_full_id(q):
    """The HTTP status route (/v1/approvals/{id}, no token) uses get: a prefix must not widen it."""
    a = q.submit({"messages": [{"role": "user", "content": "x"}]}, ESCALATE, "bob")
    with pytest.raises(ApprovalNotFound):
        q.get(a.id[:12])
