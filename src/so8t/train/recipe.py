"""`so8t train`: the recipe, top to bottom.

`train` = `_setup` (check the output folder, data, base model (unmodified) + LoRA + a separate
safety head, encode, head probe, optimizer with two parameter groups and a cosine schedule, the
run folder) -> `_fit` (the loop: composite loss, gradient accumulation, dev evaluation, early
stopping, checkpoints) -> `_finish` (restore the best checkpoint, evaluate the test split, write
the run). The run's state is one `_Training` object the three share.

A hand-written loop on `accelerate` rather than `transformers.Trainer`: the run is an adapter
plus a separate head (Trainer's save / best-model / resume logic assumes one model file), and
the loop stays readable; `accelerate launch` still gives data parallelism unchanged.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm.auto import tqdm

from so8t.config import TrainConfig
from so8t.data import Mix, Record, assemble
from so8t.labels import Action
from so8t.metrics import SafetyMetrics, compute_metrics
from so8t.model import (
    RUN_MARKER,
    Run,
    SafetyHead,
    SafetyModel,
    ensure_chat_template,
    fingerprint,
    load_adapter_and_head,
    load_base_model,
    resolve_head_layers,
    save_artifacts,
    tag_token_ids,
)
from so8t.model.head import HeadKind
from so8t.model.run import (
    CONFIG_FILE as CONFIG_FILE,  # re-exported: a run's config lives with the Run
    LoadedRun,
    load_run_config as load_run_config,  # re-exported, as CONFIG_FILE
)
from so8t.model.scoring import (
    autocast,
    encode_prompts,
    in_input_order,
    length_order,
)
from so8t.model.thresholds import Calibration, Thresholds, calibrate, decide, save_thresholds
from so8t.train import losses
from so8t.train.batching import (
    Encoded,
    class_weights,
    collate,
    encode_record,
    epoch_order,
    keep_twins_together,
)
from so8t.train.curves import plot_training_curves
from so8t.train.schedules import head_trainable

CHECKPOINT = Path("checkpoints") / "last"
BEST = Path("checkpoints") / "best"


class RunFolderError(RuntimeError):
    pass


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_step: int
    dev: SafetyMetrics
    test: SafetyMetrics | None
    seconds: float
    truncated: int
    adapter_step: int | None = None  # the adapter's step when it was chosen apart from the head


@dataclass
class TrainState:
    step: int = 0
    best: float = -math.inf
    best_step: int = 0
    bad_evals: int = 0
    stopped_early: bool = False


# ----------------------------------------------------------------------------- run folder


def check_out_dir(out: Path, resume: bool) -> None:
    """Refuse to mix two runs in one folder; checked before anything is written."""
    marker = Run(out).status()
    if resume:
        if marker is None:
            raise RunFolderError(f"{out}: nothing to resume (no {RUN_MARKER})")
        if marker.get("status") == "complete":
            raise RunFolderError(f"{out}: the run is already complete")
        if not (out / CHECKPOINT).is_dir():
            raise RunFolderError(f"{out}: no checkpoint saved yet; start again without --resume into a new folder")
        return
    if out.exists() and any(out.iterdir()):
        what = f"a {marker.get('status')} so8t run" if marker else "other files"
        raise RunFolderError(f"{out} already holds {what}; choose another --out, remove it, or use --resume")


# ----------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig):
    """Unmodified base + LoRA adapter (PEFT) + a separate fp32 safety head."""
    from peft import LoraConfig, get_peft_model

    base, tokenizer = load_base_model(cfg.model, load_in_4bit=cfg.load_in_4bit, dtype=cfg.dtype)
    ensure_chat_template(tokenizer)
    base_fp = fingerprint(base)
    base.config.use_cache = False
    # Not peft's prepare_model_for_kbit_training: it upcasts every non-quantized weight to fp32,
    # which costs GiBs on 128k+ vocabularies; freezing and checkpointing is all that is needed.
    base.requires_grad_(False)
    if cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    names = {n.rsplit(".", 1)[-1] for n, _ in base.named_modules()}
    missing = [t for t in cfg.lora_targets if t not in names]
    if missing:
        raise ValueError(f"lora_targets: {missing} not found in {cfg.model!r} (module names: e.g. q_proj, up_proj)")
    n_layers = base.config.get_text_config().num_hidden_layers
    if cfg.lora_layers > n_layers:
        raise ValueError(f"lora_layers: {cfg.lora_layers} is more than the model's {n_layers} blocks")
    top = list(range(n_layers - cfg.lora_layers, n_layers)) if cfg.lora_layers else None
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        layers_to_transform=top,
        task_type="CAUSAL_LM",
    )
    body = get_peft_model(base, lora)
    hidden = base.config.get_text_config().hidden_size
    layers = resolve_head_layers(cfg.head_layers, n_layers)
    head = SafetyHead(hidden, layers=layers, combine=cfg.head_combine, kind=cfg.head_kind)
    model = SafetyModel(body, head, cfg.pooling, cfg.head_prompt)
    model.head.to(next(base.parameters()).device)
    return model, tokenizer, base_fp


def head_below_adapter(model: SafetyModel, cfg: TrainConfig) -> bool:
    """True when every hidden state the head reads comes out of a block the adapter does not
    touch (lora_layers adapts only the top blocks; hidden_states[i] is block i's output). Then
    the adapter cannot move the head's features: SFT trains the LLM's answers for as many steps
    as it needs, the head's dev score cannot judge those steps, and the two are chosen apart
    (the head: its best dev step; the adapter: the last step)."""
    if not cfg.lora_layers:
        return False
    body: Any = model.body  # PEFT's wrapper: nn.Module types its attributes loosely
    n_layers = body.config.get_text_config().num_hidden_layers
    first_adapted = n_layers - cfg.lora_layers  # hidden_states[first_adapted + 1] is the first it changes
    return all((i if i >= 0 else n_layers + 1 + i) <= first_adapted for i in model.head.layers)


def param_groups(model: SafetyModel, cfg: TrainConfig) -> list[dict]:
    """LoRA (body and task head) at lr, the safety head at head_lr; every trainable parameter in exactly one."""
    head_ids = {id(p) for p in model.head.parameters()}
    lora = [p for p in model.body.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in model.head.parameters() if p.requires_grad]
    return [
        {"name": "lora", "params": lora, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"name": "head", "params": head, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay},
    ]


def make_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optim == "paged_adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(groups)
    return torch.optim.AdamW(groups)


# ----------------------------------------------------------------------------- one step


def loss_parts(
    model: SafetyModel,
    batch: dict[str, torch.Tensor],
    tags: list[int],
    cfg: TrainConfig,
    cw: torch.Tensor | None,
    pet_active: bool,
) -> dict[str, torch.Tensor]:
    # No LM logits from the body: they are projected below for the scored positions only.
    out = model(batch["input_ids"], batch["attention_mask"], batch["prompt_mask"], logits_from=None)
    lm = getattr(model, "module", model)  # under DDP the SafetyModel is .module
    head_logits = out.head_logits
    if "head_input_ids" in batch:  # head_prompt "question": the head reads its own pass, not the chat prompt
        mask = batch["head_attention_mask"]
        head_logits = model(batch["head_input_ids"], mask, mask, logits_from=None).head_logits
    y = batch["y"]
    probs = head_logits.softmax(-1)
    final = out.hidden_states[-1]
    # The LM's probability of the ALLOW tag where it commits to a tag (NaN where truncated away).
    rows = torch.arange(y.size(0), device=y.device)
    pos = (batch["tag_pos"].clamp_min(1) - 1).clamp_min(0)
    tag_logits = lm.lm_logits(final[rows, pos]).float()
    lm_allow = tag_logits.softmax(-1)[:, tags[Action.ALLOW]]
    lm_allow = torch.where(batch["tag_pos"] >= 0, lm_allow, torch.full_like(lm_allow, float("nan")))
    w = weights_of(cfg)
    with nullcontext() if pet_active else torch.no_grad():
        pet = losses.pet_loss(out.hidden_states[1:], batch["attention_mask"], w.pet_normalize, cfg.pet_checkpoint)
    parts = {
        "sft": losses.sft_loss(final, batch["labels"], project=lm.lm_logits),
        "safety_ce": losses.safety_ce(head_logits, y, cw),
        "dangerous_allow": losses.dangerous_allow(probs, y, lm_allow),
        "good_escalate": losses.good_escalate(probs, y),
        "pet": pet,
    }
    if w.safe_allow_reward:
        parts["safe_allow_reward"] = losses.safe_allow_reward(probs, y, batch["easy"])
    if w.escalate_penalty:
        parts["escalate_penalty"] = losses.escalate_penalty(probs, y, batch["easy"])
    if w.pair_margin:
        parts["pair_margin"] = losses.pair_margin(probs, batch["pair"], batch["half"], w.pair_margin_value)
    if cfg.head_kind == "split":  # each head's own binary loss, beside the composite on the composed probabilities
        parts.update(losses.split_heads(head_logits, y, cw))
    return parts


weights_of = losses.LossWeights.from_config  # the loss group of a TrainConfig


# ----------------------------------------------------------------------------- evaluation


def head_loss(
    head_logits: torch.Tensor,
    y: torch.Tensor,
    easy: torch.Tensor,
    w: losses.LossWeights,
    cw: torch.Tensor | None = None,
    split: bool = False,
) -> torch.Tensor:
    """The composite's safety-head terms alone (what the probe fits); split: a split head's two
    binary losses too, as in training (losses.split_heads)."""
    probs = head_logits.softmax(-1)
    total = (
        w.alpha * losses.safety_ce(head_logits, y, cw)
        + w.beta * losses.dangerous_allow(probs, y)
        - w.gamma * losses.good_escalate(probs, y)
    )
    if split:
        total = total + w.head_split * sum(losses.split_heads(head_logits, y, cw).values())
    if w.safe_allow_reward:
        total = total - w.safe_allow_reward * losses.safe_allow_reward(probs, y, easy)
    if w.escalate_penalty:
        total = total + w.escalate_penalty * losses.escalate_penalty(probs, y, easy)
    return total


@torch.no_grad()
def pooled_layers(
    model: SafetyModel,
    tokenizer,
    records: list[Record],
    max_length: int,
    amp: str,
    batch_size: int = 16,
    progress: bool = True,
) -> torch.Tensor:
    """N x L x H: the frozen body's pooled states of every layer the head reads, with progress."""
    was_training = model.training
    model.eval()
    device = next(model.head.parameters()).device
    out = []
    order = length_order(tokenizer, records)
    records = [records[i] for i in order]
    try:
        for i in tqdm(
            range(0, len(records), batch_size),
            desc="head probe features",
            unit="batch",
            leave=False,
            disable=not progress,
        ):
            batch, _ = encode_prompts(tokenizer, records[i : i + batch_size], max_length, model.prompt)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, amp):
                hidden = model.body(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    output_hidden_states=True,
                    logits_to_keep=1,
                ).hidden_states
            out.append(model.head.pool_layers(hidden, batch["attention_mask"], model.pooling).float().cpu())
    finally:
        model.train(was_training)
    return in_input_order(torch.cat(out), order)


def probe_head(
    model: SafetyModel,
    tokenizer,
    records: list[Record],
    cfg: TrainConfig,
    cw: torch.Tensor | None,
    progress: bool = True,
) -> dict:
    """Linear-probe-then-fine-tune (LP-FT, Kumar et al. 2022): fit the head on the frozen body's
    pooled states before joint training, so the first LoRA steps are not spent undoing a random
    head. Features come from one forward pass over a class-balanced sample of the training set."""
    labels = [int(r.required_label()) for r in records]
    sample = epoch_order(labels, "sampler", cfg.seed, -1)[: cfg.head_probe_examples]
    picked = [records[i] for i in sample]
    # The sampler repeats the rarer classes' rows; each distinct row goes through the body once
    # (its pooled state does not depend on the copy), which saves the repeats' forward passes.
    distinct = sorted(set(sample))
    row_of = {i: k for k, i in enumerate(distinct)}
    feats = pooled_layers(model, tokenizer, [records[i] for i in distinct], cfg.max_length, cfg.amp, progress=progress)
    feats = feats[torch.tensor([row_of[i] for i in sample], dtype=torch.long)]
    y = torch.tensor([int(r.required_label()) for r in picked])
    easy = torch.tensor([r.difficulty == "easy" for r in picked])
    return fit_head(model.head, feats, y, easy, cfg, cw)


def fit_head(
    head, feats: torch.Tensor, y: torch.Tensor, easy: torch.Tensor, cfg: TrainConfig, cw: torch.Tensor | None = None
) -> dict:
    """Fit the safety head alone on cached pooled states (N x L x H) with the composite head
    loss: the probe half of LP-FT, also used by bench/probe_heldout.py so its study fits the
    head exactly as training does."""
    device = next(head.parameters()).device
    feats, y, easy = feats.to(device), y.to(device), easy.to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.head_probe_lr, weight_decay=cfg.weight_decay)
    # Cosine decay to zero: with a constant rate the last mini-batches decide where the
    # ALLOW boundary ends up, and seeds disagreed by 20 points of allow recall.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, cfg.head_probe_steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    weights, first, last = weights_of(cfg), None, None
    for _ in range(cfg.head_probe_steps):
        idx = torch.randint(0, len(y), (min(cfg.head_probe_batch, len(y)),), generator=gen).to(device)
        loss = head_loss(head(head.combine(feats[idx])), y[idx], easy[idx], weights, cw, head.kind == "split")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        first = loss.item() if first is None else first
        last = loss.item()
    with torch.no_grad():
        full = head_loss(head(head.combine(feats)), y, easy, weights, cw, head.kind == "split").item()
    return {
        "probe_steps": cfg.head_probe_steps,
        "examples": len(y),
        "first_batch_loss": first,
        "last_batch_loss": last,
        "head_loss_on_probe_set": full,
        "final_lr": optimizer.param_groups[0]["lr"],
    }


def evaluate(
    scorer: LoadedRun, records: list[Record], thresholds: Thresholds | None = None, desc: str | None = None
) -> SafetyMetrics:
    """KPIs of `records` under `thresholds` (argmax without); `desc` labels a progress bar."""
    probs = scorer.probs(records, desc=desc)
    return compute_metrics([int(r.required_label()) for r in records], decide(probs, thresholds).tolist())


def calibrate_on_dev(
    scorer: LoadedRun, records: list[Record], kind: HeadKind, desc: str | None = None
) -> tuple[Calibration, SafetyMetrics]:
    """Thresholds chosen on the dev split (so8t calibrate's grid and objective), and dev's KPIs
    under them. The test split plays no part, so its numbers stay an honest estimate."""
    cal = calibrate(scorer.probs(records, desc=desc), [int(r.required_label()) for r in records], kind=kind)
    cal.data = ["dev split"]
    return cal, cal.after


# ----------------------------------------------------------------------------- checkpoints


def _trim_log(path: Path, last_step: int) -> None:
    if path.is_file():
        rows = [
            r for r in path.read_text(encoding="utf-8").splitlines() if r.strip() and json.loads(r)["step"] <= last_step
        ]
        path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def _save_checkpoint(
    folder: Path, model: SafetyModel, tokenizer, meta: dict, optimizer, scheduler, state: TrainState
) -> None:
    """Written beside, then renamed over the previous one: a kill mid-save keeps the old checkpoint."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_artifacts(tmp, model, tokenizer, meta)
    if optimizer is not None:
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": vars(state),
                "rng": torch.get_rng_state(),
            },
            tmp / "trainer_state.pt",
        )
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- the recipe
#
# train() reads top to bottom as three parts: _setup builds everything a run needs, _fit runs
# the loop, _finish evaluates the best checkpoint and writes the run. What they share lives in
# one _Training object rather than in locals threaded through helpers.


@dataclass
class _Training:
    """One run while it trains: its inputs, model, optimizer and schedule, and its counters.

    `state` is kept as its own TrainState because it is what a checkpoint saves and a resumed
    run restores (trainer_state.pt), field for field."""

    cfg: TrainConfig
    out: Path
    run: Run
    accelerator: Any
    mix: Mix
    model: Any  # what accelerator.prepare returned (DDP-wrapped under `accelerate launch`)
    raw_model: SafetyModel  # the same model unwrapped: what is saved, loaded and scored
    tokenizer: Any
    tags: list[int]
    weights: losses.LossWeights
    encoded: list[Encoded]
    order: list[int]  # the whole run's training rows, micro-batch after micro-batch
    cw: torch.Tensor | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    meta: dict
    scorer: LoadedRun
    total_steps: int
    per_step: int  # training rows per optimizer step, over all processes
    truncated: int
    probe: dict | None
    head_apart: bool  # head_below_adapter: the head and the adapter are chosen apart
    progress: bool
    start: float
    state: TrainState = field(default_factory=TrainState)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def show(self) -> bool:
        """Progress bars: the steps, and each dev evaluation below them (main process only)."""
        return self.progress and self.main

    @property
    def adapter_step(self) -> int:
        """The step whose adapter the run keeps: the last when chosen apart, else the head's best."""
        return self.state.step if self.head_apart else self.state.best_step


def train(cfg: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a run into `out` (or continue the one there with `resume`); `progress` shows bars."""
    start = time.perf_counter()
    t = _setup(cfg, Path(out), resume, progress, start)
    _fit(t)
    return _finish(t)


# ----------------------------------------------------------------------------- setup


def _setup(cfg: TrainConfig, out: Path, resume: bool, progress: bool, start: float) -> _Training:
    """Folder check, data, model, encoding, batch plan, head probe, optimizer and schedule, then
    the run folder (created, or restored from its last checkpoint). The order is the original
    recipe's: the seed is set before anything random, and the probe runs before the optimizer
    exists, so a run is reproducible across this split."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    run = Run(out)
    # Check the folder and the inputs before writing anything.
    check_out_dir(out, resume)
    if resume:
        cfg = run.config()
    cfg.validate()
    accelerator = Accelerator()
    set_seed(cfg.seed)
    mix: Mix = assemble(cfg.data, cfg.dev_data, cfg.test_data, seed=cfg.seed, source_weights=cfg.source_weights)

    # The base is loaded as shipped; LoRA and the head are added beside it.
    model, tokenizer, base_fp = build_model(cfg)
    tags = tag_token_ids(tokenizer)
    encoded, truncated = _encode_train(mix.train, tokenizer, cfg)
    labels = [e.y for e in encoded]
    cw = class_weights(labels) if cfg.class_balance == "weights" else None
    per_step = cfg.micro_batch * cfg.grad_accum * accelerator.num_processes
    total_steps, order = _plan_batches(encoded, cfg, per_step)
    probe = None
    if cfg.head_probe_steps and not resume:  # a resumed run's head was probed before its checkpoint
        probe = _probe(model, tokenizer, mix.train, cfg, cw, progress, accelerator.is_main_process)
    prepared, optimizer, scheduler = _optimize(model, cfg, total_steps, accelerator)
    raw_model: SafetyModel = accelerator.unwrap_model(prepared)
    meta = {"base_model": cfg.model, "base_fingerprint": base_fp, "max_length": cfg.max_length, "amp": cfg.amp}
    head_apart = head_below_adapter(raw_model, cfg)
    if head_apart and accelerator.is_main_process:
        print(
            f"the head reads hidden states {list(raw_model.head.layers)}, below the adapter (top {cfg.lora_layers} "
            "blocks): the adapter trains every planned step, the head is kept from its best dev step"
        )
    t = _Training(
        cfg=cfg,
        out=out,
        run=run,
        accelerator=accelerator,
        mix=mix,
        model=prepared,
        raw_model=raw_model,
        tokenizer=tokenizer,
        tags=tags,
        weights=weights_of(cfg),
        encoded=encoded,
        order=order,
        cw=cw,
        optimizer=optimizer,
        scheduler=scheduler,
        meta=meta,
        scorer=LoadedRun(raw_model, tokenizer, cfg.max_length, cfg.amp, meta),
        total_steps=total_steps,
        per_step=per_step,
        truncated=truncated,
        probe=probe,
        head_apart=head_apart,
        progress=progress,
        start=start,
    )
    _open_run_folder(t, resume)
    return t


def _encode_train(records: list[Record], tokenizer, cfg: TrainConfig) -> tuple[list[Encoded], int]:
    """The training rows as token ids, and how many were cut to max_length (warned about)."""
    encoded = [
        encode_record(r, tokenizer, cfg.max_length, cfg.sft_response_tokens, head_prompt=cfg.head_prompt)
        for r in records
    ]
    truncated = sum(e.truncated for e in encoded)
    if truncated:
        warnings.warn(
            f"{truncated} of {len(encoded)} training examples were longer than max_length={cfg.max_length} "
            "and were truncated (prompt from the left, response from the right)",
            stacklevel=4,  # blamed on train()'s caller: here <- _setup <- train <- caller
        )
    return encoded, truncated


def _plan_batches(encoded: list[Encoded], cfg: TrainConfig, per_step: int) -> tuple[int, list[int]]:
    """The number of optimizer steps, and the row order of every micro-batch of the run.

    Planned up front so a resumed run continues with exactly the batches it would have seen."""
    labels = [e.y for e in encoded]
    epoch_len = len(epoch_order(labels, cfg.class_balance, cfg.seed, 0))
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * epoch_len / per_step))
    order: list[int] = []
    epoch = 0
    while len(order) < total_steps * per_step:
        order += epoch_order(labels, cfg.class_balance, cfg.seed, epoch)
        epoch += 1
    if cfg.pair_margin:
        order = keep_twins_together(order, [e.pair for e in encoded])
    return total_steps, order


def _probe(
    model: SafetyModel, tokenizer, records: list[Record], cfg: TrainConfig, cw, progress: bool, main: bool
) -> dict:
    """probe_head (LP-FT) with its one summary line."""
    probe = probe_head(model, tokenizer, records, cfg, cw, progress=progress and main)
    if main:
        print(
            f"head probe on frozen features: {probe['examples']} examples, {probe['probe_steps']} steps, "
            f"head loss {probe['first_batch_loss']:.3f} -> {probe['head_loss_on_probe_set']:.3f}"
        )
    return probe


def _optimize(model: SafetyModel, cfg: TrainConfig, total_steps: int, accelerator) -> tuple[Any, Any, Any]:
    """The model and optimizer as accelerate prepares them (two parameter groups: LoRA at lr, the
    head at head_lr), and a cosine schedule with warmup over the planned steps."""
    from transformers import get_cosine_schedule_with_warmup

    optimizer = make_optimizer(param_groups(model, cfg), cfg)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    return prepared, optimizer, scheduler


def _open_run_folder(t: _Training, resume: bool) -> None:
    """A new run: its folder (config, tokenizer). A resumed one: adapter, head, optimizer,
    schedule, counters and RNG from the last checkpoint, and the logs cut back to it."""
    out, main = t.out, t.main
    if resume:
        ckpt = out / CHECKPOINT
        load_adapter_and_head(ckpt, t.raw_model)
        saved = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        t.optimizer.load_state_dict(saved["optimizer"])
        t.scheduler.load_state_dict(saved["scheduler"])
        t.state = TrainState(**saved["state"])
        torch.set_rng_state(saved["rng"])
        if main:  # steps logged after the checkpoint will be run again
            for log in ("steps.jsonl", "evals.jsonl"):
                _trim_log(out / "metrics" / log, t.state.step)
    elif main:
        Run.create(out, t.cfg)
        t.tokenizer.save_pretrained(str(out / "tokenizer"))
    if main:
        t.run.write_status(status="running", step=t.state.step, total_steps=t.total_steps)


# ----------------------------------------------------------------------------- fit


def _fit(t: _Training) -> None:
    """The loop: optimizer steps until the planned total or early stopping, a dev evaluation
    (and checkpoint) every eval_every steps. Ctrl-C saves a checkpoint to resume from; any
    other error marks the run failed. Either way the error goes on up."""
    state, out = t.state, t.out
    steps_log = (out / "metrics" / "steps.jsonl").open("a", encoding="utf-8")
    evals_log = (out / "metrics" / "evals.jsonl").open("a", encoding="utf-8")
    bar = tqdm(total=t.total_steps, initial=state.step, disable=not t.show, desc="so8t train", dynamic_ncols=True)
    t.model.train()
    checkpoints = _DevCheckpoints(t, evals_log, bar)

    if t.probe is not None:  # the probed head alone is a candidate: kept if no LoRA step beats it on dev
        checkpoints.evaluate()
    try:
        while state.step < t.total_steps and not state.stopped_early:
            row, parts = _step(t)
            if t.main:
                steps_log.write(json.dumps(row) + "\n")
                steps_log.flush()
            bar.update(1)
            bar.set_postfix({k: f"{parts[k]:.3g}" for k in ("total", "sft", "safety_ce", "dangerous_allow", "pet")})
            if state.step % t.cfg.eval_every == 0 or state.step == t.total_steps:
                checkpoints.evaluate()
    except KeyboardInterrupt:
        if t.main:
            bar.close()
            _save_checkpoint(out / CHECKPOINT, t.raw_model, t.tokenizer, t.meta, t.optimizer, t.scheduler, state)
            t.run.write_status(status="interrupted", step=state.step, total_steps=t.total_steps)
            print(f"\ninterrupted at step {state.step}; continue with: so8t train --resume {out}")
        raise
    except Exception:
        if t.main:  # the folder says so; the last checkpoint (if any) can resume
            t.run.write_status(status="failed", step=state.step, total_steps=t.total_steps)
        raise
    finally:
        steps_log.close()
        evals_log.close()
    bar.close()


def _step(t: _Training) -> tuple[dict, dict[str, float]]:
    """One optimizer step (grad_accum micro-batches): its steps.jsonl row, and its loss terms
    unrounded (for the progress bar)."""
    cfg, optimizer, state = t.cfg, t.optimizer, t.state
    frac = state.step / max(1, t.total_steps - 1)
    lam = t.weights.lambda_pet(frac)
    step_parts = _accumulate(t, lam)
    t.accelerator.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
    optimizer.step()
    t.scheduler.step()
    frozen = not head_trainable(frac, cfg.head_freeze_at)
    if frozen:  # lr 0 leaves the head exactly as it is (and keeps DDP's parameter set fixed)
        for g in optimizer.param_groups:
            if g.get("name") == "head":
                g["lr"] = 0.0
    optimizer.zero_grad(set_to_none=True)
    state.step += 1
    lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
    row = {
        "step": state.step,
        "progress": round(frac, 4),
        "lambda_pet": lam,
        "lr": lrs.get("lora"),
        "head_lr": lrs.get("head"),
        "head_frozen": frozen,
        **{k: round(v, 6) for k, v in step_parts.items()},
    }
    return row, step_parts


def _accumulate(t: _Training, lam: float) -> dict[str, float]:
    """Forward and backward over this step's micro-batches; the loss terms averaged over them."""
    cfg, accelerator = t.cfg, t.accelerator
    step_parts: dict[str, float] = {}
    for k in range(cfg.grad_accum):
        # This process's slice of the planned order: steps, then micro-batches, then processes.
        first = (
            (t.state.step * t.per_step)
            + (k * cfg.micro_batch * accelerator.num_processes)
            + accelerator.process_index * cfg.micro_batch
        )
        batch = collate([t.encoded[i] for i in t.order[first : first + cfg.micro_batch]], t.tokenizer.pad_token_id)
        batch = {key: v.to(accelerator.device) for key, v in batch.items()}
        sync = k == cfg.grad_accum - 1  # DDP all-reduces gradients on the last micro-batch only
        with nullcontext() if sync else accelerator.no_sync(t.model):
            with autocast(accelerator.device, cfg.amp):
                parts = loss_parts(t.model, batch, t.tags, cfg, t.cw, pet_active=lam > 0)
            total = losses.composite(parts, t.weights, lam)
            # Every term is a per-example mean, so dividing by the accumulation count makes
            # micro_batch x grad_accum equal one big batch.
            accelerator.backward(total / cfg.grad_accum)
        for key, v in {**parts, "total": total}.items():
            step_parts[key] = step_parts.get(key, 0.0) + v.item() / cfg.grad_accum
    return step_parts


@dataclass
class _DevCheckpoints:
    """One dev evaluation after another: log it, keep the best checkpoint, count patience, and
    let the status marker follow the last checkpoint (only the main process writes)."""

    t: _Training
    evals_log: TextIO
    bar: Any

    def evaluate(self) -> None:
        t, state = self.t, self.t.state
        cfg = t.cfg
        dev = evaluate(t.scorer, t.mix.dev, desc=f"dev eval at step {state.step}" if t.show else None)
        value = getattr(dev, cfg.early_stop_metric)
        improved = value > state.best + 1e-9
        if improved:
            state.best, state.best_step, state.bad_evals = value, state.step, 0
        else:
            state.bad_evals += 1
            # Apart, the head's dev score says nothing about the adapter's steps: they all run.
            state.stopped_early = state.bad_evals >= cfg.patience and not t.head_apart
        if not t.main:
            return
        self.evals_log.write(json.dumps({"step": state.step, **dev.as_dict(), "improved": improved}) + "\n")
        self.evals_log.flush()
        model, tok, meta, out = t.raw_model, t.tokenizer, t.meta, t.out
        if improved:
            _save_checkpoint(out / BEST, model, tok, meta, None, None, state)
        _save_checkpoint(out / CHECKPOINT, model, tok, meta, t.optimizer, t.scheduler, state)
        # The marker follows the checkpoint, so a user (or serve refusing an unfinished run) sees
        # how far the run got; resume reads the step from the checkpoint, not from here.
        t.run.write_status(**{**(t.run.status() or {}), "status": "running", "step": state.step})
        self.bar.write(
            f"step {state.step}: dev safety_score={dev.safety_score:.3f} refuse_recall={dev.refuse_recall:.3f} "
            f"escalate_recall={dev.escalate_recall:.3f} overcompliance={dev.overcompliance:.3f}"
            + (" (best)" if improved else f" (no gain {state.bad_evals}/{cfg.patience})")
        )


# ----------------------------------------------------------------------------- finish


def _finish(t: _Training) -> TrainResult:
    """Restore the best checkpoint, choose thresholds on dev (if calibrate), evaluate dev and
    test under them, and write the run. The test split is only read here, once."""
    t.accelerator.wait_for_everyone()
    if (t.out / BEST).is_dir():  # apart: the best step's head, the last step's adapter
        load_adapter_and_head(t.out / BEST, t.raw_model, adapter=not t.head_apart)
    show, mix = t.show, t.mix
    cal = None
    if t.cfg.calibrate:
        cal, dev = calibrate_on_dev(
            t.scorer, mix.dev, t.cfg.head_kind, desc="dev: choosing thresholds" if show else None
        )
    else:
        dev = evaluate(t.scorer, mix.dev, desc="dev: final" if show else None)
    thresholds = cal.thresholds if cal else None
    test = evaluate(t.scorer, mix.test, thresholds, desc="test: final" if show else None) if mix.test else None
    seconds = time.perf_counter() - t.start
    if t.main:
        _write_run(t, cal, dev, test, seconds)
    apart_step = t.adapter_step if t.head_apart else None
    return TrainResult(t.out, t.state.step, t.state.best_step, dev, test, seconds, t.truncated, apart_step)


def _write_run(
    t: _Training, cal: Calibration | None, dev: SafetyMetrics, test: SafetyMetrics | None, seconds: float
) -> None:
    """The finished run folder: adapter and head, thresholds, final.json, the curves; the
    checkpoints go, and the marker says complete last, once everything else is written."""
    out, state = t.out, t.state
    save_artifacts(
        out, t.raw_model, t.tokenizer, {**t.meta, "best_step": state.best_step, "adapter_step": t.adapter_step}
    )
    if cal:
        save_thresholds(out, cal)
        print(
            f"thresholds chosen on dev: {cal.thresholds.describe()} "
            f"(dev safety_score {cal.before.safety_score:.3f} -> {cal.after.safety_score:.3f}; "
            f"undo: so8t calibrate {out} --reset)"
        )
    (out / "metrics" / "final.json").write_text(
        json.dumps(
            {
                "best_step": state.best_step,
                "adapter_step": t.adapter_step,
                "steps": state.step,
                "stopped_early": state.stopped_early,
                "seconds": round(seconds, 1),
                "truncated_train_examples": t.truncated,
                "data": t.mix.summary(),
                "head_probe": t.probe,
                "thresholds": cal.thresholds.as_dict() if cal else None,
                "dev": dev.as_dict(),
                "test": test.as_dict() if test else None,
            },
            indent=2,
        )
    )
    plot_training_curves(
        out / "metrics" / "steps.jsonl", out / "metrics" / "evals.jsonl", out / "plots" / "training_curves.png"
    )
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    t.run.write_status(status="complete", step=state.step, total_steps=t.total_steps, best_step=state.best_step)
