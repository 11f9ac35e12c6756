"""JSONL in and out. Reading reports every problem; writing is atomic."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from so8t import jsonerr
from so8t.data.schema import Checked, DataError, Problem, Record, check_row
from so8t.fsutil import atomic_write_text


def check_jsonl(path: str | Path, require_label: bool = True) -> Checked:
    """Read one JSONL file, collecting records and every problem (file, line, field)."""
    path = Path(path)
    out = Checked()
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        out.problems.append(Problem(name, 0, "", f"cannot read: {exc.strerror or exc}"))
        return out
    seen_ids: dict[str, int] = {}
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue  # blank lines (a trailing newline included) are not rows
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.problems.append(Problem(name, lineno, "", f"not valid UTF-8 (byte {exc.start})"))
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:  # bad syntax, or a number json refuses (over 4,300 digits)
            out.problems.append(Problem(name, lineno, "", f"invalid JSON: {jsonerr.describe(exc)}"))
            continue
        rec, problems = check_row(obj, name, lineno, require_label)
        out.problems.extend(problems)
        if rec is None:
            continue
        if rec.id is not None:
            if rec.id in seen_ids:
                out.problems.append(
                    Problem(name, lineno, "id", f"duplicate id {rec.id!r} (first on line {seen_ids[rec.id]})")
                )
                continue
            seen_ids[rec.id] = lineno
        out.records.append(rec)
        out.lines.append(lineno)
    if not out.records and not out.problems:
        out.problems.append(Problem(name, 0, "", "no records (the file is empty)"))
    return out


def read_jsonl(path: str | Path, require_label: bool = True) -> list[Record]:
    """Read a JSONL file of records, or raise DataError listing every problem."""
    checked = check_jsonl(path, require_label)
    if checked.problems:
        raise DataError(checked.problems)
    return checked.records


def read_many(paths: Iterable[str | Path], require_label: bool = True) -> list[Record]:
    """Read several files; problems from all of them are reported together."""
    records: list[Record] = []
    problems: list[Problem] = []
    for p in paths:
        checked = check_jsonl(p, require_label)
        records.extend(checked.records)
        problems.extend(checked.problems)
    if problems:
        raise DataError(problems)
    return records


def write_jsonl(path: str | Path, records: Iterable[Record]) -> int:
    """Write records atomically (temp file + rename): an interrupted write leaves the old file."""
    lines = [json.dumps(rec.to_json(), ensure_ascii=False) + "\n" for rec in records]
    atomic_write_text(path, "".join(lines))
    return len(lines)
