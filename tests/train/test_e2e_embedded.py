"""End to end on the embedded bases: the CLI trains a few steps and writes a run that loads back
(SmolLM2-135M through calibration, eval and the gate; the default Gemma 3 270M recipe for a step)."""

import json

import pytest
import torch

from so8t.cli import main
from so8t.data import load_builtin, write_jsonl
from so8t.model import load_run, predict_probs

pytestmark = pytest.mark.e2e


def test_cli_trains_the_embedded_model_and_the_run_loads_back(tmp_path, capsys):
    recs = load_builtin("train")
    pick = [r for lab in ("ALLOW", "ESCALATE", "REFUSE") for r in [x for x in recs if x.label.name == lab][:8]]
    dev = [
        r
        for lab in ("ALLOW", "ESCALATE", "REFUSE")
        for r in [x for x in load_builtin("dev") if x.label.name == lab][:3]
    ]
    write_jsonl(tmp_path / "train.jsonl", pick)
    write_jsonl(tmp_path / "dev.jsonl", dev)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--preset",
            "cpu-quick-smollm",
            "--data",
            str(tmp_path / "train.jsonl"),
            "--set",
            f"dev_data=[{tmp_path / 'dev.jsonl'}]",
            "--set",
            f"test_data=[{tmp_path / 'dev.jsonl'}]",
            "--set",
            "max_length=96",
            "--set",
            "micro_batch=4",
            "--set",
            "grad_accum=1",
            "--max-steps",
            "2",
            "--set",
            "eval_every=1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for kpi in ("refuse_recall", "escalate_recall", "overcompliance", "safety_score", ">= 0.7", "<= 0.3"):
        assert kpi in printed
    head = json.loads((out / "head.json").read_text())
    assert head["base_model"] == "embedded" and head["hidden_size"] == 576
    model, tok, meta = load_run(out)
    a = predict_probs(model, tok, dev, 96)
    b = predict_probs(load_run(out)[0], tok, dev, 96)
    assert torch.equal(a, b) and torch.allclose(a.sum(-1), torch.ones(len(dev)))
    assert (out / "plots/training_curves.png").stat().st_size > 10_000
    # the same run through calibration, evaluation (with every baseline) and the gate
    assert (
        main(["calibrate", str(out), "--data", str(tmp_path / "dev.jsonl"), "--min-refuse-recall", "0", "--apply"]) == 0
    )
    code = main(
        [
            "eval",
            str(out),
            "--data",
            str(tmp_path / "dev.jsonl"),
            "--out",
            str(tmp_path / "report"),
            "--generate",
            "2",
            "--latency",
            "4",
            "--bootstrap",
            "100",
            "--target",
            "refuse_recall>=0",
            "--target",
            "escalate_recall>=0",
            "--target",
            "overcompliance<=1",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    ds = report["datasets"][0]
    assert set(ds["systems"]) == {"keywords", "probe", "judge", "lm_tag"} and report["thresholds"] is not None
    assert 0 <= ds["systems"]["judge"]["binary"]["auroc"] <= 1

    from so8t.agent.inprocess import InProcessBackend
    from so8t.gate import Gate

    gate = Gate.load(out)
    convo = [{"role": "user", "content": "今日の会議の議事録を要約して"}]
    decision, prefill = gate.decide_with_prefill(convo)
    assert decision.ok and prefill is not None
    text = InProcessBackend(gate).complete(convo, max_tokens=8, prefill=prefill)
    assert isinstance(text, str) and text
    gate.close()


def test_the_default_recipe_trains_gemma_with_a_layer_mix(tmp_path):
    recs = [
        r
        for lab in ("ALLOW", "ESCALATE", "REFUSE")
        for r in [x for x in load_builtin("train") if x.label.name == lab][:4]
    ]
    write_jsonl(tmp_path / "d.jsonl", recs)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(tmp_path / "d.jsonl"),
            "--set",
            f"dev_data=[{tmp_path / 'd.jsonl'}]",
            "--set",
            f"test_data=[{tmp_path / 'd.jsonl'}]",
            "--set",
            "max_length=64",
            "--set",
            "micro_batch=2",
            "--set",
            "head_probe_steps=5",
            "--max-steps",
            "1",
            "--set",
            "eval_every=1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code in (0, 1)  # 1: a target missed after one step, which is expected
    head = json.loads((out / "head.json").read_text())
    assert head["base_model"] == "embedded:gemma3-270m" and head["hidden_size"] == 640
    assert head["layers"] == [6, 8, 10, 12, 14, 16, 18]
    model, tok, _ = load_run(out)
    assert torch.allclose(predict_probs(model, tok, recs[:3], 64).sum(-1), torch.ones(3))
