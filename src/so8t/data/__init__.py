"""Stage 1: records, validation, JSONL io, the built-in dataset, importers, dedup and splits."""

from so8t.data.builtin import BUILTIN, BUILTIN_SETS, CONTRAST, builtin_path, load_builtin
from so8t.data.dedup import near_duplicate_pairs, normalize_text
from so8t.data.io import check_jsonl, read_jsonl, read_many, write_jsonl
from so8t.data.mix import Mix, assemble, drop_duplicates, split_files
from so8t.data.schema import DataError, Message, Problem, Record
from so8t.data.splits import SPLITS, split_records
from so8t.data.stats import DataStats, compute_stats

__all__ = [
    "BUILTIN",
    "BUILTIN_SETS",
    "CONTRAST",
    "SPLITS",
    "DataError",
    "DataStats",
    "Message",
    "Mix",
    "assemble",
    "drop_duplicates",
    "split_files",
    "Problem",
    "Record",
    "builtin_path",
    "check_jsonl",
    "compute_stats",
    "load_builtin",
    "near_duplicate_pairs",
    "normalize_text",
    "read_jsonl",
    "read_many",
    "split_records",
    "write_jsonl",
]
