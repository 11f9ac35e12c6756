"""Mail: write drafts locally (write), send a draft over SMTP only as its own gated step (send).

Why drafts: sending is the risky part -- it leaves the machine and reaches other people -- so
composing and sending are separate actions with separate risk tiers. The agent composes with
`mail.draft` (a local .eml file the user can open and read), and `mail.send` takes only a
draft id: what is sent is exactly the bytes of that draft file, so what the gate (or the user)
approved by looking at the draft is what goes out. A sent draft moves to ``drafts_dir/sent/``
and cannot be sent again.

Guarantees:
- No header injection, on any supported Python (3.10+), including those whose email package
  has CVE-2024-6923 (before 3.11.10 / 3.12.5 it writes a decoded RFC 2047 encoded word back out
  unquoted, so ``=?utf-8?q?hi=0D=0ABcc=3A_x=40evil.test?=`` became a second header). Every
  header value (subject, each recipient and display name, the sender) is refused when it holds
  a control character or line/paragraph separator, as written *or* once the email package's
  own parser has decoded its encoded words. Headers are built with `EmailMessage` and the
  default policy (CRLF line ends; where the Python has it, `verify_generated_headers`), and the
  generated draft must parse back to exactly the headers that were set, or nothing is saved.
- What is sent is what `mail.draft` wrote: the draft's sha256 is recorded next to it
  (``<draft_id>.sha256``) when it is written, and `mail.send` refuses a draft whose bytes no
  longer match it, or that has no recorded hash (a hand-made .eml). To send an edited draft,
  write it again with `mail.draft` (and have that gated again). The hash file guards against the
  draft being edited; someone who can rewrite both files in the drafts folder is not stopped by
  it (the send-time checks below still apply).
- At send time the file is re-parsed: only the headers `mail.draft` writes are allowed (no Bcc,
  no Reply-To), the From must be the configured sender, and the envelope recipients are the
  To/Cc addresses, checked again against `allowed_domains` and `max_recipients`.

Addresses are checked strictly: `email.utils.parseaddr` plus our own regex must agree on the
address, and no header field may contain a control character (CR/LF = header injection).
Display names are allowed ("山田 太郎 <taro@example.jp>") but may not contain , ; : @ " < > ( )
[ ] or backslash, which keeps parsing unambiguous (quoted display names are not supported).
Addresses must be ASCII (no SMTPUTF8): the message on the wire is pure ASCII (RFC 2047
encoded-word subject and names, base64 UTF-8 body), so any SMTP server accepts it.

SMTP is plain SMTP to ``smtp_host:smtp_port`` (typically a local relay / MTA that handles
TLS and delivery); there is no STARTTLS or authentication here.

`allowed_domains`: entries are domains matched exactly ("example.com"), or "*.example.com"
for its subdomains (not the apex). Drafting is allowed to any valid address -- a draft never
leaves the machine -- but the draft result lists what would block sending, and `mail.send`
refuses it.
"""

from __future__ import annotations

import email.errors
import hashlib
import os
import re
import secrets
import smtplib
import unicodedata
from datetime import datetime, timezone
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from so8t.agent.tools.base import ToolAction, ToolError
from so8t.fsutil import atomic_write_bytes

# dot-atom local part; LDH domain labels; a TLD of letters (or an IDNA xn-- label).
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDR_RE = re.compile(rf"(?P<local>{_LOCAL})@(?P<domain>(?:{_LABEL}\.)+(?:[A-Za-z]{{2,63}}|xn--[A-Za-z0-9-]{{1,59}}))")
# "addr" or "Display Name <addr>"; the name excludes everything that has meaning in a header.
_MAILBOX_RE = re.compile(r"\s*(?:(?P<name>[^<>\"@,;:\\()\[\]]*?)\s*<(?P<inner>[^<>]*)>|(?P<bare>[^<>\s]+))\s*")
_DRAFT_ID_RE = r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$"
MAX_SUBJECT_CHARS = 500
# The policy drafts are built with: the default policy, CRLF line ends (the file is the wire format),
# and the standard library's own check of generated headers where this Python has it (3.11.10+).
DRAFT_POLICY = (
    policy.SMTP.clone(verify_generated_headers=True)
    if hasattr(policy.SMTP, "verify_generated_headers")
    else policy.SMTP
)
# The only headers mail.draft writes; a draft on disk with any other header is not sent.
DRAFT_HEADERS = frozenset(
    {"from", "to", "cc", "subject", "date", "message-id", "mime-version", "content-type", "content-transfer-encoding"}
)


def _refuse_controls(value: str, what: str, how: str = "") -> None:
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs"):
            raise ValueError(
                f"{what} contains the control character {ch!r}{how} (CR/LF in a header is header "
                "injection; headers are one line)"
            )


def check_header_text(value: str, what: str) -> str:
    """Refuse control characters, line/paragraph separators and lone surrogates in a header value,
    as written and once RFC 2047 encoded words (=?charset?q?...?=) are decoded.

    CR/LF would let a value start a new header (Bcc: ...) or the body; the others are refused
    because some software treats them as line breaks too. The decoding is the email package's
    own (the one that writes the header out), so what is checked is what would be written."""
    _refuse_controls(value, what)
    if "=?" in value:
        try:
            decoded = str(policy.default.header_factory("Subject", value))
        except (ValueError, LookupError, email.errors.MessageError) as exc:  # refused, never guessed at
            raise ValueError(f"{what} has RFC 2047 encoded words that cannot be decoded: {exc}") from None
        _refuse_controls(decoded, what, " once its RFC 2047 encoded words are decoded")
    return value


def parse_address(text: str) -> tuple[str, str]:
    """Return (display_name, addr_spec) for one mailbox, or raise ValueError saying why.

    The domain is lower-cased; the local part is kept as written."""
    if not isinstance(text, str):
        raise TypeError("an address must be a string")
    check_header_text(text, f"address {text!r}")
    if len(text) > 320:
        raise ValueError(f"address {text[:40]!r}... is too long")
    m = _MAILBOX_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a single address like name@example.com or 'Name <name@example.com>'")
    name = (m.group("name") or "").strip()
    addr = (m.group("inner") if m.group("inner") is not None else m.group("bare")).strip()
    am = _ADDR_RE.fullmatch(addr)
    if am is None or len(addr) > 254 or len(am.group("local")) > 64:
        raise ValueError(f"{addr!r} is not a valid email address (ASCII local@domain.tld)")
    # parseaddr must read the same thing; where it disagrees, the input is ambiguous.
    if parseaddr(text) != (name, addr):
        raise ValueError(f"{text!r} is ambiguous (email.utils.parseaddr reads it as {parseaddr(text)!r})")
    return name, f"{am.group('local')}@{am.group('domain').lower()}"


def domain_allowed(domain: str, allowed: list[str] | None) -> bool:
    """Exact domain match, or "*.example.com" for subdomains of example.com; None = any domain."""
    if allowed is None:
        return True
    domain = domain.lower().rstrip(".")
    for entry in allowed:
        entry = entry.lower().rstrip(".")
        if entry.startswith("*."):
            if domain.endswith(entry[1:]):
                return True
        elif domain == entry:
            return True
    return False


def _address_list(values: list[str]) -> list[str]:
    seen, out = set(), []
    for v in values:
        name, addr = parse_address(v)
        if addr.lower() not in seen:
            seen.add(addr.lower())
            out.append(f"{name} <{addr}>" if name else addr)
    return out


# -- argument models ---------------------------------------------------------------------------


class _DraftChecks(BaseModel):
    """What every DraftArgs checks; ``draft_args`` sets the limits (they show in the schema)."""

    model_config = ConfigDict(extra="forbid")
    max_recipients: ClassVar[int]
    if TYPE_CHECKING:  # the fields, declared with their limits by draft_args
        to: list[str]
        cc: list[str]
        subject: str
        body: str

    @field_validator("to", "cc", check_fields=False)
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        return _address_list(v)

    @field_validator("subject", check_fields=False)
    @classmethod
    def _subject(cls, v: str) -> str:
        return check_header_text(v, "subject")

    @model_validator(mode="after")
    def _total(self) -> _DraftChecks:
        n = len({_addr(a).lower() for a in self.to + self.cc})
        if n > self.max_recipients:
            raise ValueError(f"{n} recipients in to + cc, over the limit of {self.max_recipients}")
        return self


def draft_args(max_recipients: int, max_body_chars: int) -> type[_DraftChecks]:
    """The `mail.draft` arguments with these limits in their schema."""

    class DraftArgs(_DraftChecks):
        """Compose a message and save it as a local draft; nothing is sent."""

        to: list[str] = Field(
            min_length=1,
            max_length=max_recipients,
            description="Recipient addresses: 'name@example.com' or 'Name <name@example.com>'.",
        )
        cc: list[str] = Field(
            default_factory=list, max_length=max_recipients, description="Carbon-copy addresses, same format as `to`."
        )
        subject: str = Field(max_length=MAX_SUBJECT_CHARS, description="Subject line (one line, any language).")
        body: str = Field(max_length=max_body_chars, description="Plain-text body (UTF-8, any language).")

    DraftArgs.max_recipients = max_recipients
    return DraftArgs


class ListArgs(BaseModel):
    """List saved drafts, newest first."""

    model_config = ConfigDict(extra="forbid")
    include_sent: bool = Field(default=False, description="Also list drafts that were already sent.")
    limit: int = Field(default=50, ge=1, le=500, description="At most this many drafts.")


class DraftRef(BaseModel):
    """One draft, by the id that mail.draft returned."""

    model_config = ConfigDict(extra="forbid")
    draft_id: str = Field(pattern=_DRAFT_ID_RE, description="The draft_id returned by mail.draft.")


class SendArgs(DraftRef):
    """Send one existing draft exactly as saved."""

    expect_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Optional: refuse unless the draft file still has this "
        "sha256 (as returned by mail.draft / mail.read_draft).",
    )


# -- the tool ------------------------------------------------------------------------------------


class _Mail:
    """One drafts folder, one sender, one SMTP relay: the state behind the `mail.*` actions."""

    def __init__(
        self,
        drafts_dir: str | Path,
        sender: str,
        smtp_host: str | None,
        smtp_port: int,
        allowed_domains: list[str] | None,
        max_recipients: int,
        smtp_timeout_s: float,
    ):
        self.drafts = Path(drafts_dir)
        self.sent_dir = self.drafts / "sent"
        self.sender_name, self.sender_addr = parse_address(sender)
        self.allowed = [d.strip() for d in allowed_domains] if allowed_domains is not None else None
        self.smtp_host, self.smtp_port, self.smtp_timeout_s = smtp_host, smtp_port, smtp_timeout_s
        self.max_recipients = max_recipients
        self.send_lock = FileLock(str(self.drafts / ".send.lock"), timeout=60)

    def send_problems(self, recipients: list[str]) -> list[str]:
        """Why these recipients could not be sent to (empty = sendable)."""
        problems = []
        if len(recipients) > self.max_recipients:
            problems.append(f"{len(recipients)} recipients, over the limit of {self.max_recipients}")
        for r in recipients:
            if not domain_allowed(r.rsplit("@", 1)[1], self.allowed):
                problems.append(f"{r}: domain is not in the allowed domains ({', '.join(self.allowed or [])})")
        return problems

    # -- saved drafts

    def locate(self, draft_id: str) -> tuple[Path, bool]:
        for path, sent in ((self.drafts / f"{draft_id}.eml", False), (self.sent_dir / f"{draft_id}.eml", True)):
            if path.is_file():
                return path, sent
        raise ToolError(f"no draft {draft_id!r} in {self.drafts}")

    @staticmethod
    def describe(path: Path, sent: bool, *, body: bool = False) -> dict:
        raw = path.read_bytes()
        recorded = _recorded_sha256(path)
        msg = BytesParser(policy=policy.default).parsebytes(raw)
        out: dict[str, Any] = {
            "draft_id": path.stem,
            "path": str(path),
            "sent": sent,
            "from": str(msg.get("From", "")),
            "to": [a.addr_spec for a in _header_addresses(msg, "To")],
            "cc": [a.addr_spec for a in _header_addresses(msg, "Cc")],
            "subject": str(msg.get("Subject", "")),
            "date": str(msg.get("Date", "")),
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
        out["intact"] = recorded == out["sha256"]  # byte for byte what mail.draft wrote
        if body:
            part = msg.get_body(preferencelist=("plain",))
            # CRLF is the canonical line end inside the message; give the text back as written.
            out["body"] = part.get_content().replace("\r\n", "\n") if part is not None else ""
        return out

    # -- actions

    def draft(self, a: _DraftChecks) -> dict:
        data = _serialise(self._message(a.to, a.cc, a.subject, a.body))
        draft_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)
        self.drafts.mkdir(parents=True, exist_ok=True)
        path = self.drafts / f"{draft_id}.eml"
        digest = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(path.with_suffix(".sha256"), f"{digest}\n".encode())  # first: no draft without its hash
        atomic_write_bytes(path, data)
        unique: dict[str, str] = {}
        for x in a.to + a.cc:  # to and cc may name the same person; the envelope has them once
            unique.setdefault(_addr(x).lower(), _addr(x))
        recipients = list(unique.values())
        return {
            "draft_id": draft_id,
            "path": str(path),
            "recipients": recipients,
            "sha256": digest,
            "send_problems": self.send_problems(recipients),
        }

    def _message(self, to: list[str], cc: list[str], subject: str, body: str) -> EmailMessage:
        msg = EmailMessage(policy=DRAFT_POLICY)
        msg["From"] = Address(self.sender_name, addr_spec=self.sender_addr)
        msg["To"] = [_to_address(x) for x in to]
        if cc:
            msg["Cc"] = [_to_address(x) for x in cc]
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain=self.sender_addr.rsplit("@", 1)[1])
        msg["MIME-Version"] = "1.0"
        body = body.replace("\r\n", "\n").replace("\r", "\n")
        # ASCII stays readable (7bit); anything else is base64 UTF-8 so no server needs 8BITMIME.
        msg.set_content(body, charset="utf-8", cte=None if body.isascii() else "base64")
        return msg

    def list_drafts(self, a: ListArgs) -> dict:
        found = [(p, False) for p in self.drafts.glob("*.eml")]
        if a.include_sent:
            found += [(p, True) for p in self.sent_dir.glob("*.eml")]
        found.sort(key=lambda ps: ps[0].stem, reverse=True)  # ids start with the UTC time
        out = []
        for path, sent in found[: a.limit]:
            try:
                out.append(self.describe(path, sent))
            except Exception as exc:  # noqa: BLE001 -- one unreadable file must not hide the others
                out.append({"draft_id": path.stem, "path": str(path), "sent": sent, "error": str(exc)})
        return {"drafts": out, "count": len(out), "more": len(found) > a.limit}

    def read_draft(self, a: DraftRef) -> dict:
        path, sent = self.locate(a.draft_id)
        return self.describe(path, sent, body=True)

    def send(self, a: SendArgs) -> dict:
        if not (host := self.smtp_host):
            raise ToolError(
                f"mail.send: sending is not configured (no smtp_host); the draft stays in {self.drafts} "
                "for the user to send"
            )
        try:
            self.drafts.mkdir(parents=True, exist_ok=True)
            with self.send_lock:  # one send at a time: the same draft can never go out twice
                path, recipients, refused = self._send_once(a, host)
        except Timeout:
            raise ToolError("mail.send: another send is in progress; try again") from None
        return {
            "draft_id": a.draft_id,
            "sent": True,
            "recipients": [r for r in recipients if r not in refused],
            "refused": {r: f"{code} {msg.decode(errors='replace')}" for r, (code, msg) in refused.items()},
            "path": str(self.sent_dir / path.name),
        }

    def _send_once(self, a: SendArgs, host: str) -> tuple[Path, list[str], dict[str, tuple[int, bytes]]]:
        """Under the send lock: check the draft, send it, move it to sent/ (path, recipients, refused)."""
        path, sent = self.locate(a.draft_id)
        if sent:
            raise ToolError(f"mail.send: draft {a.draft_id} was already sent ({path})")
        raw = path.read_bytes()
        _check_drafted_hash(path, raw, a.draft_id)
        if a.expect_sha256 and hashlib.sha256(raw).hexdigest() != a.expect_sha256:
            raise ToolError(f"mail.send: draft {a.draft_id} changed since it was reviewed (sha256 differs)")
        recipients = _check_saved_draft(raw, a.draft_id, self.sender_addr)
        if problems := self.send_problems(recipients):
            raise ToolError(f"mail.send: refused, nothing sent: {'; '.join(problems)}")
        port = self.smtp_port
        try:
            with smtplib.SMTP(host, port, timeout=self.smtp_timeout_s) as smtp:
                refused = smtp.sendmail(self.sender_addr, recipients, raw)
        except (smtplib.SMTPException, OSError) as exc:
            raise ToolError(f"mail.send: SMTP {host}:{port} failed, draft not sent: {exc}") from None
        self.sent_dir.mkdir(parents=True, exist_ok=True)
        os.replace(path, self.sent_dir / path.name)
        os.replace(path.with_suffix(".sha256"), self.sent_dir / f"{path.stem}.sha256")
        return path, recipients, refused


def mail_tool(
    drafts_dir: str | Path,
    *,
    smtp_host: str | None = None,
    smtp_port: int = 25,
    sender: str,
    allowed_domains: list[str] | None = None,
    max_recipients: int = 20,
    max_body_chars: int = 50_000,
    smtp_timeout_s: float = 30.0,
) -> list[ToolAction]:
    """The actions `mail.draft` (write), `mail.list_drafts` and `mail.read_draft` (read), `mail.send` (send).

    `sender` is the From address of every message (ValueError if it is not a valid address);
    `smtp_host=None` means sending is not configured and `mail.send` refuses.
    """
    m = _Mail(drafts_dir, sender, smtp_host, smtp_port, allowed_domains, max_recipients, smtp_timeout_s)
    return [
        ToolAction(
            "mail.draft",
            "Write an email as a local draft (.eml). Nothing is sent; use mail.send with "
            "the returned draft_id to send it.",
            draft_args(max_recipients, max_body_chars),
            "write",
            m.draft,
        ),
        ToolAction(
            "mail.list_drafts", "List saved email drafts (recipients, subject, date).", ListArgs, "read", m.list_drafts
        ),
        ToolAction("mail.read_draft", "Show one draft in full, including its body.", DraftRef, "read", m.read_draft),
        ToolAction(
            "mail.send",
            "Send a saved draft over SMTP exactly as written; a draft is sent at most once.",
            SendArgs,
            "send",
            m.send,
        ),
    ]


def _addr(mailbox: str) -> str:
    """The addr-spec of an already validated 'addr' or 'Name <addr>'."""
    return mailbox[mailbox.rindex("<") + 1 : -1] if mailbox.endswith(">") else mailbox


def _to_address(mailbox: str) -> Address:
    name, addr = parse_address(mailbox)
    return Address(name, addr_spec=addr)


def _header_addresses(msg: Any, header: str) -> list[Any]:
    out: list[Any] = []
    for value in msg.get_all(header, []):
        out.extend(getattr(value, "addresses", ()))
    return out


def _serialise(msg: EmailMessage) -> bytes:
    """The draft's bytes, which must parse back to exactly the headers that were set: a value
    that smuggled in a line break (on any Python) would show up as an extra or missing header."""
    try:
        data = msg.as_bytes()
    except email.errors.MessageError as exc:  # HeaderWriteError, where verify_generated_headers exists
        raise ToolError(
            f"mail.draft: refused, nothing saved: the email package would not write a header: {exc}"
        ) from None
    back = BytesParser(policy=policy.default).parsebytes(data)
    if [k.lower() for k in back.keys()] != [k.lower() for k in msg.keys()]:
        raise ToolError(
            f"mail.draft: refused, nothing saved: the message would carry the headers {back.keys()} "
            f"instead of {msg.keys()} (header injection)"
        )
    return data


def _recorded_sha256(path: Path) -> str | None:
    """The sha256 mail.draft recorded for this draft, or None when there is none."""
    try:
        return path.with_suffix(".sha256").read_text(encoding="ascii").strip()
    except (OSError, UnicodeError):
        return None


def _check_drafted_hash(path: Path, raw: bytes, draft_id: str) -> None:
    """The draft file must be byte for byte what mail.draft wrote, else ToolError."""
    recorded, actual = _recorded_sha256(path), hashlib.sha256(raw).hexdigest()
    if recorded is None:
        raise ToolError(
            f"mail.send: draft {draft_id} has no sha256 recorded by mail.draft ({path.stem}.sha256), "
            "so it may not be what was reviewed; refused, nothing sent -- write it with mail.draft"
        )
    if recorded != actual:
        raise ToolError(
            f"mail.send: draft {draft_id} changed on disk since mail.draft wrote it (sha256 {actual} "
            f"is not the recorded {recorded}); refused, nothing sent -- write it again with mail.draft"
        )


def _check_saved_headers(msg: Any, draft_id: str) -> None:
    """Only the headers mail.draft writes, each one line however it decodes."""
    for name, value in msg.items():
        if name.lower() not in DRAFT_HEADERS:
            raise ToolError(f"mail.send: draft {draft_id} has a {name} header, which mail.draft never writes; refused")
        try:
            check_header_text(str(value), f"the {name} header")
        except ValueError as exc:
            raise ToolError(f"mail.send: draft {draft_id}: {exc}; refused") from None


def _check_saved_draft(raw: bytes, draft_id: str, sender_addr: str) -> list[str]:
    """Re-validate the draft file as it is on disk (it is a user-editable file) -> envelope recipients."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    _check_saved_headers(msg, draft_id)
    senders = _header_addresses(msg, "From")
    if len(senders) != 1 or senders[0].addr_spec.lower() != sender_addr.lower():
        raise ToolError(f"mail.send: draft {draft_id} is not From {sender_addr}; refused")
    recipients: list[str] = []
    for a in _header_addresses(msg, "To") + _header_addresses(msg, "Cc"):
        try:
            _, addr = parse_address(a.addr_spec)
        except ValueError as exc:
            raise ToolError(f"mail.send: draft {draft_id}: {exc}") from None
        if addr.lower() not in {r.lower() for r in recipients}:
            recipients.append(addr)
    if not recipients:
        raise ToolError(f"mail.send: draft {draft_id} has no recipients")
    return recipients
