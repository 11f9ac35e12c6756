"""The datasets `so8t eval` and `so8t calibrate` read: each --data spec becomes one named
`Dataset`, every data problem is raised (as `DataError`, naming file, row and field) before a
model loads, and a dataset is labelled throughout or not at all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from so8t.data import DataError, Problem, Record, check_jsonl, load_builtin
from so8t.data.builtin import parse_builtin_spec


@dataclass
class Dataset:
    name: str
    records: list[Record]
    labelled: bool


def load_dataset(spec: str) -> Dataset:
    """'builtin:test', 'contrast:test' (or :dev, :train; a set name alone is its test split) or a
    JSONL path.
    A file is labelled when every row has a label, unlabelled when none has; a mix is an error
    naming the rows without one."""
    builtin = parse_builtin_spec(spec)
    if builtin is not None:
        name, split = builtin[0], builtin[1] or "test"
        return Dataset(f"{name}-{split}", load_builtin(split, name), True)
    checked = check_jsonl(spec, require_label=False)
    if checked.problems:
        raise DataError(checked.problems)
    recs = checked.records
    missing = [i for i, r in enumerate(recs) if r.label is None]
    if missing and len(missing) < len(recs):
        raise DataError(
            [
                Problem(
                    spec,
                    0,
                    "label",
                    f"{len(missing)} of {len(recs)} rows have no label (e.g. the row "
                    f"with id {recs[missing[0]].id!r}); label every row, or none for predictions only",
                )
            ]
        )
    return Dataset(Path(spec).stem, recs, not missing)


def rule_groups(records: Sequence[Record]) -> list[str] | None:
    """Each record's policy rule id (`meta.rule`, as `so8t policy cases` writes it; '(no rule)' for
    the others), or None when no record has one."""
    rules = [(r.meta or {}).get("rule") for r in records]
    if not any(isinstance(g, str) for g in rules):
        return None
    return [g if isinstance(g, str) else "(no rule)" for g in rules]
