"""Each config field's name, type, default and meaning, read from the dataclasses' source.

The dataclasses in so8t/config.py (TrainConfig, ServerConfig) are the only source: a field's
meaning is the comment on its line or the comment lines directly above it, and `# --- name ---`
comment lines are section headings. docs/config.md (scripts/config_reference.py) and
`so8t train --help` are both written from `describe`, so neither restates a field.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import textwrap
import tokenize

from so8t import config


def _comments(source: str) -> dict[int, str]:
    """Comment text (without '#') by line number."""
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _section(comment: str) -> str | None:
    """'--- base model (stage: model) ---' -> 'base model (stage: model)'; None for other comments."""
    if comment.startswith("---") and comment.endswith("---"):
        return comment.strip("- ").strip()
    return None


def default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    return json.dumps(value, ensure_ascii=False)


def describe(cls: type) -> list[tuple[str | None, list[tuple[str, str, str, str]]]]:
    """[(section heading or None, [(name, type, default, meaning), ...]), ...] in source order."""
    source = inspect.getsource(config)
    comments = _comments(source)
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    sections: list[tuple[str | None, list]] = [(None, [])]
    previous_end = node.lineno
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            previous_end = stmt.end_lineno or stmt.lineno
            continue
        above: list[str] = []
        for line in range(previous_end + 1, stmt.lineno):
            text = comments.get(line)
            if text is None:
                continue
            heading = _section(text)
            if heading is not None:
                sections.append((heading, []))
                above = []
            else:
                above.append(text)
        inline = [
            comments[line] for line in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1) if line in comments
        ]
        meaning = " ".join(above + inline)
        name = stmt.target.id
        annotation = ast.get_source_segment(source, stmt.annotation) or ""
        sections[-1][1].append((name, annotation, default_text(fields[name]), meaning))
        previous_end = stmt.end_lineno or stmt.lineno
    listed = [row[0] for _, rows in sections for row in rows]
    assert listed == list(fields), f"{cls.__name__}: fields read from the source {listed} differ from {list(fields)}"
    return [(heading, rows) for heading, rows in sections if rows]


def field_help(cls: type, width: int = 100) -> str:
    """Every field as `name (default)` and its meaning below it, under its section: for --help."""
    lines = [f"{cls.__name__} fields (keys of --config and --set; docs/config.md has the same as a table):"]
    for heading, rows in describe(cls):
        if heading:
            lines += ["", f"  {heading}:"]
        for name, _type, default, meaning in rows:
            lines.append(f"    {name} (default {default})")
            lines += textwrap.wrap(meaning, width, initial_indent=" " * 8, subsequent_indent=" " * 8)
    return "\n".join(lines) + "\n"
