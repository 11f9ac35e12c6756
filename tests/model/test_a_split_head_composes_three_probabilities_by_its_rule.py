"""Issue 15, section 3: a split head (primary head r = P(REFUSE), escalation judge
e = P(needs a person | not refused)) is exposed as ordinary three-class probabilities
P(REFUSE) = r, P(ESCALATE) = (1-r)e, P(ALLOW) = (1-r)(1-e), saved and loaded with its kind."""

import json

import pytest
import torch

from so8t.model import SafetyHead, load_head, save_head
from so8t.model.head import compose, decompose, run_head_kind


def _raw(head: SafetyHead, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r and e straight from the two MLPs, bypassing the composition."""
    return torch.sigmoid(head.net(x)[:, 0]), torch.sigmoid(head.judge(x)[:, 0])


def test_the_composed_probabilities_sum_to_one_and_are_r_then_the_judge_on_the_rest():
    torch.manual_seed(0)
    head = SafetyHead(16, kind="split")
    x = torch.randn(64, 16) * 3
    probs = head(x).softmax(-1)
    r, e = _raw(head, x)
    assert torch.allclose(probs.sum(-1), torch.ones(64), atol=1e-6)
    assert torch.allclose(probs[:, 2], r, atol=1e-6)
    assert torch.allclose(probs[:, 1], (1 - r) * e, atol=1e-6)
    assert torch.allclose(probs[:, 0], (1 - r) * (1 - e), atol=1e-6)
    # the output is already normalised: its exp is the distribution itself
    assert torch.allclose(head(x).exp(), probs, atol=1e-6)


def test_decompose_gives_back_both_heads_logits_even_far_out_in_the_tails():
    a = torch.tensor([-30.0, -2.0, 0.0, 3.5, 30.0])
    b = torch.tensor([25.0, 1.0, -4.0, 0.0, -30.0])
    ra, rb = decompose(compose(a, b))
    assert torch.allclose(ra, a, atol=1e-3) and torch.allclose(rb, b, atol=1e-3)
    assert torch.isfinite(compose(a, b)).all()  # no log(0), however sure either head is


def test_the_split_rule_and_the_composed_probabilities_agree():
    from so8t.eval.thresholds import Thresholds, decide

    torch.manual_seed(1)
    head = SafetyHead(8, kind="split")
    x = torch.randn(200, 8) * 4
    with torch.no_grad():
        probs = head(x).softmax(-1).numpy()
        r, e = _raw(head, x)
    thr = Thresholds(refuse_at=0.6, escalate_at=0.3)
    expected = torch.where(r >= 0.6, 2, torch.where(e >= 0.3, 1, 0))
    near = ((r - 0.6).abs() < 1e-5) | ((e - 0.3).abs() < 1e-5)  # float noise right on a threshold
    assert (torch.as_tensor(decide(probs, thr)) == expected)[~near].all()
    assert len(set(expected.tolist())) == 3  # the example exercises all three actions


@pytest.mark.parametrize("broken", ["net", "judge"])
def test_a_nan_from_either_head_makes_every_composed_probability_nan(broken):
    from so8t.eval.thresholds import Thresholds, decide
    from so8t.labels import Action

    head = SafetyHead(8, kind="split")
    with torch.no_grad():
        getattr(head, broken)[2].bias.fill_(float("nan"))
        probs = head(torch.randn(3, 8)).softmax(-1)
    assert torch.isnan(probs).all()
    for thr in (None, Thresholds(refuse_at=0.9, escalate_at=0.9)):
        assert (decide(probs.numpy(), thr) == int(Action.REFUSE)).all()


def test_a_split_head_round_trips_with_its_kind(tmp_path):
    head = SafetyHead(8, layers=(1, 3), kind="split")
    save_head(head, tmp_path, {"pooling": "mean"})
    assert json.loads((tmp_path / "head.json").read_text())["head_kind"] == "split"
    again, meta = load_head(tmp_path)
    x = torch.randn(4, 16)
    assert again.kind == "split" and meta["head_kind"] == "split" and run_head_kind(tmp_path) == "split"
    assert torch.equal(again(x), head(x))


def test_an_old_head_json_without_the_field_loads_as_three_way(tmp_path):
    head = SafetyHead(8)
    save_head(head, tmp_path, {"pooling": "mean"})
    cfg = json.loads((tmp_path / "head.json").read_text())
    del cfg["head_kind"]
    (tmp_path / "head.json").write_text(json.dumps(cfg))
    again, meta = load_head(tmp_path)
    assert again.kind == "three_way" and meta["head_kind"] == "three_way" and not hasattr(again, "judge")
    assert run_head_kind(tmp_path) == "three_way"
    x = torch.randn(2, 8)
    assert torch.equal(again(x), head(x))


def test_an_unknown_head_kind_is_an_error_naming_the_file_and_the_choices(tmp_path):
    save_head(SafetyHead(8), tmp_path, {"pooling": "mean"})
    cfg = json.loads((tmp_path / "head.json").read_text())
    (tmp_path / "head.json").write_text(json.dumps({**cfg, "head_kind": "splitt"}))
    with pytest.raises(ValueError, match=r"head\.json: head_kind must be one of three_way, split, got 'splitt'"):
        load_head(tmp_path)
    with pytest.raises(ValueError, match="three_way, split"):
        SafetyHead(8, kind="two")


def test_a_split_head_cannot_load_a_three_way_heads_weights(tmp_path):
    save_head(SafetyHead(8), tmp_path, {"pooling": "mean"})
    cfg = json.loads((tmp_path / "head.json").read_text())
    (tmp_path / "head.json").write_text(json.dumps({**cfg, "head_kind": "split"}))
    with pytest.raises(RuntimeError):  # missing judge weights, wrong output size: never a silent mix
        load_head(tmp_path)
