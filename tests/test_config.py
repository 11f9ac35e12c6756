import pytest

from so8t.config import ConfigError, TrainConfig, from_dict, load_yaml, parse_overrides, resolve, save_yaml
from so8t.train.presets import PRESETS, preset


def test_defaults_follow_the_seed():
    cfg = TrainConfig()
    assert (cfg.alpha, cfg.beta, cfg.gamma) == (3.0, 7.0, 1.5)
    assert (cfg.lr, cfg.head_lr, cfg.head_freeze_at, cfg.warmup_ratio, cfg.patience) == (1e-4, 1e-5, 0.5, 0.03, 3)
    assert (cfg.pet_boundaries, cfg.pet_values) == ([0.3, 0.6], [0.0, 0.15, 1.0])
    assert cfg.safe_allow_reward == 0.0 and cfg.escalate_penalty == 0.0
    assert cfg.lora_targets == ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'head_lrr' \(did you mean 'head_lr'\?\)"):
        from_dict(TrainConfig, {"head_lrr": 1e-4})


@pytest.mark.parametrize(
    "key,value,msg",
    [
        ("lr", "fast", "expected a number"),
        ("micro_batch", 2.5, "expected an integer"),
        ("pooling", "max", "is not one of"),
        ("load_in_4bit", "yes", "true or false"),
        ("pet_values", [0.0, 1.0], "one value more"),
        ("head_freeze_at", 2.0, "in \\[0, 1\\]"),
    ],
)
def test_wrong_types_and_ranges_name_the_key(key, value, msg):
    with pytest.raises(ConfigError, match=f"{key}.*{msg}"):
        from_dict(TrainConfig, {key: value})


def test_yaml_round_trip_and_layers(tmp_path):
    f = tmp_path / "c.yaml"
    save_yaml(TrainConfig(lr=2e-4, data=["a.jsonl", "builtin"]), f)
    cfg = resolve(
        TrainConfig,
        (preset("cpu-quick"), "preset"),
        (load_yaml(f), str(f)),
        (parse_overrides(["max_steps=7", "lora_targets=q_proj,v_proj", "head_lr=1e-4"]), "cli"),
    )
    assert cfg.lr == 2e-4 and cfg.head_lr == 1e-4 and cfg.max_steps == 7 and cfg.lora_targets == ["q_proj", "v_proj"]
    assert cfg.data == ["a.jsonl", "builtin"]


def test_yaml_errors_say_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("lr: 1e-4\nalpha: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_yaml(f)
    g = tmp_path / "unknown.yaml"
    g.write_text("colour: red\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml: unknown key 'colour'"):
        resolve(TrainConfig, (load_yaml(g), str(g)))


def test_every_preset_is_a_valid_config():
    for name in PRESETS:
        resolve(TrainConfig, (preset(name), name))
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gpu-huge")
    assert preset("rtx3060-7b")["load_in_4bit"] and preset("rtx3060-7b")["optim"] == "paged_adamw_8bit"
    assert preset("pet-20-60")["pet_boundaries"] == [0.2, 0.6]


def test_the_cpu_presets_train_on_the_contrast_pairs_with_the_pair_margin():
    from so8t.cli import build_parser, train_config_from_args

    for name in ("cpu-quick", "cpu-full", "rtx3060-7b", "rtx3060-3b"):
        cfg = resolve(TrainConfig, (preset(name), name))
        assert "contrast" in cfg.data and cfg.pair_margin > 0, name
    default, name = train_config_from_args(build_parser().parse_args(["train"]))  # `so8t train`, no flags
    assert name == "cpu-quick" and default.data == ["builtin", "contrast", "wide"] and default.pair_margin > 0
    assert default.model == "embedded:gemma3-270m" and default.head_layers == "mix"
    # cpu-quick-apart: the head reads only blocks below the adapter (Gemma 3 270M has 18)
    apart = resolve(TrainConfig, (preset("cpu-quick-apart"), "cpu-quick-apart"))
    assert max(apart.head_layers) <= 18 - apart.lora_layers and apart.lora_layers > 0


def test_overrides_need_key_value():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])


def test_the_example_server_config_is_valid_and_bad_keys_are_named(tmp_path):
    from pathlib import Path

    from so8t.config import ConfigError, ServerConfig, from_dict, load_yaml

    example = Path(__file__).parents[1] / "examples" / "server.yaml"
    cfg = from_dict(ServerConfig, load_yaml(example), str(example))
    assert cfg.fail_action == "REFUSE" and cfg.backend == "in-process"
    bad = tmp_path / "s.yaml"
    bad.write_text("run: r\nfail_acton: ALLOW\n")
    with pytest.raises(ConfigError, match=r"s.yaml: unknown key 'fail_acton' \(did you mean 'fail_action'\?\)"):
        from_dict(ServerConfig, load_yaml(bad), str(bad))
    bad.write_text("run: r\nfail_action: ALLOW\n")
    with pytest.raises(ConfigError, match="fail_action: 'ALLOW' is not one of"):
        from_dict(ServerConfig, load_yaml(bad), str(bad))
    bad.write_text("run: r\nbackend: openai\n")
    with pytest.raises(ConfigError, match="backend_url: needed for backend 'openai'"):
        from_dict(ServerConfig, load_yaml(bad), str(bad))
