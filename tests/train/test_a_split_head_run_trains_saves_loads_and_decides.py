"""Issue 15, section 3: `head_kind: split` trains a primary head and an escalation judge, each
with its own binary loss plus the composite on their composed probabilities; the run saves,
loads, calibrates both thresholds and the gate decides by the split rule (tiny random model)."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from so8t.config import TrainConfig, from_dict
from so8t.data import load_builtin, write_jsonl
from so8t.eval.thresholds import Thresholds, decide
from so8t.labels import Action
from so8t.model import load_run
from so8t.model.head import compose
from so8t.train import losses
from so8t.train.batching import collate, encode_record
from so8t.train.recipe import build_model, load_run_config, loss_parts, train, weights_of


def _cfg(model_dir, **kw) -> TrainConfig:
    cfg = TrainConfig(
        **{
            **dict(
                model=str(model_dir),
                lora_r=4,
                lora_alpha=8,
                lora_dropout=0.0,
                max_length=64,
                micro_batch=4,
                grad_accum=1,
                max_steps=2,
                eval_every=2,
                head_kind="split",
            ),
            **kw,
        }
    )
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("split-data")
    recs = load_builtin("train")
    pick = lambda label, k, skip=0: [r for r in recs if r.label.name == label and r.lang == "en"][skip : skip + k]  # noqa: E731
    write_jsonl(d / "train.jsonl", [r for lab in ("ALLOW", "ESCALATE", "REFUSE") for r in pick(lab, 6)])
    write_jsonl(d / "dev.jsonl", [r for lab in ("ALLOW", "ESCALATE", "REFUSE") for r in pick(lab, 3, skip=10)])
    return d


def test_each_heads_binary_loss_asks_its_own_question():
    torch.manual_seed(0)
    y = torch.tensor([0, 1, 2, 2, 0, 1, 2, 0])
    a, b = torch.randn(8), torch.randn(8)
    parts = losses.split_heads(compose(a, b), y)
    want_refuse = torch.nn.functional.binary_cross_entropy_with_logits(a, (y == 2).float())
    rest = y != 2
    want_judge = torch.nn.functional.binary_cross_entropy_with_logits(b[rest], (y[rest] == 1).float())
    assert torch.allclose(parts["refuse_bce"], want_refuse, atol=1e-5)
    assert torch.allclose(parts["judge_bce"], want_judge, atol=1e-5)
    # the judge says nothing about REFUSE rows: changing its logit there changes nothing
    b2 = torch.where(rest, b, b + 10.0)
    assert torch.allclose(losses.split_heads(compose(a, b2), y)["judge_bce"], parts["judge_bce"], atol=1e-5)
    # unweighted, CE on the composed probabilities factors into the two (losses' docstring)
    ce = losses.safety_ce(compose(a, b), y)
    assert torch.allclose(ce, parts["refuse_bce"] + parts["judge_bce"] * rest.float().mean(), atol=1e-5)
    only_refuse = losses.split_heads(compose(a[:2], b[:2]), torch.tensor([2, 2]))
    assert only_refuse["judge_bce"].item() == 0.0


def test_the_composite_adds_the_binary_losses_at_their_own_weight():
    parts = {"safety_ce": torch.tensor(1.0), "refuse_bce": torch.tensor(0.5), "judge_bce": torch.tensor(0.25)}
    base = losses.composite(parts, losses.LossWeights(head_split=0.0), 0.0)
    assert losses.composite(parts, losses.LossWeights(head_split=2.0), 0.0).item() == pytest.approx(base.item() + 1.5)
    three_way = {"safety_ce": torch.tensor(1.0)}  # no binary parts: the weight has no effect
    assert losses.composite(three_way, losses.LossWeights(head_split=2.0), 0.0).item() == pytest.approx(base.item())


def test_a_training_step_gives_both_heads_a_gradient(tiny_model_dir, data_dir):
    from so8t.data import read_jsonl
    from so8t.model import tag_token_ids

    cfg = _cfg(tiny_model_dir)
    model, tok, _ = build_model(cfg)
    assert model.head.kind == "split" and weights_of(cfg).head_split == 1.0
    enc = [encode_record(r, tok, cfg.max_length) for r in read_jsonl(data_dir / "train.jsonl")[::3]]
    batch = collate(enc, tok.pad_token_id)
    parts = loss_parts(model, batch, tag_token_ids(tok), cfg, None, pet_active=False)
    assert {"refuse_bce", "judge_bce", "safety_ce", "dangerous_allow"} <= set(parts)
    losses.composite(parts, weights_of(cfg), 0.0).backward()
    for name in ("net", "judge"):
        g = getattr(model.head, name)[2].weight.grad
        assert g is not None and g.abs().sum() > 0, name


def test_a_split_head_run_trains_saves_loads_calibrates_and_decides(tiny_model_dir, data_dir, tmp_path):
    from so8t.eval.report import calibrate_run
    from so8t.gate import Gate

    cfg = _cfg(
        tiny_model_dir,
        data=[str(data_dir / "train.jsonl")],
        dev_data=[str(data_dir / "dev.jsonl")],
        test_data=[str(data_dir / "dev.jsonl")],
        head_probe_steps=10,
        calibrate=True,
    )
    run = tmp_path / "split"
    train(cfg, run, progress=False)

    assert load_run_config(run).head_kind == "split"
    assert json.loads((run / "head.json").read_text())["head_kind"] == "split"
    saved = json.loads((run / "thresholds.json").read_text())
    assert saved["head_kind"] == "split" and set(saved["thresholds"]) == {"refuse_at", "escalate_at"}
    assert set(json.loads((run / "metrics/final.json").read_text())["thresholds"]) == {"refuse_at", "escalate_at"}

    model, tok, meta = load_run(run)
    assert model.head.kind == "split" and meta["head_kind"] == "split"

    gate = Gate.load(run)
    assert gate.ready and gate.thresholds.kind == "split"
    d = gate.decide("Please list the files in my reports folder.")
    gate.close()
    assert d.ok and sum(d.probs) == pytest.approx(1.0, abs=1e-5)
    assert d.action == Action(int(decide(np.array([d.probs]), gate.thresholds)[0]))
    assert set(d.thresholds) == {"refuse_at", "escalate_at"}

    cal, written = calibrate_run(run, [str(data_dir / "dev.jsonl")], apply=False, progress=False)
    assert cal.thresholds.kind == "split" and written.name == "proposal.json"
    assert json.loads(written.read_text())["head_kind"] == "split"
    assert (run / "calibration" / "calibration.png").is_file()

    # thresholds of the other kind than the head: the gate does not come up (fails closed)
    other = tmp_path / "mismatched"
    shutil.copytree(run, other)
    (other / "thresholds.json").write_text(json.dumps({"thresholds": {"refuse_at": 0.5, "allow_at": 0.5}}))
    g = Gate.load(other)
    assert not g.ready and "thresholds for a three_way head, but the run's head" in g.load_error
    assert g.decide("hello").action != Action.ALLOW
    g.close()


def test_an_old_run_config_without_head_kind_is_three_way(tiny_model_dir):
    values = yaml.safe_load(yaml.safe_dump({"model": str(tiny_model_dir), "alpha": 3.0}))
    cfg = from_dict(TrainConfig, values, "old/config.yaml")
    assert cfg.head_kind == "three_way"
    model, _, _ = build_model(_cfg(tiny_model_dir, head_kind=cfg.head_kind))
    assert model.head.kind == "three_way" and not hasattr(model.head, "judge")


def test_an_unknown_head_kind_is_a_config_error_naming_the_key(tiny_model_dir):
    from so8t.config import ConfigError

    with pytest.raises(ConfigError, match="head_kind"):
        from_dict(TrainConfig, {"head_kind": "splitt"}, "train.yaml").validate()
    assert Thresholds(refuse_at=0.5, escalate_at=0.5).kind == "split"
