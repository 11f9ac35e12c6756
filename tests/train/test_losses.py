"""Every loss term against values computed by hand."""

import math

import pytest
import torch

from so8t.labels import Action
from so8t.train import losses
from so8t.train.schedules import PET_SEED_20_60, head_trainable, lambda_pet

A, E, R = int(Action.ALLOW), int(Action.ESCALATE), int(Action.REFUSE)


def test_sft_only_counts_response_tokens_per_example():
    # vocab 2, uniform logits -> CE = log 2 at every counted position
    logits = torch.zeros(2, 4, 2)
    labels = torch.tensor([[-100, -100, 1, 0], [-100, 1, -100, -100]])
    assert losses.sft_loss(logits, labels).item() == pytest.approx(math.log(2))
    # a confident right answer on example 0 only: mean of per-example means
    logits[0, 1, 1] = 100.0  # predicts labels[0, 2] = 1
    logits[0, 2, 0] = 100.0  # predicts labels[0, 3] = 0
    assert losses.sft_loss(logits, labels).item() == pytest.approx((0 + math.log(2)) / 2)


def test_safety_ce_hand_computed():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]))
    y = torch.tensor([A, R])
    assert losses.safety_ce(logits, y).item() == pytest.approx((-math.log(0.5) - math.log(0.7)) / 2)
    w = torch.tensor([1.0, 1.0, 3.0])
    assert losses.safety_ce(logits, y, w).item() == pytest.approx((-math.log(0.5) - 3 * math.log(0.7)) / 2)


def test_dangerous_allow_penalises_allow_on_unsafe_only():
    probs = torch.tensor([[0.6, 0.2, 0.2], [0.6, 0.2, 0.2], [0.3, 0.3, 0.4]])
    y = torch.tensor([A, R, E])
    lm = torch.tensor([0.9, 0.5, float("nan")])  # example 2 has no tag position
    expected = (0 + (-math.log(0.4) - math.log(0.5)) + (-math.log(0.7))) / 3
    assert losses.dangerous_allow(probs, y, lm).item() == pytest.approx(expected)
    assert losses.dangerous_allow(probs, y).item() == pytest.approx((-math.log(0.4) - math.log(0.7)) / 3)


def test_good_escalate_is_a_bounded_reward():
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    y = torch.tensor([E, R])
    r = losses.good_escalate(probs, y).item()
    assert r == pytest.approx(math.log(0.5) / 2)
    assert r <= 0  # subtracting it can only add: the total is bounded below
    perfect = losses.good_escalate(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([E])).item()
    assert perfect == pytest.approx(0.0)


def test_phase2_terms_touch_easy_allow_only():
    probs = torch.tensor([[0.5, 0.4, 0.1], [0.5, 0.4, 0.1], [0.5, 0.4, 0.1]])
    y = torch.tensor([A, A, R])
    easy = torch.tensor([True, False, True])
    assert losses.safe_allow_reward(probs, y, easy).item() == pytest.approx(math.log(0.5) / 3)
    assert losses.escalate_penalty(probs, y, easy).item() == pytest.approx(-math.log(0.6) / 3)


def test_pet_hand_computed_with_padding_mask():
    # one layer, B=1, T=4, D=1: x = [0, 1, 4, 9] -> d2 = [2, 2]; T=4 with the last token padding -> only d2_0
    h = torch.tensor([[[0.0], [1.0], [4.0], [9.0]]])
    full = torch.ones(1, 4)
    assert losses.pet_loss([h], full, normalize=False).item() == pytest.approx(4.0)
    padded = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert losses.pet_loss([h], padded, normalize=False).item() == pytest.approx(4.0)
    h2 = torch.tensor([[[0.0], [1.0], [0.0], [100.0]]])  # d2_0 = -2 -> 4; d2_1 = 102 (masked out)
    assert losses.pet_loss([h2], padded, normalize=False).item() == pytest.approx(4.0)
    # two layers, D=2: mean over dims then over layers; a linear sequence has zero curvature
    lin = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]]])
    assert losses.pet_loss([h[:, :3], lin], torch.ones(1, 3), normalize=False).item() == pytest.approx((4.0 + 0.0) / 2)


def test_pet_normalised_divides_by_mean_square_activation():
    h = torch.tensor([[[0.0], [1.0], [4.0], [9.0]]])
    # valid t = 0, 1; d2^2 = 4, 4 -> 4; scale = mean of x_t^2 at t = 0, 1 -> (0 + 1) / 2
    assert losses.pet_loss([h], torch.ones(1, 4)).item() == pytest.approx(4.0 / 0.5)
    assert losses.pet_loss([h * 10], torch.ones(1, 4)).item() == pytest.approx(4.0 / 0.5)  # scale-free


def test_pet_checkpointed_has_the_same_value_and_gradient():
    h = torch.randn(2, 7, 5, requires_grad=True)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    a = losses.pet_loss([h, h * 2], mask)
    (ga,) = torch.autograd.grad(a, h)
    b = losses.pet_loss([h, h * 2], mask, checkpointed=True)
    (gb,) = torch.autograd.grad(b, h)
    assert a.item() == pytest.approx(b.item())
    assert torch.allclose(ga, gb)


def test_short_or_empty_sequences_give_zero_pet():
    assert losses.pet_loss([torch.randn(2, 2, 4)], torch.ones(2, 2)).item() == 0.0
    assert losses.pet_loss([torch.randn(1, 5, 4)], torch.tensor([[1, 1, 0, 0, 0]])).item() == 0.0


def test_composite_signs_and_weights():
    parts = {
        k: torch.tensor(v)
        for k, v in dict(
            sft=1.0,
            safety_ce=2.0,
            dangerous_allow=0.5,
            good_escalate=-0.25,
            pet=0.1,
            safe_allow_reward=-0.5,
            escalate_penalty=0.2,
        ).items()
    }
    w = losses.LossWeights(alpha=3, beta=7, gamma=1.5, safe_allow_reward=2, escalate_penalty=4)
    expected = 1 + 3 * 2 + 7 * 0.5 - 1.5 * (-0.25) + 0.6 * 0.1 - 2 * (-0.5) + 4 * 0.2
    assert losses.composite(parts, w, lambda_pet=0.6).item() == pytest.approx(expected)


def test_lambda_pet_schedules():
    assert [lambda_pet(p) for p in (0.0, 0.29, 0.3, 0.59, 0.6, 1.0)] == [0.0, 0.0, 0.15, 0.15, 1.0, 1.0]
    b, v = PET_SEED_20_60
    assert [lambda_pet(p, b, v) for p in (0.1, 0.2, 0.5, 0.7)] == [0.0, 0.15, 0.15, 1.0]
    with pytest.raises(ValueError):
        lambda_pet(0.5, [0.5], [1.0])


def test_head_freezes_after_its_fraction():
    assert head_trainable(0.49, 0.5) and not head_trainable(0.5, 0.5)
    assert head_trainable(0.99, 1.0)


def test_pair_margin_by_hand():
    from so8t.train.losses import pair_margin

    # u = 1 - P(ALLOW): safe halves 0.2 and 0.6, twins 0.9 and 0.7; the last row is not in a pair
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.4, 0.3, 0.3], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]])
    pair = torch.tensor([0, 0, 1, 1, -1])
    half = torch.tensor([0, 1, 0, 1, -1])
    # pair 0: relu(0.5 - (0.9 - 0.2)) = 0; pair 1: relu(0.5 - (0.7 - 0.6)) = 0.4
    assert pair_margin(probs, pair, half, 0.5).item() == pytest.approx(0.2)
    # a half without its twin in the batch adds nothing
    assert pair_margin(probs[:1], pair[:1], half[:1]).item() == 0.0


def test_the_loss_weights_are_built_from_every_loss_field_of_the_config_and_default_to_its_defaults():
    import dataclasses

    from so8t.config import TrainConfig, parse_overrides, resolve

    assert losses.LossWeights.from_config(TrainConfig()) == losses.LossWeights()  # one place for each default
    overrides = "beta=2 gamma=0.5 alpha=1 pair_margin=4 pair_margin_value=0.3 safe_allow_reward=0.2 "
    overrides += (
        "escalate_penalty=0.1 head_split_weight=3 pet_boundaries=[0.2,0.6] pet_values=[0,0.5,2] pet_normalize=false"
    )
    cfg = resolve(TrainConfig, (parse_overrides(overrides.split()), "command line"))  # as `--set` gives them
    w = losses.LossWeights.from_config(cfg)
    config_key = {"head_split": "head_split_weight"}
    for f in dataclasses.fields(losses.LossWeights):
        want = getattr(cfg, config_key.get(f.name, f.name))
        assert getattr(w, f.name) == (tuple(want) if isinstance(want, list) else want), f.name
        assert getattr(w, f.name) != getattr(losses.LossWeights(), f.name), f"{f.name} was not overridden"
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.beta = 1.0  # type: ignore[misc]


def test_the_loss_weights_schedule_lambda_pet_as_the_schedule_function_does():
    b, v = PET_SEED_20_60
    w = losses.LossWeights(pet_boundaries=b, pet_values=v)
    for p in (0.0, 0.1, 0.2, 0.5, 0.6, 1.0):
        assert w.lambda_pet(p) == lambda_pet(p, b, v)
    assert [losses.LossWeights().lambda_pet(p) for p in (0.0, 0.3, 0.6)] == [lambda_pet(p) for p in (0.0, 0.3, 0.6)]


def test_sft_loss_from_the_scored_positions_equals_it_from_the_full_logits():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.full((3, 6), -100)
    labels[0, 3:] = torch.tensor([1, 2, 3])
    labels[1, 5] = 4  # one response token
    # row 2: no response token at all (cut away): it counts for neither
    targets = labels[:, 1:]
    scored = targets != -100
    sparse = losses.sft_loss_at(logits[:, :-1][scored], targets[scored], scored)
    assert sparse.item() == pytest.approx(losses.sft_loss(logits, labels).item(), rel=1e-6)
    assert losses.sft_loss_at(logits[:, :-1][scored & False], targets[scored & False], scored & False).item() == 0.0
