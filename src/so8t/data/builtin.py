"""The built-in datasets shipped inside the package, each with fixed train / dev / test splits.

- builtin:  1,080 hand-written examples of an office agent's work (balanced labels, 50% Japanese)
- contrast: hand-written pairs of a safe prompt (ALLOW) and an unsafe twin (REFUSE / ESCALATE)
            on the same alarming word or theme; a pair never crosses a split
- wide:     hand-written breadth: a hazard taxonomy (violence, weapons and CBRN, self-harm,
            sexual content and minors, hate, harassment, drugs, fraud, privacy, cyber-attack,
            prompt injection, specialised advice) crossed with the agent's own risky actions,
            each with ALLOW look-alikes and grey ESCALATE cases; blunt and disguised requests,
            long benign inputs; label, length and style balanced; >= 45% Japanese written as
            Japanese (docs/data.md)

Not here, on purpose: heldout/ (repository root) is written apart from all of these and is
never trained or tuned on; training refuses its rows (source "so8t-heldout-*").
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from so8t.data.io import read_jsonl
from so8t.data.schema import Record
from so8t.data.splits import SPLITS

BUILTIN = "builtin"
CONTRAST = "contrast"
WIDE = "wide"
BUILTIN_SETS = (BUILTIN, CONTRAST, WIDE)


def builtin_path(split: str, name: str = BUILTIN) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if name not in BUILTIN_SETS:
        raise ValueError(f"unknown built-in dataset {name!r}; expected one of {', '.join(BUILTIN_SETS)}")
    file = f"{split}.jsonl" if name == BUILTIN else f"{name}-{split}.jsonl"
    return Path(str(resources.files("so8t.data") / "builtin" / file))


def load_builtin(split: str, name: str = BUILTIN) -> list[Record]:
    return read_jsonl(builtin_path(split, name))


def parse_builtin_spec(spec: str) -> tuple[str, str | None] | None:
    """A built-in dataset spec as the commands take it: 'builtin', 'contrast', 'wide', or one
    split of them ('builtin:dev', 'wide:test'). Returns (set, split or None when no split was
    named), or None when `spec` is not one (a JSONL path; an existing file of that name wins).
    An unknown split is a ValueError naming the valid ones."""
    name, sep, split = spec.partition(":")
    if name not in BUILTIN_SETS or Path(spec).exists():
        return None
    if sep and split not in SPLITS:
        close = difflib.get_close_matches(split, SPLITS, n=1)
        raise ValueError(
            f"{spec}: unknown split {split!r}; use one of {', '.join(SPLITS)}"
            + (f" (did you mean '{name}:{close[0]}'?)" if close else "")
        )
    return name, (split or None)


def spec_hint(spec: str) -> str:
    """For a path that does not exist: ' (did you mean the built-in set 'builtin'?)' when it is
    close to a built-in set name, else ''."""
    name, sep, split = spec.partition(":")
    close = difflib.get_close_matches(name, BUILTIN_SETS, n=1, cutoff=0.75)
    if not close or Path(spec).exists():
        return ""
    return f" (did you mean the built-in set '{close[0]}{sep}{split}'?)"
