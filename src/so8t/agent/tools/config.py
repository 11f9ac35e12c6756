"""The tools config: which tools the agent has, where they may act, and how much autonomy
each risk tier (or single action) gets. One YAML file, loaded at server start, validated with
errors that name the file and the key. Relative paths are relative to the YAML file.

    tiers: {read: auto, write: approval, delete: approval, send: approval, pay: deny}
    actions: {files.write: auto, sql.schema_change: deny}       # per-action overrides
    files: {root: sandbox/files}
    sql: {url: sqlite:///sandbox/app.db, read_only: true}
    browser: {allowlist: ["http://127.0.0.1:8123"]}
    mail: {drafts_dir: sandbox/drafts, sender: agent@example.com, smtp_host: 127.0.0.1, smtp_port: 8025}
    calendar: {ics_path: sandbox/calendar.ics, owner: me@example.com}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from so8t.agent.toolloop import ToolPolicy
from so8t.agent.tools.base import MAX_ARGS_BYTES, Toolset
from so8t.config import ConfigError, from_dict, load_yaml


@dataclasses.dataclass
class FilesSection:
    root: str = ""
    max_read_bytes: int = 1_000_000
    max_write_bytes: int = 1_000_000
    max_list: int = 500


@dataclasses.dataclass
class SqlSection:
    url: str = ""
    read_only: bool = True
    max_rows: int = 200
    max_result_bytes: int = 1_000_000  # a result (values as JSON) larger than this is cut, marked truncated
    timeout_s: float = 10.0


@dataclasses.dataclass
class BrowserSection:
    allowlist: list[str] = dataclasses.field(default_factory=list)
    screenshot_dir: str = "screenshots"
    executable_path: str = "/usr/bin/chromium"
    timeout_s: float = 15.0


@dataclasses.dataclass
class MailSection:
    drafts_dir: str = ""
    sender: str = ""
    smtp_host: str = ""  # empty: drafts only, mail.send is refused
    smtp_port: int = 25
    allowed_domains: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class CalendarSection:
    ics_path: str = ""
    owner: str = ""


SECTIONS: dict[str, tuple[type, tuple[str, ...]]] = {
    "files": (FilesSection, ("root",)),
    "sql": (SqlSection, ("url",)),
    "browser": (BrowserSection, ("allowlist",)),
    "mail": (MailSection, ("drafts_dir", "sender")),
    "calendar": (CalendarSection, ("ics_path", "owner")),
}
TOP_KEYS = {"tiers", "actions", "max_args_bytes", *SECTIONS}


def _abs(base: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else base / path


def _sqlite_abs(base: Path, url: str) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix) :].startswith("/") and ":memory:" not in url:
        return prefix + str(base / url[len(prefix) :])
    return url


def load_tools(path: str | Path) -> tuple[Toolset, ToolPolicy]:
    """Build the toolset and the autonomy policy from a tools YAML file."""
    from so8t.agent.tools.browser import browser_tool
    from so8t.agent.tools.calendar import calendar_tool
    from so8t.agent.tools.files import files_tool
    from so8t.agent.tools.mail import mail_tool
    from so8t.agent.tools.sql import sql_tool

    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(TOP_KEYS))}"
        )
    base = path.resolve().parent
    sections = {}
    for name, (cls, required) in SECTIONS.items():
        if name not in raw:
            continue
        values = raw[name] or {}
        sec: Any = from_dict(cls, values, f"{path}: {name}")
        for key in required:
            if not getattr(sec, key):
                raise ConfigError(f"{path}: {name}: {key} is required")
        sections[name] = sec
    if not sections:
        raise ConfigError(f"{path}: no tools configured (add at least one of {', '.join(SECTIONS)})")
    actions = []
    try:
        if "files" in sections:
            s = sections["files"]
            actions += files_tool(
                _abs(base, s.root),
                max_read_bytes=s.max_read_bytes,
                max_write_bytes=s.max_write_bytes,
                max_list=s.max_list,
            )
        if "sql" in sections:
            s = sections["sql"]
            actions += sql_tool(
                _sqlite_abs(base, s.url),
                read_only=s.read_only,
                max_rows=s.max_rows,
                timeout_s=s.timeout_s,
                max_result_bytes=s.max_result_bytes,
            )
        if "browser" in sections:
            s = sections["browser"]
            actions += browser_tool(
                s.allowlist,
                executable_path=s.executable_path,
                screenshot_dir=_abs(base, s.screenshot_dir),
                timeout_s=s.timeout_s,
            )
        if "mail" in sections:
            s = sections["mail"]
            actions += mail_tool(
                _abs(base, s.drafts_dir),
                smtp_host=s.smtp_host or None,
                smtp_port=s.smtp_port,
                sender=s.sender,
                allowed_domains=s.allowed_domains or None,
            )
        if "calendar" in sections:
            s = sections["calendar"]
            actions += calendar_tool(_abs(base, s.ics_path), owner=s.owner)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    max_args = raw.get("max_args_bytes", MAX_ARGS_BYTES)
    if not isinstance(max_args, int) or max_args < 1024:
        raise ConfigError(f"{path}: max_args_bytes must be an integer >= 1024")
    toolset = Toolset(actions, max_args_bytes=max_args)
    try:
        policy = ToolPolicy.from_config(raw.get("tiers"), raw.get("actions"), toolset, where=str(path))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return toolset, policy
