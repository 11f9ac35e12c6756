"""The safety head and the pooling that feeds it.

The head is a separate module: it shares no weight with the LM head and is kept in fp32 (at a
1e-5 learning rate most bf16 updates would round to zero). It reads hidden states that the
plain forward returns anyway (`output_hidden_states=True`), pooled over the prompt tokens:
either the final state after the final norm (layers = (-1,), the seed's choice), or several
blocks' states, each pooled and layer-normalised without parameters so blocks of different
scale weigh alike, then combined in one of two ways:

- combine='concat' (the default): the pooled states side by side (L x H features), so the
  head's first layer weighs every block's every feature on its own;
- combine='mix': averaged with softmax weights that train with the head (H features).

Middle blocks separate dangerous from harmless look-alikes better than the last one in our
frozen-probe study (bench/probe_layers.py), which is why several blocks are read. Concatenation
beat the learned mix on every dev split (README, "Which head"): an average lets one block's
features cancel another's, a concatenation keeps them apart.

Two kinds of head read those features (`kind`, saved in head.json as `head_kind`):

- 'three_way' (the default): one MLP -> 3 logits (ALLOW, ESCALATE, REFUSE).
- 'split' (the seed's phase 3): two MLPs of the same shape on the same features, the primary
  head giving r = P(REFUSE) (refuse vs the rest) and the escalation judge giving
  e = P(needs a person | not refused). Their documented rule is

      r >= refuse_at -> REFUSE, else e >= escalate_at -> ESCALATE, else ALLOW

  and they are also exposed as ordinary three-class probabilities,
  P(REFUSE) = r, P(ESCALATE) = (1 - r) e, P(ALLOW) = (1 - r)(1 - e): `forward` returns their
  logarithms (`compose`), so softmax of the output is exactly that distribution and every path
  that reads 3 logits (eval, AUROC, the composite loss, the gate and its fail-closed checks)
  works unchanged. `decompose` recovers the two heads' logits from any three-class logits. A NaN
  in either head makes every composed probability NaN, which the gate rejects (fail closed).

A head.json without `head_kind` (saved before split heads existed) loads as 'three_way'.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from so8t.labels import ACTIONS

Pooling = Literal["mean", "last"]
Combine = Literal["concat", "mix"]
COMBINES = ("concat", "mix")
HeadKind = Literal["three_way", "split"]
HEAD_KINDS = ("three_way", "split")
HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
# From a third of the depth to the end, every ~tenth of it: what `head_layers: mix` reads.
MIX_FRACTIONS = (0.33, 0.44, 0.56, 0.67, 0.78, 0.89, 1.0)


def resolve_head_layers(spec: str | Sequence[int], num_blocks: int) -> tuple[int, ...]:
    """'last' -> (-1,); 'mix' -> block indices spread over the upper two thirds (hidden_states
    index i is block i's output; num_blocks is the final state after the final norm); a list
    of ints is taken as hidden_states indices (negative counts from the end)."""
    if spec == "last":
        return (-1,)
    if spec == "mix":
        return tuple(sorted({max(1, round(num_blocks * f)) for f in MIX_FRACTIONS}))
    if isinstance(spec, str):
        raise ValueError(f"head_layers: expected 'last', 'mix' or a list of layer indices, got {spec!r}")
    layers = tuple(int(i) for i in spec)
    bad = [i for i in layers if not -(num_blocks + 1) <= i <= num_blocks]
    if not layers or bad:
        raise ValueError(f"head_layers: {list(layers)} must be non-empty indices in [-{num_blocks + 1}, {num_blocks}]")
    return layers


class SafetyHead(nn.Module):
    """(pooled layers, concatenated or mixed) -> hidden/2 -> GELU -> 3 (ALLOW, ESCALATE, REFUSE);
    kind='split': two such MLPs, each -> 1 (the primary head's and the judge's logit), composed."""

    def __init__(
        self,
        hidden_size: int,
        num_labels: int = len(ACTIONS),
        layers: Sequence[int] = (-1,),
        combine: Combine = "concat",
        kind: HeadKind = "three_way",
    ):
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"head combine must be one of {', '.join(COMBINES)}, got {combine!r}")
        if kind not in HEAD_KINDS:
            raise ValueError(f"head_kind must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
        if kind == "split" and num_labels != len(ACTIONS):
            raise ValueError(f"a split head composes exactly {len(ACTIONS)} actions, got num_labels={num_labels}")
        self.hidden_size = hidden_size
        self.kind: HeadKind = kind
        self.layers = tuple(int(i) for i in layers)
        # One layer: both ways read that layer as it is (no mix weights, H features).
        self.combine_mode: Combine = combine if len(self.layers) > 1 else "concat"
        if self.combine_mode == "mix":
            self.mix = nn.Parameter(torch.zeros(len(self.layers)))
        features = hidden_size * len(self.layers) if self.combine_mode == "concat" else hidden_size
        if kind == "three_way":
            self.net = _mlp(features, hidden_size // 2, num_labels)
        else:
            self.net = _mlp(features, hidden_size // 2, 1)  # the primary head: REFUSE vs the rest
            self.judge = _mlp(features, hidden_size // 2, 1)  # the escalation judge: needs a person?
        self.float()

    def read(self, hidden_states: Sequence[torch.Tensor], prompt_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
        """B x F (F = L*H concatenated, H mixed): what the head reads from the body's hidden states
        (embeddings + every block)."""
        return self.combine(self.pool_layers(hidden_states, prompt_mask, pooling))

    def pool_layers(
        self, hidden_states: Sequence[torch.Tensor], prompt_mask: torch.Tensor, pooling: Pooling
    ) -> torch.Tensor:
        """B x L x H: each chosen layer pooled (and layer-normalised when there are several);
        what the frozen-feature probe caches, so it can fit the mix weights too."""
        if len(self.layers) == 1:
            return pool(hidden_states[self.layers[0]], prompt_mask, pooling).unsqueeze(1)
        return torch.stack(
            [
                F.layer_norm(pool(hidden_states[i], prompt_mask, pooling).float(), (self.hidden_size,))
                for i in self.layers
            ],
            1,
        )

    def combine(self, pooled_layers: torch.Tensor) -> torch.Tensor:
        """B x L x H -> B x L*H side by side, or B x H with the learned softmax weights."""
        if self.combine_mode == "concat":
            return pooled_layers.flatten(1)
        return (pooled_layers * self.mix.softmax(0)[None, :, None]).sum(1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """B x 3 logits; for a split head the log-probabilities of the composed distribution."""
        x = pooled.float()
        if self.kind == "three_way":
            return self.net(x)
        return compose(self.net(x)[:, 0], self.judge(x)[:, 0])


def _mlp(features: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, out))


def compose(refuse_logit: torch.Tensor, judge_logit: torch.Tensor) -> torch.Tensor:
    """B x 3 log-probabilities (ALLOW, ESCALATE, REFUSE) of r = sigmoid(refuse_logit) and
    e = sigmoid(judge_logit): log((1-r)(1-e)), log((1-r)e), log r, computed with logsigmoid so
    no probability underflows to log 0. They sum (as probabilities) to 1 by construction."""
    not_refused = F.logsigmoid(-refuse_logit)
    return torch.stack(
        [not_refused + F.logsigmoid(-judge_logit), not_refused + F.logsigmoid(judge_logit), F.logsigmoid(refuse_logit)],
        -1,
    )


def decompose(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `compose` for any B x 3 logits: (log-odds of REFUSE vs the rest, log-odds
    of ESCALATE vs ALLOW), i.e. logit(P(REFUSE)) and logit(P(ESCALATE | not REFUSE))."""
    logits = logits.float()
    return logits[:, 2] - torch.logaddexp(logits[:, 0], logits[:, 1]), logits[:, 1] - logits[:, 0]


def pool(hidden: torch.Tensor, prompt_mask: torch.Tensor, mode: Pooling = "mean") -> torch.Tensor:
    """Pool B x T x H hidden states over the positions where prompt_mask is 1.

    mean: masked mean over the prompt tokens; last: the last prompt token (works with left or
    right padding because it is found from the mask, not from the length).
    """
    mask = prompt_mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    if mode == "last":
        positions = torch.arange(hidden.size(1), device=hidden.device).expand_as(prompt_mask)
        last = torch.where(prompt_mask.bool(), positions, torch.full_like(positions, -1)).max(1).values
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last.clamp_min(0)]
    raise ValueError(f"unknown pooling {mode!r}; expected 'mean' or 'last'")


def save_head(head: SafetyHead, folder: str | Path, meta: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}, str(folder / HEAD_WEIGHTS)
    )
    config = {
        "hidden_size": head.hidden_size,
        "labels": list(ACTIONS),
        "layers": list(head.layers),
        "combine": head.combine_mode,
        "head_kind": head.kind,
        **meta,
    }
    (folder / HEAD_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def load_head(folder: str | Path) -> tuple[SafetyHead, dict]:
    folder = Path(folder)
    config = json.loads((folder / HEAD_CONFIG).read_text(encoding="utf-8"))
    if config.get("labels") != list(ACTIONS):
        raise ValueError(f"{folder / HEAD_CONFIG}: label map {config.get('labels')} differs from {list(ACTIONS)}")
    # Runs saved before 'combine' existed mixed their layers (one layer: either reads it as it is);
    # runs saved before split heads existed have a three-way head.
    config["head_kind"] = head_kind_of(config, folder / HEAD_CONFIG)
    head = SafetyHead(
        int(config["hidden_size"]),
        layers=config.get("layers", [-1]),
        combine=config.get("combine", "mix"),
        kind=config["head_kind"],
    )
    head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
    return head, config


def head_kind_of(config: dict, where: str | Path = HEAD_CONFIG) -> HeadKind:
    """The head kind a head.json records ('three_way' when it records none); an unknown kind is
    a ValueError naming the file and the field."""
    kind = config.get("head_kind", "three_way")
    if kind not in HEAD_KINDS:
        raise ValueError(f"{where}: head_kind must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
    return kind


def run_head_kind(folder: str | Path) -> HeadKind:
    """The head kind of the run (or export) in `folder`, read from its head.json alone."""
    path = Path(folder) / HEAD_CONFIG
    return head_kind_of(json.loads(path.read_text(encoding="utf-8")), path)
