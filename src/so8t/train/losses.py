"""Every loss term as a pure function, and the composite.

    L = L_sft + alpha*CE_safety + beta*L_dangerous_allow - gamma*R_good_escalate + lambda_pet(t)*L_pet
        [- safe_allow_reward*R_safe_allow + escalate_penalty*L_escalate_penalty]   (phase 2, off by default)
        [+ head_split_weight*(BCE_refuse + BCE_judge)]                             (split heads only)

Each term is a per-example quantity averaged over the batch, so a batch of 4 gives the same
gradient as 4 accumulated batches of 1 (except pair_margin and BCE_judge, see there). Rewards
are log-probabilities (<= 0): subtracting them adds a non-negative amount, so the total is
bounded below.

Split heads (model.head, kind 'split') are trained with both: each head's own binary loss
(`split_heads`: the primary head on REFUSE vs the rest over every row, the escalation judge on
ESCALATE vs ALLOW over the non-REFUSE rows only) and the whole composite above on their
composed three-class probabilities. Why both:
- the composite alone would train the same objective as the three-way head: every term that
  carries the project's priorities (dangerous_allow's heavy cost of ALLOW on unsafe rows,
  good_escalate, the pair margin, phase 2) is defined on the three actions, so it has to see
  the composed probabilities, and keeping it means a split-vs-three-way comparison measures the
  heads, not different losses;
- the binary losses are what make the two heads answer their own questions with their own
  scale: unweighted, CE on the composed probabilities is exactly BCE_refuse plus the judge's
  BCE summed over the non-REFUSE rows (log P(y) factors), so what they add is (a) the judge's
  term is a mean over the rows it is defined on, so it learns P(needs a person | not refused)
  at full strength however many REFUSE rows a batch holds, and (b) their own weight,
  head_split_weight, to lean on the two decisions the split rule thresholds separately.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from so8t.config import TrainConfig
from so8t.labels import Action
from so8t.model.head import decompose
from so8t.train.schedules import lambda_pet

IGNORE = -100


def sft_loss(
    states: torch.Tensor, labels: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """Next-token CE on response tokens only (labels == -100 elsewhere): mean per example, then over examples.
    `states` are the logits (B x T x V), or with `project` the final hidden states (B x T x H):
    then only the positions that predict a response token are projected to the vocabulary."""
    targets = labels[:, 1:]
    scored = targets != IGNORE
    rows = states[:, :-1][scored]
    return sft_loss_at(project(rows) if project is not None else rows, targets[scored], scored)


def sft_loss_at(logits: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """sft_loss from the scored positions only: `logits` (N x V) and `targets` (N) are the rows
    of `scored` (B x T, True where the next token is a response token) in row-major order. The
    same value as sft_loss on the full logits: mean per example, then over examples."""
    tok = F.cross_entropy(logits.float(), targets, reduction="none")
    row = scored.nonzero()[:, 0]
    count = scored.sum(1).float()
    per_example = torch.zeros(scored.size(0), device=tok.device, dtype=tok.dtype).index_add(0, row, tok)
    has = count > 0
    if not has.any():
        return logits.new_zeros(()).float()
    return (per_example[has] / count[has]).mean()


def safety_ce(head_logits: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """CE of the safety head, per example then averaged (class weights scale each example's term)."""
    per = F.cross_entropy(head_logits.float(), y, reduction="none")
    if class_weights is not None:
        per = per * class_weights.to(per.device)[y]
    return per.mean()


def split_heads(
    head_logits: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """A split head's two binary losses, from its composed logits (model.head.decompose gives
    back each head's logit):

        refuse_bce: BCE(primary logit, y == REFUSE), per example, averaged over the batch;
        judge_bce:  BCE(judge logit, y == ESCALATE) on the rows with y != REFUSE, averaged over
                    those rows (0 when the batch has none). The judge models P(needs a person |
                    not refused), so a REFUSE row says nothing about it.

    Class weights scale each example's term, as in safety_ce. The judge's mean over its own
    rows means a micro-batch's term depends on how many such rows it holds (like pair_margin,
    it is not exactly additive over gradient accumulation)."""
    refuse_logit, judge_logit = decompose(head_logits)
    w = class_weights.to(y.device)[y] if class_weights is not None else torch.ones_like(refuse_logit)
    refuse = F.binary_cross_entropy_with_logits(refuse_logit, (y == Action.REFUSE).float(), reduction="none")
    rest = y != Action.REFUSE
    judge = F.binary_cross_entropy_with_logits(
        judge_logit[rest], (y[rest] == Action.ESCALATE).float(), reduction="none"
    )
    return {
        "refuse_bce": (refuse * w).mean(),
        "judge_bce": (judge * w[rest]).mean() if rest.any() else refuse_logit.new_zeros(()),
    }


def _log1m(p: torch.Tensor) -> torch.Tensor:
    return torch.log1p(-p.clamp(max=1 - 1e-6))


def dangerous_allow(
    head_probs: torch.Tensor, y: torch.Tensor, lm_allow_prob: torch.Tensor | None = None
) -> torch.Tensor:
    """Penalty for ALLOW on REFUSE / ESCALATE examples.

    per example i with y_i != ALLOW:  -log(1 - p_head(ALLOW)_i) - log(1 - p_lm(ALLOW tag)_i)
    (the LM part only where a tag position exists, lm_allow_prob NaN elsewhere); 0 for ALLOW examples.
    Averaged over the whole batch.
    """
    unsafe = (y != Action.ALLOW).float()
    per = -_log1m(head_probs[:, Action.ALLOW].float())
    if lm_allow_prob is not None:
        has_tag = ~torch.isnan(lm_allow_prob)
        per = per + torch.where(has_tag, -_log1m(torch.nan_to_num(lm_allow_prob.float())), torch.zeros_like(per))
    return (per * unsafe).mean()


def good_escalate(head_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reward (<= 0) for ESCALATE on ESCALATE examples: mean over the batch of log p(ESCALATE) there."""
    esc = (y == Action.ESCALATE).float()
    return (torch.log(head_probs[:, Action.ESCALATE].float().clamp_min(1e-6)) * esc).mean()


def safe_allow_reward(head_probs: torch.Tensor, y: torch.Tensor, easy: torch.Tensor) -> torch.Tensor:
    """Phase 2 reward (<= 0) for ALLOW on easy ALLOW examples."""
    sel = ((y == Action.ALLOW) & easy).float()
    return (torch.log(head_probs[:, Action.ALLOW].float().clamp_min(1e-6)) * sel).mean()


def escalate_penalty(head_probs: torch.Tensor, y: torch.Tensor, easy: torch.Tensor) -> torch.Tensor:
    """Phase 2 penalty for ESCALATE on easy ALLOW examples: -log(1 - p(ESCALATE))."""
    sel = ((y == Action.ALLOW) & easy).float()
    return (-_log1m(head_probs[:, Action.ESCALATE].float()) * sel).mean()


def pair_margin(head_probs: torch.Tensor, pair: torch.Tensor, half: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """Contrast pairs: the unsafe twin must look more unsafe than its safe half, by a margin.

    With u = 1 - P(ALLOW) from the head, each pair whose two halves are both in the batch adds
    relu(margin - (u_unsafe - u_safe)); the mean over those pairs (0 when there are none).
    pair: B batch-local pair ids (-1: not in a pair); half: B (0 safe, 1 unsafe). Unlike the
    other terms it needs both halves in one micro-batch (training keeps twins adjacent)."""
    u = 1.0 - head_probs[:, int(Action.ALLOW)].float()
    terms = []
    for p in torch.unique(pair[pair >= 0]).tolist():
        idx = (pair == p).nonzero().flatten()
        safe = idx[half[idx] == 0]
        unsafe = idx[half[idx] == 1]
        if len(safe) and len(unsafe):
            terms.append(F.relu(margin - (u[unsafe[0]] - u[safe[0]])))
    return torch.stack(terms).mean() if terms else u.new_zeros(())


def pet_loss(
    hidden_states: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    normalize: bool = True,
    checkpointed: bool = False,
) -> torch.Tensor:
    """Second-difference smoothness of every block output along the sequence.

    d2_t = x_t - 2 x_{t+1} + x_{t+2}, counted only where t, t+1, t+2 are all real tokens;
    mean of d2^2 over the hidden dimension and valid positions per example, averaged over
    examples (with at least one valid position) and over layers.

    normalize: divide each layer's term by that layer's (detached) mean squared activation
    at the same positions. Hidden-state scales differ by orders of magnitude between models
    and layers (the raw term is ~6e3 on SmolLM2), which would let one layer or model swamp the
    loss; with the denominator detached the gradient keeps the raw term's direction.
    checkpointed: recompute each layer's difference in backward instead of storing it.
    """
    m = attention_mask.float()
    if m.size(1) < 3:
        return hidden_states[0].new_zeros(()).float()
    valid = m[:, :-2] * m[:, 1:-1] * m[:, 2:]
    count = valid.sum(1)
    has = count > 0
    if not has.any():
        return hidden_states[0].new_zeros(()).float()
    if checkpointed:
        from torch.utils.checkpoint import checkpoint

        layers = [checkpoint(_pet_layer, h, valid, count, has, normalize, use_reentrant=False) for h in hidden_states]
    else:
        layers = [_pet_layer(h, valid, count, has, normalize) for h in hidden_states]
    return torch.stack(layers).mean()


def _pet_layer(
    h: torch.Tensor, valid: torch.Tensor, count: torch.Tensor, has: torch.Tensor, normalize: bool
) -> torch.Tensor:
    h = h.float()
    d2 = h[:, :-2] - 2 * h[:, 1:-1] + h[:, 2:]
    per_example = (d2.pow(2).mean(-1) * valid).sum(1) / count.clamp_min(1.0)
    if normalize:
        scale = (h[:, :-2].detach().pow(2).mean(-1) * valid).sum(1) / count.clamp_min(1.0)
        per_example = per_example / scale.clamp_min(1e-8)
    return per_example[has].mean()


_DEFAULT = TrainConfig()  # LossWeights' defaults are TrainConfig's: one place for each


@dataclass(frozen=True)
class LossWeights:
    """Every TrainConfig value that changes the loss's value (its loss section and
    head_split_weight), as the one object the loss code reads; `from_config` builds it.
    TrainConfig keeps the flat keys (run folders' config.yaml, `--set beta=5`)."""

    alpha: float = _DEFAULT.alpha
    beta: float = _DEFAULT.beta
    gamma: float = _DEFAULT.gamma
    safe_allow_reward: float = _DEFAULT.safe_allow_reward
    escalate_penalty: float = _DEFAULT.escalate_penalty
    pair_margin: float = _DEFAULT.pair_margin
    head_split: float = _DEFAULT.head_split_weight  # split heads' binary losses (absent for a three-way head)
    pair_margin_value: float = _DEFAULT.pair_margin_value  # the margin inside the pair term
    pet_boundaries: tuple[float, ...] = tuple(_DEFAULT.pet_boundaries)  # training fractions where lambda_pet steps
    pet_values: tuple[float, ...] = tuple(_DEFAULT.pet_values)  # lambda_pet in each phase
    pet_normalize: bool = _DEFAULT.pet_normalize  # each layer's PET term over its mean squared activation

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> LossWeights:
        return cls(
            alpha=cfg.alpha,
            beta=cfg.beta,
            gamma=cfg.gamma,
            safe_allow_reward=cfg.safe_allow_reward,
            escalate_penalty=cfg.escalate_penalty,
            pair_margin=cfg.pair_margin,
            head_split=cfg.head_split_weight,
            pair_margin_value=cfg.pair_margin_value,
            pet_boundaries=tuple(cfg.pet_boundaries),
            pet_values=tuple(cfg.pet_values),
            pet_normalize=cfg.pet_normalize,
        )

    def lambda_pet(self, progress: float) -> float:
        """The PET weight at this fraction of training (schedules.lambda_pet on this run's steps)."""
        return lambda_pet(progress, self.pet_boundaries, self.pet_values)


def composite(parts: dict[str, torch.Tensor], w: LossWeights, lambda_pet: float) -> torch.Tensor:
    """The total from named parts (missing parts count as 0)."""
    zero = next(iter(parts.values())).new_zeros(())
    get = lambda k: parts.get(k, zero)  # noqa: E731
    return (
        get("sft")
        + w.alpha * get("safety_ce")
        + w.beta * get("dangerous_allow")
        - w.gamma * get("good_escalate")
        + lambda_pet * get("pet")
        - w.safe_allow_reward * get("safe_allow_reward")
        + w.escalate_penalty * get("escalate_penalty")
        + w.pair_margin * get("pair_margin")
        + w.head_split * (get("refuse_bce") + get("judge_bce"))
    )
