"""The audit log: chaining, redaction, crash recovery, and verify naming each kind of tampering."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from so8t.agent import audit
from so8t.agent.audit import (
    GENESIS,
    AuditLog,
    Problem,
    Redactor,
    VerifyReport,
    canonical_bytes,
    format_record,
    format_report,
    key_from_env,
    record_hash,
    tail,
    verify,
)

KEY = b"test-audit-key"


# --- helpers ------------------------------------------------------------------------------------


def plain_log(path: Path, key: bytes | None = None) -> AuditLog:
    return AuditLog(path, redact=Redactor({}, secret_keys=None), key=key)


def make_log(path: Path, n: int = 6, key: bytes | None = None) -> list[dict]:
    log = plain_log(path, key)
    return [log.append("gate.refuse", {"i": i, "prompt": f"request {i}"}) for i in range(n)]


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def encode(rec: dict) -> bytes:
    return (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")


def forged(seq: int, prev: str, key: bytes | None = None, **data) -> dict:
    rec = {"seq": seq, "ts": "2026-01-01T00:00:00.000000Z", "event": "gate.allow", "data": data, "prev": prev}
    rec["hash"] = record_hash(rec, key)
    return rec


def found(report: VerifyReport) -> list[tuple[str, int]]:
    return [(p.kind, p.line) for p in report.problems]


# --- storage and chaining -----------------------------------------------------------------------


def test_records_are_chained_and_hashed(tmp_path):
    path = tmp_path / "audit.jsonl"
    recs = make_log(path, 4)
    stored = [json.loads(line) for line in lines_of(path)]
    assert stored == recs
    assert [r["seq"] for r in stored] == [0, 1, 2, 3]
    assert stored[0]["prev"] == GENESIS
    for before, rec in zip(stored, stored[1:], strict=False):
        assert rec["prev"] == before["hash"]
    for rec in stored:
        assert list(rec) == ["seq", "ts", "event", "data", "prev", "hash"]
        body = {k: v for k, v in rec.items() if k != "hash"}
        canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert canonical_bytes(rec) == canon
        assert rec["hash"] == hashlib.sha256(canon).hexdigest()
        assert rec["ts"].endswith("Z") and rec["ts"][:4].isdigit()
    assert verify(path) == VerifyReport(ok=True, records=4, head_hash=stored[-1]["hash"], problems=[])


def test_japanese_stays_readable(tmp_path):
    path = tmp_path / "audit.jsonl"
    plain_log(path).append("gate.escalate", {"prompt": "本番DBのテーブルを削除して。"})
    raw = path.read_bytes()
    assert "本番DBのテーブルを削除して。".encode() in raw and b"\\u" not in raw
    assert verify(path).ok


def test_append_redacts_by_default(tmp_path):
    path = tmp_path / "audit.jsonl"
    rec = AuditLog(path).append(
        "gate.refuse", {"prompt": "mail taro@example.com, パスワード：hunter2", "args": {"password": "hunter2"}}
    )
    text = path.read_text("utf-8")
    assert "taro@example.com" not in text and "hunter2" not in text
    assert rec["data"] == {
        "prompt": "mail [REDACTED:email], [REDACTED:password]",
        "args": {"password": "[REDACTED:secret_key]"},
    }
    assert json.loads(text) == rec


def test_append_stores_plain_json_that_rehashes(tmp_path):
    path = tmp_path / "audit.jsonl"
    rec = plain_log(path).append(
        "gate.error", {1: (1, 2), "p": Path("/x"), "nan": float("nan"), "s": {3}, "bad": "\ud800"}
    )
    assert rec["data"] == {"1": [1, 2], "p": "/x", "nan": "nan", "s": [3], "bad": "?"}
    assert verify(path).ok


def test_append_rejects_bad_input(tmp_path):
    log = plain_log(tmp_path / "audit.jsonl")
    with pytest.raises(ValueError):
        log.append("", {})
    with pytest.raises(TypeError):
        log.append("gate.refuse", ["not", "a", "dict"])  # type: ignore[arg-type]
    assert log.append("gate.refuse")["data"] == {}


def test_state_is_read_from_the_file_not_memory(tmp_path):
    path = tmp_path / "audit.jsonl"
    a, b = plain_log(path), plain_log(path)
    seqs = [log.append("x", {"n": n})["seq"] for n, log in enumerate([a, b, a, a, b])]
    assert seqs == [0, 1, 2, 3, 4]
    assert verify(path).ok


def test_append_never_rewrites_earlier_bytes(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path, 3)
    before = path.read_bytes()
    plain_log(path).append("approval.approved", {"id": 7})
    assert path.read_bytes().startswith(before)


_WRITER = """
import sys
from so8t.agent.audit import AuditLog, Redactor
log = AuditLog(sys.argv[1], redact=Redactor({}, secret_keys=None))
for i in range(int(sys.argv[2])):
    log.append("proc.write", {"pid_tag": sys.argv[3], "i": i})
"""


def test_threads_and_processes_share_one_log(tmp_path):
    path = tmp_path / "audit.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "15", f"p{k}"]) for k in range(2)]
    log = plain_log(path)
    errors: list[BaseException] = []

    def work(tag: int) -> None:
        try:
            for i in range(15):
                log.append("thread.write", {"t": tag, "i": i})
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert not errors
    report = verify(path)
    assert report.ok and report.records == 75
    assert [r["seq"] for r in map(json.loads, lines_of(path))] == list(range(75))


def test_hmac_key(tmp_path):
    path = tmp_path / "audit.jsonl"
    recs = make_log(path, 3, key=KEY)
    assert recs[0]["hash"] != record_hash(recs[0])  # not the plain sha256
    assert verify(path, key=KEY).ok
    unkeyed = verify(path)  # the records say they are keyed: no key, no verdict
    assert found(unkeyed) == [("key_required", 1)]
    assert unkeyed.problems[0].detail == "this log is HMAC-keyed; set SO8T_AUDIT_KEY to verify it"
    wrong = verify(path, key=b"wrong")
    assert found(wrong) == [("edited", 1), ("edited", 2), ("edited", 3)]
    assert "wrong key?" in wrong.problems[0].detail
    with pytest.raises(TypeError):
        AuditLog(path, key="text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AuditLog(path, key=b"")


def test_key_from_env():
    assert key_from_env({"SO8T_AUDIT_KEY": "秘密"}) == "秘密".encode()
    assert key_from_env({"SO8T_AUDIT_KEY": ""}) is None
    assert key_from_env({}) is None


# --- crash safety -------------------------------------------------------------------------------

_LOOPER = """
import sys
from so8t.agent.audit import AuditLog
log = AuditLog(sys.argv[1])
i = 0
while True:
    rec = log.append("test.loop", {"i": i, "text": "監査ログ" * 300})
    print(rec["seq"], flush=True)  # printed only after the record is written and fsync-ed
    i += 1
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_sigkill_mid_write_loses_nothing(tmp_path):
    path = tmp_path / "audit.jsonl"
    child = subprocess.Popen([sys.executable, "-c", _LOOPER, str(path)], stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        while len(acked) < 30:
            line = child.stdout.readline()
            assert line, "writer exited early"
            acked.append(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        rest = child.communicate(timeout=30)[0]
    assert child.returncode == -signal.SIGKILL
    acked += [int(s) for s in rest.split()]

    # Simulate a write cut short: half a record, no newline (adds to any tail the kill left).
    with open(path, "ab") as f:
        f.write('{"seq": 99999, "ts": "2026-01-01T00:00:00Z", "event": "gate.refuse", "data": {"p": "途中'.encode())
    raw = path.read_bytes()
    torn = raw[raw.rfind(b"\n") + 1 :]
    n_lines = raw.count(b"\n") + 1
    assert found(verify(path)) == [("torn", n_lines)]

    rec = AuditLog(path).append("test.after", {"note": "after the crash"})
    stored = [json.loads(line) for line in lines_of(path)]
    seqs = [r["seq"] for r in stored]
    assert set(acked) <= set(seqs)  # every acknowledged record survived
    assert seqs == list(range(len(seqs)))
    recovered = stored[-2]
    assert recovered["event"] == "audit.recovered" and stored[-1] == rec
    assert recovered["data"]["torn_bytes"] == len(torn)
    assert recovered["data"]["sha256"] == hashlib.sha256(torn).hexdigest()
    sides = list(tmp_path.glob("audit.jsonl.torn-*"))
    assert [s.name for s in sides] == [recovered["data"]["side_file"]]
    assert sides[0].read_bytes() == torn  # the evidence is kept byte for byte
    report = verify(path)
    assert report.ok and report.records == len(stored) and report.head_hash == rec["hash"]


def test_torn_tail_is_set_aside_once(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path, 2)
    with open(path, "ab") as f:
        f.write(b'{"seq": 2, "ts"')
    log = plain_log(path)
    log.append("a", {})
    log.append("b", {})
    assert [r["event"] for r in tail(path)] == ["gate.refuse", "gate.refuse", "audit.recovered", "a", "b"]
    assert len(list(tmp_path.glob("audit.jsonl.torn-*"))) == 1
    assert verify(path).ok


def test_append_steps_over_a_garbage_last_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    recs = make_log(path, 2)
    with open(path, "ab") as f:
        f.write(b"garbage\n")
    rec = plain_log(path).append("after", {})
    assert rec["seq"] == 2 and rec["prev"] == recs[-1]["hash"]
    assert found(verify(path)) == [("malformed", 3)]


# --- verify: each kind of tampering -------------------------------------------------------------
# make_log writes 6 records: line k holds seq k-1.


def test_verify_missing_and_empty(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        verify(missing)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        tail(missing)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert verify(empty) == VerifyReport(ok=True, records=0, head_hash=GENESIS, problems=[])
    assert tail(empty) == []
    assert format_report(verify(empty)) == f"OK: 0 records, head {GENESIS}"


def test_verify_edited_field(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path)
    lines = lines_of(path)
    rec = json.loads(lines[2])
    rec["data"]["prompt"] = "something harmless"
    lines[2] = encode(rec)
    write_lines(path, lines)
    report = verify(path)
    assert found(report) == [("edited", 3)] and report.problems[0].seq == 2
    assert report.problems[0].detail == "stored hash does not match the content"  # no key hint


def test_verify_edited_and_rehashed_record(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path)
    lines = lines_of(path)
    rec = json.loads(lines[2])
    rec["event"] = "gate.allow"
    rec["hash"] = record_hash(rec)  # self-consistent, but line 4 still names the old hash
    lines[2] = encode(rec)
    write_lines(path, lines)
    assert found(verify(path)) == [("edited", 3)]


def test_verify_deleted_middle_record(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path)
    lines = lines_of(path)
    del lines[2]
    write_lines(path, lines)
    report = verify(path)
    assert found(report) == [("deleted", 3)]
    assert report.problems[0].seq == 3 and "seq 2" in report.problems[0].detail


def test_verify_deleted_first_and_several(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path)
    lines = lines_of(path)
    write_lines(path, lines[1:])
    assert found(verify(path)) == [("deleted", 1)]
    write_lines(path, lines[:2] + lines[4:])
    report = verify(path)
    assert found(report) == [("deleted", 3)] and "2 record(s)" in report.problems[0].detail


def _insert_cases(recs: list[dict]) -> dict[str, bytes]:
    h = [r["hash"] for r in recs]
    return {
        "next seq, prev chains": encode(forged(3, h[2], note="forged")),
        "next seq, bogus prev": encode(forged(3, "ab" * 32, note="forged")),
        "repeated seq": encode(forged(2, h[1], note="forged")),
        "far seq": encode(forged(40, "cd" * 32, note="forged")),
        "replayed line": encode(recs[1]),
    }


@pytest.mark.parametrize(
    "case", ["next seq, prev chains", "next seq, bogus prev", "repeated seq", "far seq", "replayed line"]
)
def test_verify_inserted_record(tmp_path, case):
    path = tmp_path / "audit.jsonl"
    recs = make_log(path)
    lines = lines_of(path)
    lines.insert(3, _insert_cases(recs)[case])  # between seq 2 (line 3) and seq 3, becomes line 4
    write_lines(path, lines)
    report = verify(path)
    assert found(report) == [("inserted", 4)], format_report(report)


def test_verify_inserted_first_record(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path)
    write_lines(path, [encode(forged(0, GENESIS, note="forged"))] + lines_of(path))
    assert found(verify(path)) == [("inserted", 1)]


def test_verify_swapped_records(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path)
    lines = lines_of(path)
    lines[2], lines[3] = lines[3], lines[2]
    write_lines(path, lines)
    report = verify(path)
    assert found(report) == [("reordered", 3)]
    assert "lines 3 and 4" in report.problems[0].detail


def test_verify_moved_record(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path)
    lines = lines_of(path)
    moved = lines.pop(2)
    lines.insert(4, moved)  # seq 0 1 3 4 2 5
    write_lines(path, lines)
    assert found(verify(path)) == [("reordered", 5)]


def test_verify_torn_last_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 40])
    report = verify(path)
    assert found(report) == [("torn", 6)] and report.records == 5


def test_verify_malformed_lines(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path)
    lines = lines_of(path)
    rec = json.loads(lines[4])
    del rec["hash"]
    write_lines(path, lines[:2] + [b"not json\n"] + lines[3:4] + [encode(rec), b"\n"] + lines[5:])
    report = verify(path)
    assert found(report) == [("malformed", 3), ("malformed", 5), ("malformed", 6)]
    assert report.problems[1].detail == "missing field 'hash'" and report.problems[1].seq == 4
    assert report.problems[2].detail == "empty line"


def test_verify_reports_a_line_with_a_number_too_long_to_read_as_malformed(tmp_path):
    # json.loads raises a plain ValueError (no .msg) for an integer over Python's 4300-digit limit;
    # verify used to crash on it with AttributeError instead of naming the line.
    path = tmp_path / "audit.jsonl"
    make_log(path)
    lines = lines_of(path)
    write_lines(path, lines[:2] + [b'{"seq": ' + b"1" * 5000 + b"}\n"] + lines[3:])
    report = verify(path)
    assert found(report)[0] == ("malformed", 3)
    assert "digits" in report.problems[0].detail


def test_recomputed_chain_passes_plain_but_not_hmac(tmp_path):
    def tamper(path: Path) -> None:
        """Edit line 3 and recompute every later hash (the attacker has no key)."""
        recs = [json.loads(line) for line in lines_of(path)]
        recs[2]["data"]["prompt"] = "rewritten"
        for i in range(2, len(recs)):
            recs[i]["prev"] = recs[i - 1]["hash"]
            recs[i]["hash"] = record_hash(recs[i])
        write_lines(path, [encode(r) for r in recs])

    plain = tmp_path / "plain.jsonl"
    make_log(plain)
    tamper(plain)
    assert verify(plain).ok  # the documented limit of an unkeyed chain

    keyed = tmp_path / "keyed.jsonl"
    make_log(keyed, key=KEY)
    tamper(keyed)
    report = verify(keyed, key=KEY)
    assert not report.ok
    assert found(report) == [("downgraded", 3), ("downgraded", 4), ("downgraded", 5), ("downgraded", 6)]
    assert found(verify(keyed)) == [("key_required", 1)]


def test_append_after_tampering_keeps_the_finding(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path)
    lines = lines_of(path)
    del lines[2]
    write_lines(path, lines)
    plain_log(path).append("after", {})
    assert found(verify(path)) == [("deleted", 3)]


def test_format_report():
    ok = VerifyReport(ok=True, records=3, head_hash="ab" * 32)
    assert format_report(ok) == f"OK: 3 records, head {'ab' * 32}"
    bad = VerifyReport(
        ok=False,
        records=5,
        head_hash="cd" * 32,
        problems=[
            Problem(3, 2, "edited", "stored hash does not match the content"),
            Problem(6, None, "torn", "last line has no newline"),
        ],
    )
    assert format_report(bad).splitlines() == [
        f"FAILED: 5 records, 2 problem(s), head {'cd' * 32}",
        "line 3 (seq 2): edited: stored hash does not match the content",
        "line 6 (seq ?): torn: last line has no newline",
    ]


# --- tail and format_record ---------------------------------------------------------------------


def test_tail_reads_from_the_end(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    recs = make_log(path, 12)
    with open(path, "ab") as f:
        f.write(b'{"seq": 12, "ev')  # torn tail is skipped
    monkeypatch.setattr(audit, "_CHUNK", 7)  # force many chunk boundaries
    assert tail(path, 5) == recs[-5:]
    assert tail(path, 100) == recs
    assert tail(path, 0) == []


def test_format_record():
    rec = {"seq": 7, "ts": "2026-01-01T00:00:00.000000Z", "event": "gate.refuse", "data": {"prompt": "削除して" * 100}}
    line = format_record(rec)
    assert line.startswith('     7 2026-01-01T00:00:00.000000Z gate.refuse {"prompt":"削除して')
    assert line.endswith("…") and "\n" not in line
    summary = line.split(" gate.refuse ", 1)[1]
    assert len(summary) == 160
    assert format_record({"seq": 1, "ts": "t", "event": "e", "data": {"a": 1}}) == '     1 t e {"a":1}'


# --- redaction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, secret, tag",
    [
        ("mail taro.yamada+x@example.co.jp today", "taro.yamada+x@example.co.jp", "email"),
        ("連絡先はtaro@example.comです", "taro@example.com", "email"),
        ("key sk-proj-abcdefghijklmnop1234 ok", "sk-proj-abcdefghijklmnop1234", "api_key"),
        ("キーはsk-abcdefghijklmnopqrstuvwxyzです", "sk-abcdefghijklmnopqrstuvwxyz", "api_key"),
        ("AWSキーAKIAIOSFODNN7EXAMPLEです", "AKIAIOSFODNN7EXAMPLE", "api_key"),
        ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "api_key"),
        ("Authorization: Bearer abc.DEF-123_xyz", "abc.DEF-123_xyz", "bearer"),
        ("login with password=hunter2 please", "hunter2", "password"),
        ("パスワード：ひみつ123", "ひみつ123", "password"),
        ("暗証番号 = 4321", "4321", "password"),
        ("card 4111 1111 1111 1111 expires", "4111 1111 1111 1111", "credit_card"),
        ("カード番号4111-1111-1111-1111です", "4111-1111-1111-1111", "credit_card"),
        ("call me on 090-1234-5678", "090-1234-5678", "phone"),
        ("電話は03-1234-5678まで", "03-1234-5678", "phone"),
        ("携帯09012345678", "09012345678", "phone"),
        ("from abroad +81 90 1234 5678", "+81 90 1234 5678", "phone"),
        ("US office +1 415 555 2671", "+1 415 555 2671", "phone"),
        ("マイナンバーは123456789012です", "123456789012", "my_number"),
        ("my number 1234 5678 9012", "1234 5678 9012", "my_number"),
    ],
)
def test_redactor_defaults(text, secret, tag):
    out = Redactor().redact(text)
    assert secret not in out and f"[REDACTED:{tag}]" in out


@pytest.mark.parametrize(
    "text",
    [
        "order 3 items at 10:30",
        "due 2026-12-01",
        "meeting 2026-12-01 10:30:00 in room 12",
        "version 1.2.3 on port 8080, 100 files",
        "01-12-2026",
        "bypass: true",
        "合計 12,345円",
        "3時に会議室Bで打ち合わせ",
        "Please list the files in my reports folder.",
    ],
)
def test_redactor_leaves_ordinary_text(text):
    assert Redactor().redact(text) == text


def test_redact_walks_structures_and_copies():
    data = {
        "prompt": "mail a@b.io",
        "args": ["x", ("090-1234-5678", 3)],
        "n": 4,
        "ok": True,
        "nested": {"api_key": "abc", "max_tokens": 512, "password": ""},
    }
    out = Redactor().redact(data)
    assert out == {
        "prompt": "mail [REDACTED:email]",
        "args": ["x", ["[REDACTED:phone]", 3]],
        "n": 4,
        "ok": True,
        "nested": {"api_key": "[REDACTED:secret_key]", "max_tokens": 512, "password": ""},
    }
    assert data["prompt"] == "mail a@b.io" and out is not data  # input untouched


def test_redactor_from_config():
    r = Redactor.from_config({"patterns": {"ticket": r"TCK-[0-9]{6}"}, "disable": ["phone"]})
    assert r.redact("TCK-123456 from 090-1234-5678") == "[REDACTED:ticket] from 090-1234-5678"
    assert "email" in r.names and "phone" not in r.names
    only = Redactor.from_config({"defaults": False, "patterns": {"pin": r"PIN\d{4}"}, "secret_keys": None})
    assert only.names == ["pin"]
    assert only.redact({"password": "a@b.io PIN1234"}) == {"password": "a@b.io [REDACTED:pin]"}
    assert Redactor.from_config(None).names == Redactor().names
    assert Redactor({}, secret_keys=None).redact({"password": "x"}) == {"password": "x"}


@pytest.mark.parametrize(
    "config, match",
    [
        ({"patterns": {"broken": "([a-z"}}, "broken"),
        ({"patterns": {"everything": "x*"}}, "everything"),
        ({"disable": ["no_such_pattern"]}, "no_such_pattern"),
        ({"pattern": {}}, "unknown"),
        ({"secret_keys": "(("}, "secret_keys"),
    ],
)
def test_redactor_config_errors(config, match):
    with pytest.raises(ValueError, match=match):
        Redactor.from_config(config)


# --- verify: every position of a 6-record log -----------------------------------------------------


def _fresh(tmp_path: Path) -> tuple[Path, list[dict], list[bytes]]:
    path = tmp_path / "audit.jsonl"
    recs = make_log(path)
    return path, recs, lines_of(path)


@pytest.mark.parametrize("k", range(6))
def test_every_position_edited(tmp_path, k):
    path, _, lines = _fresh(tmp_path)
    rec = json.loads(lines[k])
    rec["data"]["i"] = 99
    write_lines(path, lines[:k] + [encode(rec)] + lines[k + 1 :])
    assert found(verify(path)) == [("edited", k + 1)]


@pytest.mark.parametrize("k", range(5))  # re-hashing the last record is invisible without the head hash
def test_every_position_edited_and_rehashed(tmp_path, k):
    path, _, lines = _fresh(tmp_path)
    rec = json.loads(lines[k])
    rec["data"]["i"] = 99
    rec["hash"] = record_hash(rec)
    write_lines(path, lines[:k] + [encode(rec)] + lines[k + 1 :])
    kinds = found(verify(path))
    # Second to last: the last record then does not chain, and either could be the forgery.
    assert kinds == ([("edited", k + 1)] if k < 4 else [("inserted", k + 2)])


@pytest.mark.parametrize("k", range(5))  # dropping the last record is invisible without the head hash
def test_every_position_deleted(tmp_path, k):
    path, _, lines = _fresh(tmp_path)
    write_lines(path, lines[:k] + lines[k + 1 :])
    assert found(verify(path)) == [("deleted", k + 1)]


@pytest.mark.parametrize("k", range(6))
@pytest.mark.parametrize("prev_ok", [True, False])
def test_every_position_inserted(tmp_path, k, prev_ok):
    path, recs, lines = _fresh(tmp_path)
    prev = (recs[k - 1]["hash"] if k else GENESIS) if prev_ok else "ef" * 32
    write_lines(path, lines[:k] + [encode(forged(k, prev, note="forged"))] + lines[k:])
    assert found(verify(path)) == [("inserted", k + 1)]


def test_appended_forgery_with_bad_prev(tmp_path):
    path, recs, lines = _fresh(tmp_path)
    write_lines(path, lines + [encode(forged(6, "ef" * 32))])
    assert found(verify(path)) == [("inserted", 7)]


@pytest.mark.parametrize("k", range(5))
def test_every_position_swapped(tmp_path, k):
    path, _, lines = _fresh(tmp_path)
    lines[k], lines[k + 1] = lines[k + 1], lines[k]
    write_lines(path, lines)
    assert found(verify(path)) == [("reordered", k + 1)]


@pytest.mark.parametrize("k", range(4))
def test_every_position_moved_back(tmp_path, k):
    path, _, lines = _fresh(tmp_path)
    moved = lines.pop(k)
    lines.insert(k + 2, moved)
    write_lines(path, lines)
    assert found(verify(path)) == [("reordered", k + 3)]


def test_record_moved_up_reports_the_displaced_ones(tmp_path):
    path, _, lines = _fresh(tmp_path)
    last = lines.pop()
    lines.insert(2, last)  # seq 0 1 5 2 3 4
    write_lines(path, lines)
    assert found(verify(path)) == [("reordered", 4), ("reordered", 5), ("reordered", 6)]


def test_huge_forged_seq_does_not_hang(tmp_path):
    path, _, lines = _fresh(tmp_path)
    write_lines(path, lines[:3] + [encode(forged(10**15, "ef" * 32))])
    report = verify(path)
    assert found(report) == [("deleted", 4)] and str(10**15 - 3) in report.problems[0].detail
