"""The `so8t` command: one small function per command, each a thin call into a stage."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from so8t import __version__


def cmd_model_info(args: argparse.Namespace) -> int:
    from so8t.model import describe, load_base_model

    model, tokenizer = load_base_model(args.ref)
    info = describe(args.ref, model, tokenizer)
    if args.json:
        print(json.dumps(info.as_dict(), indent=2))
    else:
        for key, value in info.as_dict().items():
            print(f"{key:<18} {value:,}" if isinstance(value, int) and not isinstance(value, bool) else f"{key:<18} {value}")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from so8t.data import check_jsonl

    failed = 0
    for path in args.files:
        checked = check_jsonl(path, require_label=not args.allow_unlabeled)
        for p in checked.problems:
            print(p, file=sys.stderr)
        if checked.problems:
            failed += 1
            print(f"{path}: {len(checked.problems)} problem(s), {len(checked.records)} valid record(s)", file=sys.stderr)
        else:
            print(f"{path}: OK, {len(checked.records)} record(s)")
    return 1 if failed else 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from so8t.data import compute_stats, read_many

    records = read_many(args.files, require_label=False)
    count = None
    if not args.no_tokens:
        from so8t.model import encode_prompt, load_tokenizer

        tok = load_tokenizer(args.tokenizer)
        count = lambda r: len(encode_prompt(tok, r.messages()))  # noqa: E731
    print(compute_stats(records, count).format())
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from so8t.data.importers import import_dataset

    result = import_dataset(args.name, args.path, mapping=_parse_mapping(args.map), out=args.out)
    print(result.summary())
    return 0


def _parse_mapping(items: Sequence[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--map expects KEY=LABEL, got {item!r}")
        out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="so8t", description="A trained ALLOW / ESCALATE / REFUSE safety gate on an unmodified LLM.")
    parser.add_argument("--version", action="version", version=f"so8t {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    model = sub.add_parser("model", help="inspect base models").add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True)
    p = model.add_parser("info", help="architecture, size and chat template of a base model")
    p.add_argument("ref", nargs="?", default="embedded", help="'embedded' (default), a HF folder, a .gguf file or a hub id")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_model_info)

    data = sub.add_parser("data", help="validate, inspect and import datasets").add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True)
    p = data.add_parser("validate", help="check JSONL files; every problem with file, line and field")
    p.add_argument("files", nargs="+")
    p.add_argument("--allow-unlabeled", action="store_true", help="accept rows without a label (prediction-only data)")
    p.set_defaults(func=cmd_data_validate)
    p = data.add_parser("stats", help="counts by label x difficulty x language x source, token-length percentiles")
    p.add_argument("files", nargs="+")
    p.add_argument("--tokenizer", default="embedded", help="model reference whose tokenizer counts tokens")
    p.add_argument("--no-tokens", action="store_true", help="skip token counting (no model needed)")
    p.set_defaults(func=cmd_data_stats)
    p = data.add_parser("import", help="convert a public dataset into so8t records")
    p.add_argument("name", help="importer name (see `so8t data import --list`)")
    p.add_argument("path", help="the dataset file or folder")
    p.add_argument("-o", "--out", required=True, help="output JSONL")
    p.add_argument("--map", action="append", metavar="KEY=LABEL", help="override one entry of the label mapping (repeatable)")
    p.set_defaults(func=cmd_data_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from so8t.data import DataError
    from so8t.model import ModelLoadError

    try:
        return args.func(args)
    except (DataError, ModelLoadError, FileNotFoundError, ValueError) as exc:
        print(f"so8t: error: {exc}", file=sys.stderr)
        return 2
