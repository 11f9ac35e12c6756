"""The training recipe on a tiny random Llama: gradients, groups, body untouched, saved run, resume."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from so8t.config import ConfigError, TrainConfig
from so8t.data import Record, load_builtin, write_jsonl
from so8t.model import load_run, predict_probs, tag_token_ids
from so8t.train import losses
from so8t.train.batching import collate, encode_record
from so8t.train.recipe import (
    RunFolderError,
    build_model,
    loss_parts,
    param_groups,
    train,
    weights_of,
)


def tiny_cfg(model_dir, **kw):
    base = dict(
        model=str(model_dir),
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        max_length=64,
        micro_batch=2,
        grad_accum=1,
        max_steps=4,
        eval_every=2,
        lr=1e-3,
        head_lr=1e-3,
        pooling="mean",
    )
    base.update(kw)
    cfg = TrainConfig(**base)
    cfg.validate()
    return cfg


def sample_records(n_per_label=6):
    recs = load_builtin("train")
    out = []
    for label in ("ALLOW", "ESCALATE", "REFUSE"):
        out += [r for r in recs if r.label.name == label and r.lang == "en"][:n_per_label]
    return out


def data_kw(d):
    return dict(data=[str(d / "train.jsonl")], dev_data=[str(d / "dev.jsonl")], test_data=[str(d / "test.jsonl")])


def batch_of(model_dir, records, cfg):
    model, tok, _ = build_model(cfg)
    enc = [encode_record(r, tok, cfg.max_length) for r in records]
    return model, tok, enc


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_param_groups_cover_every_trainable_parameter_exactly_once(tiny_model_dir):
    cfg = tiny_cfg(tiny_model_dir)
    model, _, _ = build_model(cfg)
    groups = param_groups(model, cfg)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(ids) == sorted(trainable) and len(ids) == len(set(ids))
    assert {g["name"]: g["lr"] for g in groups} == {"lora": cfg.lr, "head": cfg.head_lr}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.head.parameters()}
    # nothing of the base model is trainable, only LoRA and the head
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("head.") for n in names)


def test_head_shares_nothing_with_the_lm_head_and_is_fp32(tiny_model_dir):
    model, _, _ = build_model(tiny_cfg(tiny_model_dir))
    head_ptrs = {p.data_ptr() for p in model.head.parameters()}
    assert not head_ptrs & {p.data_ptr() for p in model.body.parameters()}
    assert [tuple(p.shape) for p in model.head.parameters()] == [(16, 32), (16,), (3, 16), (3,)]
    assert all(p.dtype == torch.float32 for p in model.head.parameters())


def test_gradient_of_batch_4_equals_4_accumulated_batches_of_1(tiny_model_dir):
    cfg = tiny_cfg(tiny_model_dir)
    model, tok, enc = batch_of(tiny_model_dir, sample_records(2)[:4], cfg)
    with torch.no_grad():  # make LoRA B non-zero so every LoRA weight gets a gradient
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    tags, w = tag_token_ids(tok), weights_of(cfg)

    def run(chunks):
        model.zero_grad()
        for chunk in chunks:
            b = collate(chunk, tok.pad_token_id)
            total = losses.composite(loss_parts(model, b, tags, cfg, None, True), w, lambda_pet=1.0)
            (total / len(chunks)).backward()
        return grads(model)

    big = run([enc])
    small = run([[e] for e in enc])
    assert big.keys() == small.keys() and len(big) > 0
    for n in big:
        assert torch.allclose(big[n], small[n], atol=1e-6, rtol=1e-4), n


@pytest.mark.parametrize("reentrant", [True, False])
def test_pet_reaches_lora_weights_under_gradient_checkpointing(tiny_model_dir, reentrant):
    cfg = tiny_cfg(tiny_model_dir)
    recs = sample_records(1)

    def pet_grads(checkpointing):
        torch.manual_seed(0)
        model, tok, _ = build_model(cfg)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.linspace(-0.05, 0.05, p.numel()).view_as(p))
        if checkpointing:
            model.body.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
            model.body.enable_input_require_grads()
        model.train()
        b = collate([encode_record(r, tok, cfg.max_length) for r in recs], tok.pad_token_id)
        out = model(b["input_ids"], b["attention_mask"], b["prompt_mask"])
        losses.pet_loss(out.hidden_states[1:], b["attention_mask"]).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}

    plain, ckpt = pet_grads(False), pet_grads(True)
    assert plain.keys() == ckpt.keys() and len(plain) > 0
    assert any(g.abs().sum() > 0 for g in ckpt.values())
    for n in plain:
        assert torch.allclose(plain[n], ckpt[n], atol=1e-6, rtol=1e-4), n


def test_forward_with_head_gives_the_plain_models_logits(tiny_model_dir):
    cfg = tiny_cfg(tiny_model_dir)
    model, tok, enc = batch_of(tiny_model_dir, sample_records(1), cfg)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    b = collate(enc, tok.pad_token_id)
    model.eval()
    with torch.no_grad():
        ours = model(b["input_ids"], b["attention_mask"], b["prompt_mask"]).logits
        ref = plain(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    assert torch.allclose(ours, ref, atol=1e-6)  # fresh LoRA (B = 0) + head + hidden states: same logits


def test_end_to_end_tiny_training_writes_a_complete_run(tiny_model_dir, data_files, tmp_path):
    cfg = tiny_cfg(tiny_model_dir, **data_kw(data_files))
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict().items()}
    out = tmp_path / "run"
    result = train(cfg, out, progress=False)
    assert result.steps == 4 and result.test is not None
    for f in (
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "head.safetensors",
        "head.json",
        "config.yaml",
        "tokenizer/tokenizer.json",
        "metrics/steps.jsonl",
        "metrics/evals.jsonl",
        "metrics/final.json",
        "plots/training_curves.png",
        "so8t-run.json",
    ):
        assert (out / f).is_file(), f
    assert not (out / "checkpoints").exists()
    head = json.loads((out / "head.json").read_text())
    assert head["labels"] == ["ALLOW", "ESCALATE", "REFUSE"] and head["hidden_size"] == 32
    assert (
        head["pooling"] == "mean" and head["base_model"] == str(tiny_model_dir) and len(head["base_fingerprint"]) == 16
    )
    steps = [json.loads(x) for x in (out / "metrics/steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    for key in ("sft", "safety_ce", "dangerous_allow", "good_escalate", "pet", "total", "lambda_pet", "lr", "head_lr"):
        assert key in steps[0]
    assert json.loads((out / "so8t-run.json").read_text())["status"] == "complete"

    # the base weights never changed; only LoRA and the head were trained
    model, tok, meta = load_run(out)
    with model.body.disable_adapter():
        trained_base = {
            k.replace("base_model.model.", "").replace(".base_layer", ""): v
            for k, v in model.body.state_dict().items()
            if "lora_" not in k
        }
    for k, v in before.items():
        assert torch.equal(trained_base[k], v), k
    # the saved run restores exactly
    recs = sample_records(2)
    p1 = predict_probs(model, tok, recs, cfg.max_length)
    model2, _, _ = load_run(out)
    assert torch.equal(p1, predict_probs(model2, tok, recs, cfg.max_length))

    # a run refuses to load on a different base model, or with a damaged head
    from so8t.model import RunError

    head_json = json.loads((out / "head.json").read_text())
    (out / "head.json").write_text(json.dumps({**head_json, "base_fingerprint": "0" * 16}))
    with pytest.raises(RunError, match="different base model"):
        load_run(out)
    (out / "head.json").write_text(json.dumps(head_json))
    (out / "head.safetensors").write_bytes(b"garbage")
    with pytest.raises(RunError, match="cannot load the safety head"):
        load_run(out)


def test_head_is_frozen_after_its_fraction(tiny_model_dir, data_files, tmp_path):
    cfg = tiny_cfg(tiny_model_dir, head_freeze_at=0.5, **data_kw(data_files))
    train(cfg, tmp_path / "run", progress=False)
    steps = [json.loads(x) for x in (tmp_path / "run/metrics/steps.jsonl").read_text().splitlines()]
    assert [s["head_frozen"] for s in steps] == [False, False, True, True]
    assert steps[-1]["head_lr"] == 0.0 and steps[-1]["lr"] >= 0.0


def test_resume_after_interrupt_matches_an_uninterrupted_run(tiny_model_dir, data_files, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_model_dir, max_steps=6, eval_every=2, patience=10, **data_kw(data_files))
    train(cfg, tmp_path / "full", progress=False)

    import so8t.train.recipe as recipe

    real = recipe.losses.composite
    calls = {"n": 0}

    def interrupt_at_step_5(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # grad_accum 1: the 5th call is step 5
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(recipe.losses, "composite", interrupt_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", progress=False)
    marker = json.loads((tmp_path / "cut/so8t-run.json").read_text())
    assert marker["status"] == "interrupted" and marker["step"] == 4
    with pytest.raises(RunFolderError, match="already holds"):
        train(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(recipe.losses, "composite", real)
    with (tmp_path / "cut/metrics/steps.jsonl").open("a") as f:  # as if killed after logging a later step
        f.write(json.dumps({"step": 5, "sft": 999.0}) + "\n")
    result = train(cfg, tmp_path / "cut", resume=True, progress=False)
    assert result.steps == 6
    logged = [json.loads(x)["step"] for x in (tmp_path / "cut/metrics/steps.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6] and "999" not in (tmp_path / "cut/metrics/steps.jsonl").read_text()
    a, _, _ = load_run(tmp_path / "full")
    b, _, _ = load_run(tmp_path / "cut")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n


def test_bad_inputs_fail_before_anything_is_written(tiny_model_dir, data_files, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(Exception, match="empty"):
        train(tiny_cfg(tiny_model_dir, data=[str(empty)], dev_data=[str(empty)]), tmp_path / "r1", progress=False)
    assert not (tmp_path / "r1").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "label": "MAYBE"}\n')
    with pytest.raises(Exception, match="bad.jsonl:1: label"):
        train(tiny_cfg(tiny_model_dir, data=[str(bad)]), tmp_path / "r2", progress=False)
    assert not (tmp_path / "r2").exists()
    with pytest.raises(ValueError, match="lora_targets"):
        train(tiny_cfg(tiny_model_dir, lora_targets=["c_attn"], **data_kw(data_files)), tmp_path / "r3", progress=False)
    assert not (tmp_path / "r3").exists()
    with pytest.raises(ConfigError, match="pet_values"):
        tiny_cfg(tiny_model_dir, pet_values=[1.0])


def test_long_prompts_are_truncated_and_counted(tiny_model_dir):
    cfg = tiny_cfg(tiny_model_dir, max_length=24)
    _, tok, _ = build_model(cfg)
    rec = Record(prompt="please list the files " * 20, label="ALLOW", response="Action: ALLOW\nSure.\nRationale: fine.")
    e = encode_record(rec, tok, 24)
    assert e.truncated and len(e.input_ids) <= 24
    assert e.tag_pos >= 0 and e.labels[e.tag_pos] == tag_token_ids(tok)[0]


def test_logits_only_from_the_last_prompt_token_change_nothing(tiny_model_dir):
    cfg = tiny_cfg(tiny_model_dir, max_length=48)
    model, tok, enc = batch_of(tiny_model_dir, sample_records(2)[:4], cfg)
    model.eval()
    b = collate(enc, tok.pad_token_id)
    tags = tag_token_ids(tok)
    with torch.no_grad():
        parts = loss_parts(model, b, tags, cfg, None, True)
        full = model(b["input_ids"], b["attention_mask"], b["prompt_mask"], logits_from=0)
        assert full.logits_offset == 0
        assert parts["sft"].item() == pytest.approx(losses.sft_loss(full.logits, b["labels"]).item(), rel=1e-5)
        rows = torch.arange(4)
        lm_allow = full.logits[rows, b["tag_pos"] - 1].softmax(-1)[:, tags[0]]
        probs = full.head_logits.softmax(-1)
        expected = losses.dangerous_allow(probs, b["y"], lm_allow)
        assert parts["dangerous_allow"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_early_stopping_after_patience_and_best_restored(tiny_model_dir, data_files, tmp_path):
    # learning rates 0: the dev score never improves after the first evaluation
    cfg = tiny_cfg(tiny_model_dir, lr=1e-12, head_lr=0.0, max_steps=10, eval_every=1, patience=2, **data_kw(data_files))
    result = train(cfg, tmp_path / "run", progress=False)
    final = json.loads((tmp_path / "run/metrics/final.json").read_text())
    assert result.steps == 3 and final["stopped_early"] and result.best_step == 1
    evals = [json.loads(x) for x in (tmp_path / "run/metrics/evals.jsonl").read_text().splitlines()]
    assert [e["improved"] for e in evals] == [True, False, False]


def test_runs_under_accelerate_launch(tiny_model_dir, data_files, tmp_path):
    """The multi-GPU code path (accelerate launch), exercised with one CPU process."""
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "so8t",
        "train",
        "--preset",
        "cpu-quick",
        "--set",
        f"model={tiny_model_dir}",
        "--set",
        "max_length=48",
        "--set",
        "micro_batch=2",
        "--set",
        "amp=none",
        "--set",
        "lora_layers=0",
        "--max-steps",
        "2",
        "--set",
        "eval_every=2",
        "--data",
        str(data_files / "train.jsonl"),
        "--set",
        f"dev_data=[{data_files / 'dev.jsonl'}]",
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "so8t-run.json").read_text())["status"] == "complete"
    assert "refuse_recall" in proc.stdout


def test_head_probe_fits_the_head_on_frozen_features_first(tiny_model_dir, data_files, tmp_path):
    from so8t.data import read_jsonl
    from so8t.model import prompt_outputs
    from so8t.train.recipe import head_loss, probe_head

    cfg = tiny_cfg(tiny_model_dir, head_probe_steps=60, head_probe_lr=1e-2)
    model, tok, _ = build_model(cfg)
    recs = read_jsonl(data_files / "train.jsonl")
    body_before = {n: p.clone() for n, p in model.body.named_parameters()}
    feats, _ = prompt_outputs(model, tok, recs, cfg.max_length)
    y = torch.tensor([int(r.label) for r in recs])
    easy = torch.tensor([r.difficulty == "easy" for r in recs])
    with torch.no_grad():
        before = head_loss(model.head(feats), y, easy, weights_of(cfg)).item()
    info = probe_head(model, tok, recs, cfg, None)
    with torch.no_grad():
        after = head_loss(model.head(feats), y, easy, weights_of(cfg)).item()
    assert after < before and info["head_loss_on_probe_set"] == pytest.approx(after, rel=1e-4)
    assert all(torch.equal(p, body_before[n]) for n, p in model.body.named_parameters())  # body untouched
    result = train(
        tiny_cfg(tiny_model_dir, head_probe_steps=5, **data_kw(data_files)), tmp_path / "run", progress=False
    )
    assert json.loads((tmp_path / "run/metrics/final.json").read_text())["head_probe"]["probe_steps"] == 5
    assert result.steps == 4


def test_a_crash_marks_the_run_failed_and_it_does_not_load(tiny_model_dir, data_files, tmp_path, monkeypatch):
    import so8t.train.recipe as recipe
    from so8t.model import RunError

    real = recipe.losses.composite
    calls = {"n": 0}

    def crash_at_step_3(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("out of memory (injected)")
        return real(*a, **k)

    monkeypatch.setattr(recipe.losses, "composite", crash_at_step_3)
    with pytest.raises(RuntimeError, match="injected"):
        train(tiny_cfg(tiny_model_dir, **data_kw(data_files)), tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run/so8t-run.json").read_text())["status"] == "failed"
    with pytest.raises(RunError, match="not 'complete'"):
        load_run(tmp_path / "run")


def test_pair_margin_term_is_trained_and_logged_with_twins_in_one_batch(tiny_model_dir, tmp_path):
    contrast = load_builtin("train", "contrast")[:16]  # 8 pairs, safe half first
    write_jsonl(tmp_path / "pairs.jsonl", contrast)
    cfg = tiny_cfg(
        tiny_model_dir,
        data=[str(tmp_path / "pairs.jsonl")],
        dev_data=[str(tmp_path / "pairs.jsonl")],
        test_data=[str(tmp_path / "pairs.jsonl")],
        pair_margin=1.0,
        micro_batch=4,
        max_steps=3,
        class_balance="none",
    )
    train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics" / "steps.jsonl").read_text().splitlines()]
    assert all("pair_margin" in r for r in rows) and any(r["pair_margin"] > 0 for r in rows)


def test_a_probed_head_is_scored_at_step_0_and_kept_if_no_lora_step_beats_it(tiny_model_dir, data_files, tmp_path):
    train(tiny_cfg(tiny_model_dir, head_probe_steps=5, **data_kw(data_files)), tmp_path / "run", progress=False)
    evals = [json.loads(line) for line in (tmp_path / "run/metrics/evals.jsonl").read_text().splitlines()]
    assert evals[0]["step"] == 0 and [e["step"] for e in evals[1:]] == [2, 4]


def test_the_probe_fits_the_layer_mix_and_the_run_reads_the_same_blocks_back(tiny_model_dir, data_files, tmp_path):
    from so8t.data import read_jsonl
    from so8t.model import load_run
    from so8t.train.recipe import probe_head

    cfg = tiny_cfg(tiny_model_dir, head_layers="mix", head_combine="mix", head_probe_steps=40, head_probe_lr=5e-2)
    model, tok, _ = build_model(cfg)
    assert len(model.head.layers) > 1 and torch.equal(model.head.mix, torch.zeros(len(model.head.layers)))
    probe_head(model, tok, read_jsonl(data_files / "train.jsonl"), cfg, None)
    assert not torch.equal(model.head.mix, torch.zeros(len(model.head.layers)))  # the probe learns the weights
    train(
        tiny_cfg(tiny_model_dir, head_layers="mix", head_combine="mix", head_probe_steps=5, **data_kw(data_files)),
        tmp_path / "run",
        progress=False,
    )
    loaded, _, _ = load_run(tmp_path / "run")
    assert loaded.head.layers == model.head.layers and loaded.head.combine_mode == "mix"


def test_a_run_with_calibrate_ships_thresholds_chosen_on_dev_and_reads_its_blocks_side_by_side(
    tiny_model_dir, data_files, tmp_path
):
    import json

    from so8t.eval.thresholds import load_thresholds
    from so8t.model import load_run

    result = train(
        tiny_cfg(tiny_model_dir, head_layers="mix", head_probe_steps=5, calibrate=True, **data_kw(data_files)),
        tmp_path / "run",
        progress=False,
    )
    thr = load_thresholds(tmp_path / "run")
    assert thr is not None  # what serve, chat and eval will use
    saved = json.loads((tmp_path / "run" / "thresholds.json").read_text())
    assert saved["data"] == ["dev split"] and saved["after"] == result.dev.as_dict()
    final = json.loads((tmp_path / "run" / "metrics" / "final.json").read_text())
    assert final["thresholds"] == {"refuse_at": thr.refuse_at, "allow_at": thr.allow_at}
    loaded, _, _ = load_run(tmp_path / "run")
    n = len(loaded.head.layers)
    assert n > 1 and loaded.head.combine_mode == "concat"
    assert loaded.head.net[0].in_features == n * loaded.head.hidden_size


def test_a_run_without_calibrate_keeps_the_argmax_rule(tiny_model_dir, data_files, tmp_path):
    train(tiny_cfg(tiny_model_dir, **data_kw(data_files)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "thresholds.json").exists()


def test_fit_head_decays_its_rate_to_zero_and_two_seeds_agree_on_separable_features():
    """The probe's boundary must not depend on where the last mini-batches happened to fall:
    the rate decays to zero, and two seeds end with the same predictions on clean clusters."""
    from so8t.config import TrainConfig
    from so8t.model import SafetyHead
    from so8t.train.recipe import fit_head

    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 2, 16, generator=gen) * 3
    y = torch.arange(300) % 3
    feats = centres[y] + torch.randn(300, 2, 16, generator=gen) * 0.3
    easy = torch.zeros(300, dtype=torch.bool)
    preds = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        head = SafetyHead(16, layers=(1, 2))
        cfg = TrainConfig(head_probe_steps=200, head_probe_batch=64, head_probe_lr=1e-2, seed=seed)
        info = fit_head(head, feats, y, easy, cfg)
        assert info["examples"] == 300 and info["head_loss_on_probe_set"] < info["first_batch_loss"]
        assert info["final_lr"] == pytest.approx(0.0, abs=1e-9)
        with torch.no_grad():
            preds.append(head(head.combine(feats)).argmax(-1))
    assert torch.equal(preds[0], preds[1])
    assert (preds[0] == y).float().mean() > 0.95


def test_the_probe_reads_each_distinct_row_once_although_the_sampler_repeats_rare_classes(
    tiny_model_dir, data_files, monkeypatch
):
    import so8t.train.recipe as recipe
    from so8t.data import read_jsonl

    recs = read_jsonl(data_files / "train.jsonl")
    recs = recs + [r for r in recs if r.label.name == "ALLOW"] * 3  # ALLOW outnumbers: the others repeat
    seen = []
    real = recipe.pooled_layers
    monkeypatch.setattr(
        recipe, "pooled_layers", lambda m, t, rows, *a, **k: seen.append(list(rows)) or real(m, t, rows, *a, **k)
    )
    cfg = tiny_cfg(tiny_model_dir, head_probe_steps=3)
    model, tok, _ = build_model(cfg)
    info = recipe.probe_head(model, tok, recs, cfg, None)
    sample = recipe.epoch_order([int(r.label) for r in recs], "sampler", cfg.seed, -1)[: cfg.head_probe_examples]
    assert len(sample) > len(set(sample)) and info["examples"] == len(sample)
    assert len(seen) == 1 and len(seen[0]) == len(set(sample))
