import json
import subprocess
import sys

import pytest

from so8t.cli import build_parser, main


def _subcommands(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _subcommands(sub, prefix + (name,))


def test_every_command_has_help(capsys):
    commands = list(_subcommands(build_parser()))
    assert ("model", "info") in commands and ("data", "validate") in commands
    for cmd in commands:
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: so8t" in capsys.readouterr().out


def test_python_dash_m_and_console_script():
    out = subprocess.run([sys.executable, "-m", "so8t", "--help"], capture_output=True, text=True, check=True)
    assert "data" in out.stdout and "model" in out.stdout


def test_data_validate_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "hi", "label": "ALLOW"}) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "label": "NOPE"}) + "\n")
    assert main(["data", "validate", str(good)]) == 0
    assert main(["data", "validate", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1: label: unknown label 'NOPE'" in err


def test_data_stats_without_tokens(tmp_path, capsys):
    f = tmp_path / "d.jsonl"
    rows = [{"prompt": "a", "label": "ALLOW", "lang": "en"}, {"prompt": "b", "label": "拒否", "lang": "ja", "difficulty": "hard"}]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    assert main(["data", "stats", "--no-tokens", str(f)]) == 0
    out = capsys.readouterr().out
    assert "records: 2" in out and "REFUSE=1 (50.0%)" in out and "ja=1" in out


def test_data_stats_counts_tokens_with_a_tokenizer(tmp_path, tiny_model_dir, capsys):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"prompt": "List my files", "label": "ALLOW"}) + "\n")
    assert main(["data", "stats", "--tokenizer", str(tiny_model_dir), str(f)]) == 0
    assert "prompt tokens (chat template applied): p50=" in capsys.readouterr().out


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["data", "stats", "--no-tokens", str(tmp_path / "missing.jsonl")]) == 2
    assert "so8t: error:" in capsys.readouterr().err
