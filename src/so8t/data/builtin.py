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
