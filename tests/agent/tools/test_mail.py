"""mail.draft / mail.send against a real SMTP server (aiosmtpd) on a free localhost port."""
from __future__ import annotations

import socket
import threading
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from so8t.agent.tools import ToolError, Toolset
from so8t.agent.tools.mail import mail_tool, parse_address

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
    return Toolset(mail_tool(tmp_path / "drafts", smtp_host="127.0.0.1" if port else None, smtp_port=port or 25,
                             sender=SENDER, **kw))


def _run(ts: Toolset, name: str, args: dict) -> dict:
    return ts.execute(ts.validate(name, args))


JA = {"to": ["山田 太郎 <taro@example.jp>", "hanako@example.jp"], "cc": ["boss@corp.example.com"],
      "subject": "明日の会議について（資料あり）",
      "body": "山田さん\n\n明日10時の会議の資料を添付します。\nよろしくお願いします。\n"}


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
    return _run(_tools(tmp_path, None, max_recipients=50), "mail.draft",
                {"to": ["a@example.com"], "subject": "s", "body": "b", **kw})["draft_id"]


@pytest.mark.parametrize("case", ["no smtp host", "domain", "too many", "bcc added on disk", "sha256", "unknown id"])
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
    expect = {"no smtp host": "sending is not configured", "domain": "leak@evil.test: domain is not in the allowed",
              "too many": "5 recipients, over the limit of 4", "bcc added on disk": "Bcc header",
              "sha256": "changed since it was reviewed", "unknown id": "no draft"}[case]
    if case == "bcc added on disk":
        path.write_bytes(b"Bcc: spy@example.com\r\n" + path.read_bytes())
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


@pytest.mark.parametrize("name, args, message", [
    ("mail.draft", {"to": ["a@example.com"], "subject": "s", "body": "b", "bcc": ["x@example.com"]},
     "bcc: Extra inputs are not permitted"),
    ("mail.draft", {"to": ["a@example.com"], "subject": "hi\r\nBcc: spy@evil.test", "body": "b"},
     "subject: Value error, subject contains the control character '\\\\r'"),
    ("mail.draft", {"to": ["a@example.com\nBcc: spy@evil.test"], "subject": "s", "body": "b"},
     "header injection"),
    ("mail.draft", {"to": ["Eve <eve@evil.test>\u2028Bcc: x@evil.test"], "subject": "s", "body": "b"},
     "control character"),
    ("mail.draft", {"to": "a@example.com", "subject": "s", "body": "b"}, "to: Input should be a valid list"),
    ("mail.draft", {"to": ["a@example.com"], "subject": 5, "body": "b"}, "subject: Input should be a valid string"),
    ("mail.draft", {"to": [], "subject": "s", "body": "b"}, "to: List should have at least 1 item"),
    ("mail.draft", {"to": ["a@example.com, b@example.com"], "subject": "s", "body": "b"}, "not a single address"),
    ("mail.draft", {"to": ["alice@example.org)<bob@example.org>"], "subject": "s", "body": "b"},
     "not a single address"),
    ("mail.draft", {"to": ["root@localhost"], "subject": "s", "body": "b"}, "not a valid email address"),
    ("mail.draft", {"to": ["a@example.com"], "cc": [f"c{i}@example.com" for i in range(20)], "subject": "s",
                    "body": "b"}, "21 recipients in to \\+ cc, over the limit of 20"),
    ("mail.draft", {"to": ["a@example.com"], "subject": "s", "body": "x" * 50_001}, "body: String should have at most"),
    ("mail.send", {"draft_id": "../../etc/passwd"}, "draft_id: String should match pattern"),
    ("mail.send", {"draft_id": 20200101}, "draft_id: Input should be a valid string"),
    ("mail.list_drafts", {"limit": "all"}, "limit: Input should be a valid integer"),
])
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, name, args, message):
    ts = _tools(tmp_path, None)
    with pytest.raises(ToolError, match=message):
        ts.validate(name, args)
    assert not (tmp_path / "drafts").exists()


def test_address_parsing():
    assert parse_address("山田 太郎 <Taro.Yamada@Example.JP>") == ("山田 太郎", "Taro.Yamada@example.jp")
    assert parse_address("  a+tag@sub.example.com ") == ("", "a+tag@sub.example.com")
    for bad in ['"Yamada, Taro" <t@example.jp>', "a..b@example.com", "a@-example.com", "a@example.c",
                "<a@example.com", "a@b@example.com", "ユーザー@example.jp"]:
        with pytest.raises(ValueError):
            parse_address(bad)
    with pytest.raises(ValueError):
        mail_tool("/nonexistent", sender="not an address")
