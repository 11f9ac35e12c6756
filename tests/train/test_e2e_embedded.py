"""End to end on the embedded SmolLM2-135M: the CLI trains a few steps and writes a run that loads back."""
import json

import pytest
import torch

from so8t.cli import main
from so8t.data import load_builtin, write_jsonl
from so8t.model import load_run
from so8t.model import predict_probs

pytestmark = pytest.mark.e2e


def test_cli_trains_the_embedded_model_and_the_run_loads_back(tmp_path, capsys):
    recs = load_builtin("train")
    pick = [r for lab in ("ALLOW", "ESCALATE", "REFUSE") for r in [x for x in recs if x.label.name == lab][:8]]
    dev = [r for lab in ("ALLOW", "ESCALATE", "REFUSE") for r in [x for x in load_builtin("dev") if x.label.name == lab][:3]]
    write_jsonl(tmp_path / "train.jsonl", pick)
    write_jsonl(tmp_path / "dev.jsonl", dev)
    out = tmp_path / "run"
    code = main(["train", "--preset", "cpu-quick", "--data", str(tmp_path / "train.jsonl"),
                 "--set", f"dev_data=[{tmp_path / 'dev.jsonl'}]", "--set", f"test_data=[{tmp_path / 'dev.jsonl'}]",
                 "--set", "max_length=96", "--set", "micro_batch=4", "--set", "grad_accum=1",
                 "--max-steps", "2", "--set", "eval_every=1", "--out", str(out), "--no-progress"])
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
