"""Write docs/config.md, the reference of every config field, from the config dataclasses.

    .venv/bin/python scripts/config_reference.py            # rewrite docs/config.md
    .venv/bin/python scripts/config_reference.py --check    # exit 1 if docs/config.md is out of date

The dataclasses in src/so8t/config.py (TrainConfig, ServerConfig) are the only source: each
field's name, its type as annotated, its default (as it would be written in YAML, in JSON
spelling) and its meaning, taken from the comment on the field's line or the comment lines
directly above it (so8t.config_fields.describe, which `so8t train --help` uses too).
`# --- name ---` comment lines become section headings, and a class docstring becomes the
section's introduction. A field without any comment gets an empty
meaning cell: the fix is a comment in config.py, never an edit of docs/config.md.
tests/test_config_reference.py fails when docs/config.md differs from what this writes.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

from so8t.config import ServerConfig, TrainConfig
from so8t.config_fields import describe

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


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


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
