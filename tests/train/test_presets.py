"""Issue 16, item 3: every shipped preset is a YAML file read by the loader a --config file goes
through, and builds a valid TrainConfig; a misspelt key names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from so8t.config import ConfigError, TrainConfig, load_yaml, resolve
from so8t.train.presets import DEFAULT_PRESET, PRESET_DIR, PRESETS, load_preset_file, preset

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(PRESET_DIR.glob("*.yaml"), key=lambda f: f.stem)


def test_there_is_one_preset_per_shipped_file_and_the_default_is_one_of_them():
    assert [f.stem for f in SHIPPED] == list(PRESETS)
    assert DEFAULT_PRESET in PRESETS and len(SHIPPED) >= 6


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_preset_file_loads_through_the_loader_and_builds_a_valid_train_config(path):
    cfg = resolve(TrainConfig, (load_preset_file(path, PRESETS), str(path)))
    cfg.validate()
    assert preset(path.stem) == load_preset_file(path, PRESETS)
    if "base" not in load_yaml(path):  # a plain preset file is also a valid --config file as it is
        assert resolve(TrainConfig, (load_yaml(path), str(path))) == cfg


def test_a_preset_file_with_a_misspelt_key_fails_naming_the_file_and_the_key(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("# a comment\nmodel: embedded\nhead_lrr: 1.0e-3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key 'head_lrr' \(did you mean 'head_lr'\?\)"):
        load_preset_file(bad)


def test_a_preset_file_with_a_bad_value_or_an_unknown_base_fails_naming_the_file(tmp_path):
    value = tmp_path / "value.yaml"
    value.write_text("lora_r: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"value\.yaml: lora_r: must be > 0"):
        load_preset_file(value)
    base = tmp_path / "base.yaml"
    base.write_text("base: cpu-quik\nlora_layers: 4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"base\.yaml: base: unknown preset 'cpu-quik'"):
        load_preset_file(base, PRESETS)


def test_a_preset_with_a_base_starts_from_the_base_and_replaces_its_own_keys():
    smollm, quick = preset("cpu-quick-smollm"), preset("cpu-quick")
    assert smollm == {**quick, "model": "embedded", "lora_layers": 10}


def test_the_presets_are_read_only_and_preset_returns_a_copy():
    with pytest.raises(TypeError):
        PRESETS["mine"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        PRESETS[DEFAULT_PRESET]["lr"] = 1.0  # type: ignore[index]
    copy = preset(DEFAULT_PRESET)
    copy["data"].append("mine.jsonl")
    assert "mine.jsonl" not in preset(DEFAULT_PRESET)["data"]


def test_the_package_data_ships_the_preset_files_in_a_wheel():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    patterns = package_data["package-data"]["so8t.train.presets"]
    shipped = {p for pattern in patterns for p in PRESET_DIR.glob(pattern)}
    assert set(SHIPPED) <= shipped
