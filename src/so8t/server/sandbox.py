"""A self-contained sandbox for the demo and the tests: a folder of files, a SQLite database,
local web pages, a local SMTP server that keeps what it receives, a calendar file, and the
tools config that points at them. Everything is real and on localhost."""

from __future__ import annotations

import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[dict] = []

    async def handle_DATA(self, server, session, envelope):  # the name aiosmtpd calls
        self.messages.append(
            {"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "data": envelope.original_content}
        )
        return "250 OK"


class LocalSmtp:
    """An SMTP server on 127.0.0.1 (aiosmtpd) that stores every message it receives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._inbox = _Inbox()
        self._controller = Controller(self._inbox, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[dict]:
        return self._inbox.messages

    def __enter__(self) -> LocalSmtp:
        self._controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self._controller.stop()


def static_site(folder: Path):
    """A tiny app serving the HTML files of a folder (for the browser tool)."""
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    app = FastAPI()
    app.mount("/", StaticFiles(directory=str(folder), html=True), name="site")
    return app


@dataclass
class Sandbox:
    root: Path
    tools_yaml: Path
    files: Path
    database: Path
    web: Path
    calendar: Path
    drafts: Path
    extra: dict = field(default_factory=dict)


def make_sandbox(
    root: str | Path, *, web_url: str, smtp_port: int, sender: str = "agent@example.com", tiers: dict | None = None
) -> Sandbox:
    """Create the sandbox under `root` and write its tools.yaml."""
    root = Path(root)
    files, web, drafts = root / "files", root / "web", root / "drafts"
    for d in (files, web, drafts):
        d.mkdir(parents=True, exist_ok=True)
    (files / "meeting-notes.txt").write_text("Q3 planning: ship the importer, hire one engineer.\n", encoding="utf-8")
    (files / "議事録.txt").write_text(
        "第3四半期の計画：インポーターを出荷し、エンジニアを1名採用する。\n", encoding="utf-8"
    )
    db = root / "shop.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT)")
        con.execute("DELETE FROM customers")
        con.executemany(
            "INSERT INTO customers (name, city) VALUES (?, ?)",
            [("Aiko Tanaka", "Tokyo"), ("Ben Carter", "Leeds"), ("佐藤 花子", "大阪")],
        )
        con.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT, status TEXT)")
        con.execute("DELETE FROM orders")
        con.executemany(
            "INSERT INTO orders (item, status) VALUES (?, ?)",
            [("notebook", "shipped"), ("pens", "shipped"), ("desk lamp", "pending"), ("ノート", "shipped")],
        )
    (web / "index.html").write_text(
        "<html><head><title>Team wiki</title></head><body><h1>Team wiki</h1>"
        "<p>The release is on Friday. Lunch is at noon.</p></body></html>",
        encoding="utf-8",
    )
    calendar = root / "calendar.ics"
    config = {
        "tiers": tiers or {"read": "auto", "write": "auto", "delete": "approval", "send": "approval", "pay": "deny"},
        "files": {"root": "files"},
        "sql": {"url": "sqlite:///shop.db", "read_only": True},
        "browser": {"allowlist": [web_url], "screenshot_dir": "screenshots"},
        "mail": {
            "drafts_dir": "drafts",
            "sender": sender,
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp_port,
            "allowed_domains": ["example.com", "example.jp"],
        },
        "calendar": {"ics_path": "calendar.ics", "owner": sender},
    }
    tools_yaml = root / "tools.yaml"
    tools_yaml.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return Sandbox(root, tools_yaml, files, db, web, calendar, drafts)
