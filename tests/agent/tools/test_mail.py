"""mail.draft / mail.send against a real SMTP server (aiosmtpd) on a free localhost port."""

from __future__ import annotations

import hashlib
import socket
import threading
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from so8t.agent.tools import ToolError, Toolset
from so8t.agent.tools.mail import mail_tool, parse_address
from so8t.server.sandbox import LocalSmtp

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd is a dev dependency")

SENDER = "So8t Agent <agent@example.com>"


class Inbox:
    """aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd calls it by this name
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = aiosmtpd_controller.Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()


def _tools(tmp_path: Path, port: int | None, **kw) -> Toolset:
    return Toolset(
        mail_tool(
            tmp_path / "drafts", smtp_host="127.0.0.1" if port else None, smtp_port=port or 25, sender=SENDER, **kw
        )
    )


def _run(ts: Toolset, name: str, args: dict) -> dict:
    return ts.execute(ts.validate(name, args))


JA = {
    "to": ["山田 太郎 <taro@example.jp>", "hanako@example.jp"],
    "cc": ["boss@corp.example.com"],
    "subject": "明日の会議について（資料あり）",
    "body": "山田さん\n\n明日10時の会議の資料を添付します。\nよろしくお願いします。\n",
}


def test_a_draft_is_sent_exactly_as_written_japanese_included(tmp_path, smtp):
    inbox, port = smtp
    ts = _tools(tmp_path, port)
    d = _run(ts, "mail.draft", JA)
    assert d["recipients"] == ["taro@example.jp", "hanako@example.jp", "boss@corp.example.com"]
    assert d["send_problems"] == [] and Path(d["path"]).name == f"{d['draft_id']}.eml" and not inbox.messages
    on_disk = Path(d["path"]).read_bytes()
    assert on_disk.isascii()  # RFC 2047 subject/names + base64 body: any SMTP server takes it

    shown = _run(ts, "mail.read_draft", {"draft_id": d["draft_id"]})
    assert shown["subject"] == JA["subject"] and shown["body"] == JA["body"] and shown["sha256"] == d["sha256"]

    r = _run(ts, "mail.send", {"draft_id": d["draft_id"], "expect_sha256": d["sha256"]})
    assert r["sent"] and r["refused"] == {} and r["recipients"] == d["recipients"]
    [(mail_from, rcpts, raw)] = inbox.messages
    assert mail_from == "agent@example.com" and rcpts == d["recipients"]
    assert raw.replace(b"\r\n", b"\n") == on_disk.replace(b"\r\n", b"\n")  # the exact draft went out
    got = BytesParser(policy=policy.default).parsebytes(raw)
    assert got["Subject"] == JA["subject"] and got["From"] == SENDER
    assert [a.addr_spec for a in got["To"].addresses] == ["taro@example.jp", "hanako@example.jp"]
    assert got["To"].addresses[0].display_name == "山田 太郎"
    assert got.get_body().get_content().replace("\r\n", "\n") == JA["body"]

    assert not Path(d["path"]).exists() and (tmp_path / "drafts" / "sent" / f"{d['draft_id']}.eml").exists()
    assert _run(ts, "mail.list_drafts", {})["drafts"] == []
    listed = _run(ts, "mail.list_drafts", {"include_sent": True})["drafts"]
    assert [(x["draft_id"], x["sent"], x["subject"]) for x in listed] == [(d["draft_id"], True, JA["subject"])]

    with pytest.raises(ToolError, match="already sent"):
        _run(ts, "mail.send", {"draft_id": d["draft_id"]})
    assert len(inbox.messages) == 1


def test_concurrent_sends_of_one_draft_deliver_it_once(tmp_path, smtp):
    inbox, port = smtp
    ts = _tools(tmp_path, port)
    d = _run(ts, "mail.draft", {"to": ["a@example.com"], "subject": "once", "body": "hi"})
    results: list[object] = []

    def go():
        try:
            results.append(_run(ts, "mail.send", {"draft_id": d["draft_id"]}))
        except ToolError as exc:
            results.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(inbox.messages) == 1
    assert sum(isinstance(r, dict) for r in results) == 1
    assert all("already sent" in str(r) for r in results if isinstance(r, ToolError))


def _draft(tmp_path, **kw) -> str:
    return _run(
        _tools(tmp_path, None, max_recipients=50),
        "mail.draft",
        {"to": ["a@example.com"], "subject": "s", "body": "b", **kw},
    )["draft_id"]


@pytest.mark.parametrize(
    "case",
    [
        "no smtp host",
        "domain",
        "too many",
        "bcc added on disk",
        "bcc and its hash",
        "reply-to and its hash",
        "sha256",
        "unknown id",
    ],
)
def test_refused_sends_send_nothing_and_keep_the_draft(tmp_path, smtp, case):
    inbox, port = smtp
    to = ["a@example.com"]
    kw: dict = {"allowed_domains": ["example.com", "*.example.jp"]}
    if case == "domain":
        to = ["a@example.com", "x@sub.example.jp", "leak@evil.test"]
    if case == "too many":
        to = [f"u{i}@example.com" for i in range(5)]
        kw["max_recipients"] = 4
    draft_id = _draft(tmp_path, to=to)
    path = tmp_path / "drafts" / f"{draft_id}.eml"
    args: dict = {"draft_id": draft_id}
    expect = {
        "no smtp host": "sending is not configured",
        "domain": "leak@evil.test: domain is not in the allowed",
        "too many": "5 recipients, over the limit of 4",
        "bcc added on disk": "changed on disk since mail.draft",
        "bcc and its hash": "has a Bcc header",
        "reply-to and its hash": "has a Reply-To header",
        "sha256": "changed since it was reviewed",
        "unknown id": "no draft",
    }[case]
    if case in ("bcc added on disk", "bcc and its hash", "reply-to and its hash"):
        extra = b"Reply-To: evil@example.com\r\n" if case.startswith("reply-to") else b"Bcc: spy@example.com\r\n"
        path.write_bytes(extra + path.read_bytes())
    if case.endswith("and its hash"):  # someone who rewrites the recorded hash too: the headers are still checked
        path.with_suffix(".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    if case == "sha256":
        args["expect_sha256"] = "0" * 64
    if case == "unknown id":
        args["draft_id"] = "20200101T000000Z-00000000"
    ts = _tools(tmp_path, None if case == "no smtp host" else port, **kw)
    with pytest.raises(ToolError, match=expect):
        _run(ts, "mail.send", args)
    assert inbox.messages == [] and path.exists() and not (tmp_path / "drafts" / "sent" / path.name).exists()


def test_an_unreachable_smtp_server_is_a_tool_error_and_the_draft_stays(tmp_path):
    ts = _tools(tmp_path, _free_port())  # nothing listens there
    d = _run(ts, "mail.draft", {"to": ["a@example.com"], "subject": "s", "body": "b"})
    with pytest.raises(ToolError, match="draft not sent"):
        _run(ts, "mail.send", {"draft_id": d["draft_id"]})
    assert Path(d["path"]).exists()


def test_draft_reports_what_would_block_sending(tmp_path):
    ts = _tools(tmp_path, None, allowed_domains=["example.com"])
    d = _run(ts, "mail.draft", {"to": ["a@example.com", "b@evil.test"], "subject": "s", "body": "b"})
    assert d["send_problems"] == ["b@evil.test: domain is not in the allowed domains (example.com)"]


@pytest.mark.parametrize(
    "name, args, message",
    [
        (
            "mail.draft",
            {"to": ["a@example.com"], "subject": "s", "body": "b", "bcc": ["x@example.com"]},
            "bcc: Extra inputs are not permitted",
        ),
        (
            "mail.draft",
            {"to": ["a@example.com"], "subject": "hi\r\nBcc: spy@evil.test", "body": "b"},
            "subject: Value error, subject contains the control character '\\\\r'",
        ),
        ("mail.draft", {"to": ["a@example.com\nBcc: spy@evil.test"], "subject": "s", "body": "b"}, "header injection"),
        (
            "mail.draft",
            {"to": ["Eve <eve@evil.test>\u2028Bcc: x@evil.test"], "subject": "s", "body": "b"},
            "control character",
        ),
        ("mail.draft", {"to": "a@example.com", "subject": "s", "body": "b"}, "to: Input should be a valid list"),
        ("mail.draft", {"to": ["a@example.com"], "subject": 5, "body": "b"}, "subject: Input should be a valid string"),
        ("mail.draft", {"to": [], "subject": "s", "body": "b"}, "to: List should have at least 1 item"),
        ("mail.draft", {"to": ["a@example.com, b@example.com"], "subject": "s", "body": "b"}, "not a single address"),
        (
            "mail.draft",
            {"to": ["alice@example.org)<bob@example.org>"], "subject": "s", "body": "b"},
            "not a single address",
        ),
        ("mail.draft", {"to": ["root@localhost"], "subject": "s", "body": "b"}, "not a valid email address"),
        (
            "mail.draft",
            {"to": ["a@example.com"], "cc": [f"c{i}@example.com" for i in range(20)], "subject": "s", "body": "b"},
            "21 recipients in to \\+ cc, over the limit of 20",
        ),
        (
            "mail.draft",
            {"to": ["a@example.com"], "subject": "s", "body": "x" * 50_001},
            "body: String should have at most",
        ),
        ("mail.send", {"draft_id": "../../etc/passwd"}, "draft_id: String should match pattern"),
        ("mail.send", {"draft_id": 20200101}, "draft_id: Input should be a valid string"),
        ("mail.list_drafts", {"limit": "all"}, "limit: Input should be a valid integer"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, name, args, message):
    ts = _tools(tmp_path, None)
    with pytest.raises(ToolError, match=message):
        ts.validate(name, args)
    assert not (tmp_path / "drafts").exists()


def test_address_parsing():
    assert parse_address("山田 太郎 <Taro.Yamada@Example.JP>") == ("山田 太郎", "Taro.Yamada@example.jp")
    assert parse_address("  a+tag@sub.example.com ") == ("", "a+tag@sub.example.com")
    for bad in [
        '"Yamada, Taro" <t@example.jp>',
        "a..b@example.com",
        "a@-example.com",
        "a@example.c",
        "<a@example.com",
        "a@b@example.com",
        "ユーザー@example.jp",
    ]:
        with pytest.raises(ValueError):
            parse_address(bad)
    with pytest.raises(ValueError):
        mail_tool("/nonexistent", sender="not an address")


# -- header injection through RFC 2047 encoded words (CVE-2024-6923) and drafts changed on disk -----
# (issue 13, item 12) Before the fix, on Python < 3.11.10 / 3.12.5, the email package decoded an
# encoded word to "hello\r\nReply-To: evil@x.com" and wrote it out unquoted: a second header.

DRAFT_HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
]


def _received_headers(smtp) -> list[list[str]]:
    return [list(BytesParser(policy=policy.default).parsebytes(m["data"]).keys()) for m in smtp.messages]


@pytest.mark.smtp
@pytest.mark.parametrize(
    "field, value",
    [
        ("subject", "=?utf-8?q?hello=0D=0AReply-To=3A_evil=40x.com?="),
        ("subject", "Invoice =?utf-8?b?DQpSZXBseS1UbzogZXZpbEB4LmNvbQ==?= attached"),  # base64: "\r\nReply-To: ..."
        ("subject", "=?iso-8859-1?q?a=0ABcc=3A_spy=40evil.test?="),
        ("subject", "=?utf-8?q?hi=00there?="),  # NUL
        ("subject", "=?utf-8?q?=1B[2J_cleared?="),  # ESC (terminal control)
        ("subject", "=?utf-7?q?+AA0ACg-Reply-To:_evil=40x.com?="),  # CR LF spelt in UTF-7
        ("to", "=?utf-8?q?Taro=0D=0AReply-To=3A_evil=40x.com?= <taro@example.jp>"),  # in a display name
        ("cc", "=?utf-8?q?Boss=0D=0A=0D=0Ainjected_body?= <boss@example.com>"),
    ],
)
def test_encoded_words_that_decode_to_line_breaks_never_reach_smtp(tmp_path, field, value):
    args = {"to": ["taro@example.jp"], "subject": "s", "body": "hello", field: [value] if field != "subject" else value}
    with LocalSmtp() as smtp:
        ts = _tools(tmp_path, smtp.port)
        refused = ""
        try:
            d = _run(ts, "mail.draft", args)
            _run(ts, "mail.send", {"draft_id": d["draft_id"]})  # only the vulnerable code gets here
        except ToolError as exc:
            refused = str(exc)
        received = _received_headers(smtp)
    assert received == [], f"sent with headers {received}"
    assert "encoded words are decoded" in refused and "control character" in refused and field in refused
    assert not (tmp_path / "drafts").exists() or not list((tmp_path / "drafts").glob("*.eml"))


@pytest.mark.smtp
def test_header_like_text_on_one_line_is_sent_as_plain_text(tmp_path):
    subject = "Reply-To: evil@x.com =?utf-8?q?caf=C3=A9?= Bcc: spy@evil.test"  # harmless: no line break
    with LocalSmtp() as smtp:
        ts = _tools(tmp_path, smtp.port)
        d = _run(ts, "mail.draft", {"to": ["=?utf-8?q?Yamada?= <taro@example.jp>"], "subject": subject, "body": "b"})
        _run(ts, "mail.send", {"draft_id": d["draft_id"]})
        [got] = [BytesParser(policy=policy.default).parsebytes(m["data"]) for m in smtp.messages]
        assert smtp.messages[0]["to"] == ["taro@example.jp"]
    assert list(got.keys()) == DRAFT_HEADERS
    assert got["Subject"] == "Reply-To: evil@x.com café Bcc: spy@evil.test"


def test_the_sender_name_is_checked_too(tmp_path):
    with pytest.raises(ValueError, match="encoded words are decoded"):
        mail_tool(tmp_path, sender="=?utf-8?q?Agent=0D=0ABcc=3A_spy=40evil.test?= <agent@example.com>")


@pytest.mark.smtp
@pytest.mark.parametrize("tamper", ["body", "recipient", "hash file removed", "draft dropped in by hand"])
def test_a_draft_changed_on_disk_after_drafting_is_not_sent(tmp_path, tamper):
    with LocalSmtp() as smtp:
        ts = _tools(tmp_path, smtp.port)
        d = _run(
            ts,
            "mail.draft",
            {"to": ["a@example.com"], "subject": "Payment", "body": "Please pay invoice 12 (100 EUR).\n"},
        )
        path = Path(d["path"])
        raw = path.read_bytes()
        if tamper == "body":
            path.write_bytes(raw.replace(b"(100 EUR)", b"(99,000 EUR) to IBAN XX00 EVIL"))
        elif tamper == "recipient":
            path.write_bytes(raw.replace(b"To: a@example.com", b"To: a@example.com, b@example.com"))
        elif tamper == "hash file removed":
            path.with_suffix(".sha256").unlink()
        else:  # a well-formed .eml written by someone else, with no hash from mail.draft
            path.with_suffix(".sha256").unlink()
            path.rename(path.with_name("20200101T000000Z-0000abcd.eml"))
            d["draft_id"] = "20200101T000000Z-0000abcd"
            path = path.with_name(f"{d['draft_id']}.eml")
        with pytest.raises(
            ToolError,
            match="changed on disk since mail.draft wrote it"
            if tamper in ("body", "recipient")
            else "no sha256 recorded",
        ):
            _run(ts, "mail.send", {"draft_id": d["draft_id"]})
        assert smtp.messages == []
    assert path.exists() and not (tmp_path / "drafts" / "sent" / path.name).exists()
    listed = {x["draft_id"]: x for x in _run(ts, "mail.list_drafts", {})["drafts"]}
    assert listed[d["draft_id"]]["intact"] is False


@pytest.mark.smtp
def test_an_untouched_draft_is_intact_and_its_hash_moves_with_it(tmp_path):
    with LocalSmtp() as smtp:
        ts = _tools(tmp_path, smtp.port)
        d = _run(ts, "mail.draft", {"to": ["a@example.com"], "subject": "s", "body": "b"})
        assert _run(ts, "mail.read_draft", {"draft_id": d["draft_id"]})["intact"] is True
        _run(ts, "mail.send", {"draft_id": d["draft_id"]})
        assert len(smtp.messages) == 1
    sent = tmp_path / "drafts" / "sent"
    assert (sent / f"{d['draft_id']}.sha256").read_text().strip() == d["sha256"]
    assert list((tmp_path / "drafts").glob("*.sha256")) == []


@pytest.mark.smtp
def test_the_generated_message_is_checked_even_if_input_checks_miss_something(tmp_path, monkeypatch):
    import so8t.agent.tools.mail as mail

    monkeypatch.setattr(mail, "check_header_text", lambda value, what: value)  # pretend the input check missed it
    with LocalSmtp() as smtp:
        ts = _tools(tmp_path, smtp.port)
        with pytest.raises(ToolError, match="nothing saved"):
            _run(
                ts,
                "mail.draft",
                {"to": ["a@example.com"], "body": "b", "subject": "=?utf-8?q?hello=0D=0AReply-To=3A_evil=40x.com?="},
            )
        assert smtp.messages == []
    assert not list((tmp_path / "drafts").glob("*.eml"))
