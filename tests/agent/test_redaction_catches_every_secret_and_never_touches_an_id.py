"""Redaction (issue 13, item 10): every secret of an English / Japanese corpus is removed, full-width
and dotted forms included, before a preview is cut; no id or hash field is ever changed, and the
links from the audit log to the approval queue survive a round trip through both."""

from __future__ import annotations

import json
import os
import re
import unicodedata
import uuid
from itertools import count
from pathlib import Path

import pytest

from so8t.agent import approvals as approvals_mod
from so8t.agent.approvals import ApprovalQueue
from so8t.agent.audit import GATE_ESCALATE, AuditLog, Redactor, verify
from so8t.agent.router import _preview
from so8t.agent.service import approval_audit_record
from so8t.canonical import canonical_json, hash_text

CORPUS = json.loads((Path(__file__).parents[1] / "fixtures" / "redaction_corpus.json").read_text("utf-8"))
CASES = CORPUS["cases"]


def nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def leftovers(secret: str, out: str) -> list[str]:
    """Pieces of ``secret`` still in ``out``: the whole (as written or NFKC) or a run of 4+ of its digits."""
    digits = re.sub(r"[^0-9]", "", nfkc(secret))
    found = [s for s in (secret, nfkc(secret)) if s in out or s in nfkc(out)]
    return found + [run for run in re.findall(r"[0-9]{4,}", nfkc(out)) if len(digits) >= 8 and run in digits]


def _id(case) -> str:
    return f"{case['lang']}-{case['tag']}-{case['text'][:40]}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_every_secret_in_the_corpus_is_redacted(case):
    out = Redactor().redact(case["text"])
    for secret in case["secrets"]:
        assert not leftovers(secret, out), out
    assert f"[REDACTED:{case['tag']}]" in out, out


def test_the_corpus_covers_both_languages_every_tag_and_full_width_forms():
    assert {c["lang"] for c in CASES} == {"en", "ja"}
    assert {c["tag"] for c in CASES} >= {"email", "credit_card", "phone", "my_number", "api_key", "password"}
    assert sum(nfkc(s) != s for c in CASES for s in c["secrets"]) >= 10


@pytest.mark.parametrize("text", CORPUS["ordinary"])
def test_ordinary_text_is_left_exactly_as_written(text):
    assert Redactor().redact(text) == text


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_redacting_twice_changes_nothing(case):
    once = Redactor().redact(case["text"])
    assert Redactor().redact(once) == once


def test_the_original_text_is_kept_outside_the_secret():
    # matching runs on the NFKC view, but the stored text keeps its full-width letters and kana
    out = Redactor().redact("ＴＥＬ：０９０－１２３４－５６７８（ﾀﾛｳ）")
    assert out == "ＴＥＬ：[REDACTED:phone]（ﾀﾛｳ）"
    # characters that NFKC expands ("㈱" -> "(株)") or composes ("ｶﾞ" -> "ガ") before the secret
    assert Redactor().redact("㈱ｶﾞｽ ｐｗ ０３（１２３４）５６７８ ﬁn") == "㈱ｶﾞｽ ｐｗ [REDACTED:phone] ﬁn"


# --- previews: redact first, then cut -----------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        "4111 1111 1111 1111",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "０９０－１２３４－５６７８",
        "taro.yamada@example.co.jp",
    ],
)
def test_a_secret_cut_at_the_preview_limit_is_still_redacted(tmp_path, secret):
    text = "x" * (200 - len(secret) // 2) + " " + secret + " and more text after it"
    convo = [{"role": "user", "content": text}]
    log = AuditLog(tmp_path / "audit.jsonl")
    rec = log.append("gate.refuse", {"preview": _preview(convo, log.redactor)})
    stored = rec["data"]["preview"]
    assert stored.endswith("…") and "[RED" in stored  # the tag is cut, not the secret
    half = re.sub(r"[^0-9A-Za-z]", "", nfkc(secret))[:6]
    assert half not in re.sub(r"[^0-9A-Za-z]", "", nfkc(stored).replace("REDACTED", ""))
    assert log.preview("y" * 195 + " 4111 1111 1111 1111", 200) == "y" * 195 + " [RED…"


# --- ids and hashes -----------------------------------------------------------------------------

# Hex ids and hashes full of digit runs that look like cards, phones and My Numbers.
DIGITY = [
    "a1b2c3d4123456789012abcdefabcdef",
    "4111111111111111abcdefabcdefabcd",
    "e09012345678" + "f" * 20,
    "ab" + "123456789012" + "cd" * 9,
    "0" * 31 + "a",
]


def id_fields(value: str) -> dict:
    return {
        "id": value,
        "approval_id": value,
        "request_hash": value * 2,
        "input_hash": value,
        "prev_hash": value,
        "hash": value,
        "policy_version": "123456789012",
        "model_version": "090-1234-5678",
        "parent_id": value,
        "call_hash": value,
        "tool_call_id": "4111111111111111",
    }


@pytest.mark.parametrize("value", DIGITY)
def test_no_id_or_hash_field_is_ever_changed(value):
    record = {
        **id_fields(value),
        "decision": {"input_hash": value, "policy_version": "123456789012"},
        "steps": [id_fields(value)],
    }
    assert Redactor().redact(record) == record


@pytest.mark.parametrize("value", DIGITY)
def test_ids_inside_text_are_not_cut_into(value):
    dashed = str(uuid.UUID("12345678-1234-1234-1234-123456789012"))
    text = json.dumps({"tool": "mail.send", "arguments": {"draft_id": value, "ref": dashed}})
    assert Redactor().redact(text) == text
    assert (
        Redactor().redact(f"request {value} waits; card 4111111111111111")
        == f"request {value} waits; card [REDACTED:credit_card]"
    )


def _digit_run_hash(i: int) -> dict:
    """A request whose SHA-256 holds a 12-19 digit run (what the old redactor took for a number)."""
    for j in count(i * 10_000):
        req = {"kind": "chat", "messages": [{"role": "user", "content": f"request {j}"}]}
        if re.search(r"(?<![0-9])[0-9]{12,19}(?![0-9])", hash_text(canonical_json(req))):
            return req
    raise AssertionError("unreachable")


def test_audit_to_queue_links_survive_a_round_trip(tmp_path, monkeypatch):
    ids = iter(uuid.UUID(hex=h) for h in DIGITY)  # the queue's first ids are the digit-rich ones
    monkeypatch.setattr(approvals_mod.uuid, "uuid4", lambda: next(ids, None) or uuid.UUID(bytes=os.urandom(16)))
    log = AuditLog(tmp_path / "audit.jsonl")  # the default redactor, as the service uses it
    queue = ApprovalQueue(f"sqlite:///{tmp_path}/q.db", on_event=lambda n, d: log.append(n, approval_audit_record(d)))
    decision = {"action": "ESCALATE", "input_hash": DIGITY[0] * 2, "policy_version": "123456789012"}
    for i in range(12):
        item = queue.submit(_digit_run_hash(i), decision, "alice")
        log.append(
            GATE_ESCALATE,
            {
                "preview": "電話番号は０９０－１２３４－５６７８",
                "decision": decision,
                "approval_id": item.id,
                "request_hash": item.request_hash,
            },
        )
        if i % 3 == 0:
            queue.approve(item.id, "carol")
        elif i % 3 == 1:
            queue.edit(
                item.id,
                {"kind": "chat", "messages": [{"role": "user", "content": "edited"}]},
                "carol",
                lambda r: {"action": "ESCALATE"},
            )
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text("utf-8").splitlines()]
    links = 0
    for rec in records:
        data = rec["data"]
        approval_id = data.get("approval_id") or data.get("id")
        assert approval_id is not None, rec
        item = queue.get(approval_id)  # raises if the id was mangled
        assert data["request_hash"] == item.request_hash
        for other in ("parent_id", "superseded_by"):
            if data.get(other):
                assert queue.get(data[other])
        if rec["event"] == GATE_ESCALATE:
            assert data["decision"] == decision and "[REDACTED:phone]" in data["preview"]
        links += 1
    assert links == len(records) and links > 30
    assert verify(tmp_path / "audit.jsonl").ok


def test_id_keys_are_configurable():
    assert Redactor.from_config({"id_keys": None}).redact({"id": "4111111111111111"}) == {
        "id": "[REDACTED:credit_card]"
    }
    only = Redactor.from_config({"id_keys": "^ticket_no$"})
    assert only.redact({"ticket_no": "090-1234-5678", "id": "090-1234-5678"}) == {
        "ticket_no": "090-1234-5678",
        "id": "[REDACTED:phone]",
    }
    # an id key keeps scalars only: a structure under it is still walked
    assert Redactor().redact({"id": {"note": "call 090-1234-5678"}}) == {"id": {"note": "call [REDACTED:phone]"}}
