"""Issue 16, item 3: the CLI's choices and help are read from the code (presets, approval
statuses, calibration objectives, GGUF types), not restated; building the parser imports none of
the heavy stages, and no help or message claims a training time."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from so8t.cli import build_parser, main
from so8t.train.presets import DEFAULT_PRESET, PRESETS

SRC = Path(__file__).resolve().parents[1] / "src"


def _option(*path: str, flag: str) -> argparse.Action:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return next(a for a in parser._actions if flag in a.option_strings)


def test_the_option_choices_are_the_codes_own_names():
    from so8t.agent.approvals import Status
    from so8t.model.export import GGUF_TYPES
    from so8t.model.thresholds import OBJECTIVES

    assert list(_option("approvals", "list", flag="--status").choices) == [s.value for s in Status]
    assert list(_option("calibrate", flag="--objective").choices) == list(OBJECTIVES)
    assert list(_option("export", flag="--gguf").choices) == list(GGUF_TYPES)


def test_train_help_names_every_shipped_preset_and_the_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps at hyphens
    assert f"{DEFAULT_PRESET} (default without --config)" in text
    assert all(name in text for name in PRESETS), text
    assert "docs/config.md" in text


def test_train_help_lists_every_config_field_with_its_default_and_its_comment_and_errors_do_not(capsys):
    import dataclasses

    from so8t.config import TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    fields = text.split("TrainConfig fields", 1)[1]
    assert all(f"    {f.name} (default " in fields for f in dataclasses.fields(TrainConfig))
    flat = " ".join(fields.split())
    assert "head_split_weight (default 1.0) split heads: weight of each head's own binary loss" in flat
    assert "loss: L = sft + alpha*ce" in flat  # the section headings come along
    with pytest.raises(SystemExit):
        main(["train", "--max-steps", "many"])
    assert "TrainConfig fields" not in capsys.readouterr().err  # a usage error stays short


def test_a_status_or_gguf_type_the_code_does_not_know_is_refused_by_the_parser(capsys):
    for argv in (["approvals", "list", "--status", "DONE"], ["export", "run", "--out", "x", "--gguf", "q4"]):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(argv)
        assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert build_parser().parse_args(["approvals", "list", "--status", "PENDING"]).status == "PENDING"
    assert build_parser().parse_args(["export", "run", "--out", "x"]).gguf is None  # every type (cmd_export)
    assert build_parser().parse_args(["export", "run", "--out", "x", "--gguf"]).gguf == []


def test_building_the_parser_imports_neither_torch_nor_the_database_layer_nor_the_field_reader():
    code = (
        "import sys; from so8t.cli import build_parser; build_parser(); "
        "print(sorted({'torch', 'sqlalchemy', 'numpy', 'so8t.config_fields'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_no_message_of_the_cli_claims_how_long_training_takes():
    source = (SRC / "so8t" / "cli.py").read_text(encoding="utf-8")
    assert "minutes" not in source
