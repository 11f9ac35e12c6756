import json
import subprocess
import sys

import pytest

from so8t.cli import build_parser, main

from cli_parsers import subcommands


def test_every_command_has_help(capsys):
    commands = list(subcommands(build_parser()))
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
    rows = [
        {"prompt": "a", "label": "ALLOW", "lang": "en"},
        {"prompt": "b", "label": "拒否", "lang": "ja", "difficulty": "hard"},
    ]
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


def test_data_split_is_fixed_deduplicated_and_never_overwrites(tmp_path, capsys):
    from so8t.data import load_builtin, read_jsonl

    builtin_prompt = load_builtin("train")[0].prompt_text()
    rows = [
        {
            "prompt": f"public request {i}: {'abcdefghij'[i % 10] * (i % 7 + 3)} topic {i * 7919 % 997}",
            "label": ["ALLOW", "ESCALATE", "REFUSE"][i % 3],
        }
        for i in range(60)
    ]
    rows.append(dict(rows[0]))  # exact duplicate
    rows.append({"prompt": builtin_prompt + "!", "label": "ALLOW"})  # near copy of a built-in prompt
    src = tmp_path / "public.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "split"
    assert main(["data", "split", str(src), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exact duplicate=1" in printed and "near duplicate of built-in=1" in printed
    assert not (out / "dev.jsonl").exists()  # fraction 0: no (empty) file
    parts = {s: read_jsonl(out / f"{s}.jsonl") for s in ("train", "test")}
    assert sum(len(p) for p in parts.values()) == 60
    assert 4 <= len(parts["test"]) <= 8  # 0.9 / 0 / 0.1, stratified per label
    assert not {r.prompt for r in parts["train"]} & {r.prompt for r in parts["test"]}
    before = (out / "test.jsonl").read_bytes()
    assert main(["data", "split", str(src), "-o", str(out), "--seed", "5"]) == 2  # refuses: files exist
    assert "already exist" in capsys.readouterr().err
    assert (out / "test.jsonl").read_bytes() == before
    assert main(["data", "split", str(src), "-o", str(out), "--force"]) == 0  # same seed: same split
    assert (out / "test.jsonl").read_bytes() == before


# --- issue 17: a path that is not a complete run is a clear error at start (serve, chat, demo)


def _marker(folder, **info):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "so8t-run.json").write_text(json.dumps(info))
    return folder


def test_demo_on_a_missing_run_names_the_path_and_the_closest_run_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _marker(tmp_path / "runs" / "cpu-quick-20250101-120000", status="complete")
    assert main(["demo", "runs/quick"]) == 2  # was: KeyError: 'status' after starting the server
    err = capsys.readouterr().err
    assert (
        "runs/quick is not an so8t run: no such folder" in err
        and "did you mean 'runs/cpu-quick-20250101-120000'" in err
    )
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["serve", "chat", "demo"])
def test_a_folder_without_a_run_marker_is_refused_at_start(command, tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    assert main([command, str(tmp_path / "notarun")]) == 2
    assert f"{tmp_path / 'notarun'} is not an so8t run (no so8t-run.json)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_an_unfinished_run_is_refused_at_start_with_its_status_and_step(command, tmp_path, capsys):
    run = _marker(tmp_path / "run", status="running", step=40, total_steps=400)
    assert main([command, str(run)]) == 2
    err = capsys.readouterr().err
    assert "run status is 'running' at step 40 of 400, not 'complete'" in err and f"--resume {run}" in err


def test_a_complete_marker_without_the_weights_is_refused_naming_what_is_missing(tmp_path, capsys):
    run = _marker(tmp_path / "run", status="complete")
    assert main(["chat", str(run)]) == 2
    err = capsys.readouterr().err
    assert "marked complete but head.json, head.safetensors, adapter/adapter_config.json" in err


def test_serve_without_any_run_says_how_to_give_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["serve"]) == 2
    assert "serve: no run given; pass the trained run folder" in capsys.readouterr().err


def test_a_config_file_run_that_is_missing_is_refused_at_start(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "server.yaml").write_text("run: runs/quick\n")
    assert main(["serve", "--config", "server.yaml"]) == 2
    assert (
        "runs/quick is not an so8t run: no such folder; train one with: so8t train --out runs/quick"
        in capsys.readouterr().err
    )


# --- issue 17, item 1: where the run goes is said before training starts


def test_train_names_its_run_folder_on_the_first_line_and_again_at_the_end(
    tiny_run, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    data = tiny_run[1]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(
        f"model: {tiny_model_dir}\ndata: [{data / 'train.jsonl'}]\ndev_data: [{data / 'dev.jsonl'}]\n"
        "lora_r: 4\nlora_alpha: 8\nmax_length: 64\nmicro_batch: 4\ngrad_accum: 1\nmax_steps: 2\neval_every: 2\n"
        "head_probe_steps: 0\n"
    )
    assert main(["train", "--config", "tiny.yaml", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    run = next((tmp_path / "runs").iterdir())
    assert lines[0] == f"training into run folder runs/{run.name}"  # before any model loads or step runs
    assert run.name.startswith("custom-") and any(f"run saved to runs/{run.name}" in line for line in lines)


# --- issue 17, item 3: the dataset specs, the help texts, model info


def test_data_validate_accepts_the_built_in_specs_train_and_eval_take(capsys):
    assert main(["data", "validate", "builtin", "contrast:dev", "wide:test"]) == 0  # was: builtin: cannot read
    out = capsys.readouterr().out
    for shown in (
        "builtin:train (train.jsonl): OK",
        "builtin:dev (dev.jsonl): OK",
        "builtin:test (test.jsonl): OK",
        "contrast:dev (contrast-dev.jsonl): OK",
        "wide:test (wide-test.jsonl): OK",
    ):
        assert shown in out
    assert "contrast:train" not in out


def test_data_validate_names_the_closest_spec_for_a_misspelt_set_or_split(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "validate", "builtin:tset"]) == 2
    assert "unknown split 'tset'; use one of train, dev, test (did you mean 'builtin:test'?)" in capsys.readouterr().err
    assert main(["data", "validate", "contrats:dev"]) == 1
    assert "(did you mean the built-in set 'contrast:dev'?)" in capsys.readouterr().err


def test_a_file_named_like_a_built_in_set_is_read_as_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "builtin").write_text(json.dumps({"prompt": "hi", "label": "ALLOW"}) + "\n")
    assert main(["data", "validate", "builtin"]) == 0
    assert capsys.readouterr().out.strip() == "builtin: OK, 1 record(s)"


def _help(capsys, *cmd):
    with pytest.raises(SystemExit):
        main([*cmd, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_help_names_every_data_spec_the_objective_and_the_server_defaults(capsys):
    eval_help = _help(capsys, "eval")
    assert "contrast" in eval_help and "wide" in eval_help and "builtin:test" in eval_help
    calibrate_help = _help(capsys, "calibrate")
    assert "--objective OBJECTIVE what the thresholds maximise, within the constraints below: " in calibrate_help
    assert "safety_score, refuse_recall (default safety_score" in calibrate_help
    serve_help = _help(capsys, "serve")
    assert (
        "(default: 127.0.0.1, or host: in --config)" in serve_help
        and "(default: 8000, or port: in --config)" in serve_help
    )
    assert "(default: 8001)" in _help(capsys, "llm-serve")
    assert "builtin:dev" in _help(capsys, "data", "validate")


def test_model_info_names_the_model_and_shows_its_chat_template(tiny_model_dir, capsys):
    from so8t.model import load_tokenizer

    template = load_tokenizer(str(tiny_model_dir)).chat_template  # the fixture's ChatML template
    assert template and "<|im_start|>" in template
    assert main(["model", "info", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert f"name               {tiny_model_dir}" in out and f"source             {tiny_model_dir}" in out
    assert "chat template (from the tokenizer):\n" + template in out
    assert main(["model", "info", str(tiny_model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["chat_template"] == template and info["chat_template_from"] == "tokenizer"


def test_model_info_says_when_the_tokenizer_has_no_chat_template(tiny_model_dir, tmp_path, capsys):
    import shutil

    from so8t.model.prompt import FALLBACK_CHAT_TEMPLATE

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert main(["model", "info", str(bare)]) == 0
    out = capsys.readouterr().out
    assert "has_chat_template  False" in out
    assert "chat template: none in the tokenizer; so8t uses its ChatML fallback:\n" + FALLBACK_CHAT_TEMPLATE in out
