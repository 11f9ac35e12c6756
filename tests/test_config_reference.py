"""docs/config.md is what scripts/config_reference.py writes from the config dataclasses (issue 17, item 12)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from so8t.config import ServerConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_config_md_is_up_to_date_with_the_config_dataclasses():
    script = _script()
    committed = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == script.render(), f"docs/config.md is out of date with src/so8t/config.py; run: {script.COMMAND}"


def test_the_reference_lists_every_field_with_its_type_default_and_comment():
    text = _script().render()
    for cls in (TrainConfig, ServerConfig):
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in text, f"{cls.__name__}.{f.name} missing"
    assert '| `amp` | `Literal["none", "bf16", "fp16"]` | `"none"` | autocast for matmuls' in text
    assert (
        '| `lora_targets` | `list[str]` | `["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]` |' in text
    )
    assert "| `gate_max_chars` | `int` | `200000` | characters of all messages together; beyond: 413 |" in text
    assert "### loss: L = sft + alpha*ce" in text and "Policy lives here, on the server" in text


def test_check_mode_names_the_command_when_the_file_is_stale(tmp_path, monkeypatch, capsys):
    script = _script()
    stale = tmp_path / "config.md"
    stale.write_text("old\n", encoding="utf-8")
    monkeypatch.setattr(script, "OUT", stale)
    monkeypatch.setattr(script, "REPO", tmp_path)
    assert script.main(["--check"]) == 1
    assert f"config.md is out of date; run: {script.COMMAND}" in capsys.readouterr().err
    assert stale.read_text(encoding="utf-8") == "old\n"
    assert script.main([]) == 0 and script.main(["--check"]) == 0
