"""Write docs/config.md, the reference of every config field, from the config dataclasses.

    .venv/bin/python scripts/config_reference.py            # rewrite docs/config.md
    .venv/bin/python scripts/config_reference.py --check    # exit 1 if docs/config.md is out of date

The dataclasses in src/so8t/config.py (TrainConfig, ServerConfig) are the only source: each
field's name, its type as annotated, its default (as it would be written in YAML, in JSON
spelling) and its meaning, taken from the comment on the field's line or the comment lines
directly above it. `# --- name ---` comment lines become section headings, and a class
docstring becomes the section's introduction. A field without any comment gets an empty
meaning cell: the fix is a comment in config.py, never an edit of docs/config.md.
tests/test_config_reference.py fails when docs/config.md differs from what this writes.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import sys
import tokenize
from pathlib import Path

from so8t import config
from so8t.config import ServerConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "config.md"
COMMAND = ".venv/bin/python scripts/config_reference.py"

CLASSES = [
    (
        TrainConfig,
        "so8t train",
        ("`so8t train`: layers are defaults <- `--preset` <- `--config FILE` <- `--set KEY=VALUE` and typed flags."),
    ),
    (
        ServerConfig,
        "so8t serve",
        (
            "`so8t serve` (and `demo`, `approvals`): layers are defaults <- `--config FILE` <- "
            "`--set KEY=VALUE` and flags."
        ),
    ),
]


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


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    return json.dumps(value, ensure_ascii=False)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


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
        sections[-1][1].append((name, annotation, _default(fields[name]), meaning))
        previous_end = stmt.end_lineno or stmt.lineno
    listed = [row[0] for _, rows in sections for row in rows]
    assert listed == list(fields), f"{cls.__name__}: fields read from the source {listed} differ from {list(fields)}"
    return [(heading, rows) for heading, rows in sections if rows]


def render() -> str:
    lines = [
        "# Config reference",
        "",
        f"Generated from the dataclasses in `src/so8t/config.py` by `{COMMAND}`; do not edit by hand",
        "(a test fails when this file is out of date). Every field can be set in the YAML file given",
        "with `--config` or with `--set KEY=VALUE`; an unknown key, a wrong type or an out-of-range",
        "value is an error naming the key. Defaults are written as in YAML/JSON.",
        "",
    ]
    for cls, command, how in CLASSES:
        lines += [f"## {cls.__name__} ({command})", "", how, ""]
        doc = inspect.getdoc(cls)
        if doc and not doc.startswith(f"{cls.__name__}("):  # dataclasses invent a signature docstring
            lines += [doc, ""]
        for heading, rows in describe(cls):
            if heading:
                lines += [f"### {heading}", ""]
            lines += ["| field | type | default | meaning |", "|---|---|---|---|"]
            lines += [f"| `{n}` | `{_cell(t)}` | `{_cell(d)}` | {_cell(m)} |" for n, t, d, m in rows]
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/config.md is out of date; write nothing")
    args = parser.parse_args(argv)
    text = render()
    current = OUT.read_text(encoding="utf-8") if OUT.exists() else None
    if args.check:
        if current != text:
            print(f"{OUT.relative_to(REPO)} is out of date; run: {COMMAND}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
