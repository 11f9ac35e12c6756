"""The built-in bilingual dataset shipped inside the package, with fixed splits."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from so8t.data.io import read_jsonl
from so8t.data.schema import Record
from so8t.data.splits import SPLITS

BUILTIN = "builtin"


def builtin_path(split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return Path(str(resources.files("so8t.data") / "builtin" / f"{split}.jsonl"))


def load_builtin(split: str) -> list[Record]:
    return read_jsonl(builtin_path(split))
