"""A trained run on disk: LoRA adapter (PEFT format) + safety head + tokenizer + metadata.

The base weights are not copied: the run names its base model and carries a fingerprint of
its weights, so loading it on a different base fails instead of silently misbehaving.

`Run` is the folder as one object: its config (config.yaml), meta (head.json), thresholds
(thresholds.json), status marker (so8t-run.json) and `load()`, which gives the model, the
tokenizer, and the max length and precision the run was trained with together (`LoadedRun`).
Guarantees: the status marker is written atomically and fsynced (so8t.fsutil), so a kill
leaves the old marker or the new one; `Run.open` checks the folder holds a complete run before
any weights load, and says what is wrong and which complete run nearby was probably meant.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from so8t.config import TrainConfig, from_dict, load_yaml, save_yaml
from so8t.fsutil import atomic_write_text
from so8t.model.head import HEAD_CONFIG, HEAD_WEIGHTS, load_head, save_head
from so8t.model.loading import load_base_model
from so8t.model.safety_model import SafetyModel
from so8t.model.scoring import prompt_outputs
from so8t.model.thresholds import Thresholds, load_thresholds

ADAPTER_DIR = "adapter"
TOKENIZER_DIR = "tokenizer"
RUN_MARKER = "so8t-run.json"
CONFIG_FILE = "config.yaml"


class RunError(RuntimeError):
    pass


def check_finite(module, where: str) -> None:
    """Raise RunError naming the first floating-point tensor that holds NaN or an infinity: such
    a head or adapter is a valid safetensors file, but every probability it gives is NaN."""
    import torch

    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise RunError(f"{where}: tensor {name!r} holds NaN or infinite values; the run is corrupt")


def fingerprint(model: PreTrainedModel) -> str:
    """A short hash of the base weights that survives dtype changes (fp32 / bf16 / 4-bit keep
    the embeddings): shape facts plus coarse statistics of the input embedding table."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    # nn.Module.__getattr__ types an attribute as Tensor | Module: mypy sees no method here
    emb = model.get_input_embeddings().weight.detach().float()  # type: ignore[operator]
    rows = emb[:: max(1, emb.size(0) // 256)]
    stats = [emb.mean().item(), emb.std().item(), rows.abs().mean().item()]
    text = f"{cfg.model_type}|{cfg.hidden_size}|{cfg.num_hidden_layers}|{emb.size(0)}|" + "|".join(
        f"{s:.3e}" for s in stats
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_artifacts(folder: str | Path, model: SafetyModel, tokenizer: PreTrainedTokenizerBase, meta: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # nn.Module.__getattr__ types an attribute as Tensor | Module: mypy sees no method here
    model.body.save_pretrained(str(folder / ADAPTER_DIR))  # type: ignore[operator]
    save_head(model.head, folder, {"pooling": model.pooling, "head_prompt": model.prompt, **meta})
    tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))


def load_adapter_and_head(folder: str | Path, model: SafetyModel, adapter: bool = True) -> None:
    """Load weights saved by save_artifacts into an existing SafetyModel (resume, best restore);
    adapter=False loads the head only and leaves the adapter as it is."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    if adapter:
        state = load_file(str(folder / ADAPTER_DIR / "adapter_model.safetensors"))
        set_peft_model_state_dict(model.body, state)
    head, _ = load_head(folder)
    model.head.load_state_dict(head.state_dict())


def complete_runs(parent: Path) -> list[Path]:
    """The folders in `parent` whose status marker says complete, by name; an unreadable marker
    is skipped."""
    found = []
    for marker in sorted(parent.glob(f"*/{RUN_MARKER}")):
        try:
            if json.loads(marker.read_text()).get("status") == "complete":
                found.append(marker.parent)
        except (OSError, ValueError):
            continue
    return found


def _runs_near(folder: Path) -> list[Path]:
    """Complete runs beside `folder` (or inside it, when it is a folder of runs such as runs/)."""
    return [run for parent in (folder, folder.parent) if parent.is_dir() for run in complete_runs(parent)]


def _hint(folder: Path) -> str:
    """'; did you mean runs/x?' for the complete run nearby closest in name (else the newest),
    or how to make one when there is none."""
    near = _runs_near(folder)
    if not near:
        return f"; train one with: so8t train --out {folder}"
    close = difflib.get_close_matches(folder.name, [p.name for p in near], n=1, cutoff=0.6)
    newest = max(near, key=lambda p: (p / RUN_MARKER).stat().st_mtime)
    pick = next(p for p in near if p.name == close[0]) if close else newest
    return f"; did you mean {str(pick)!r}?" + (
        f" (complete runs here: {', '.join(p.name for p in near)})" if len(near) > 1 else ""
    )


def check_run(folder: str | Path) -> dict:
    """Check, without loading any weights, that `folder` holds a complete run; return its marker.

    Raises RunError naming the folder and what is wrong (no such folder, no so8t-run.json, a
    status other than 'complete', missing files), with the closest complete run nearby."""
    folder = Path(folder)
    if not folder.exists():
        raise RunError(f"{folder} is not an so8t run: no such folder{_hint(folder)}")
    if not folder.is_dir():
        raise RunError(f"{folder} is not an so8t run: a file, not a folder{_hint(folder)}")
    if not (folder / RUN_MARKER).is_file():
        raise RunError(f"{folder} is not an so8t run (no {RUN_MARKER}){_hint(folder)}")
    try:
        info = json.loads((folder / RUN_MARKER).read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"{folder}: {RUN_MARKER} cannot be read ({exc})") from exc
    if not isinstance(info, dict):
        raise RunError(f"{folder}: {RUN_MARKER} is not a JSON object")
    status = info.get("status")
    if status != "complete":
        where = f" at step {info['step']} of {info['total_steps']}" if "step" in info and "total_steps" in info else ""
        todo = (
            "still training, or was killed: then resume it with so8t train --resume " + str(folder)
            if status == "running"
            else f"resume it with so8t train --resume {folder}"
        )
        raise RunError(f"{folder}: run status is {status!r}{where}, not 'complete' ({todo})")
    missing = [
        name
        for name in (
            HEAD_CONFIG,
            HEAD_WEIGHTS,
            f"{ADAPTER_DIR}/adapter_config.json",
            f"{ADAPTER_DIR}/adapter_model.safetensors",
            TOKENIZER_DIR,
        )
        if not (folder / name).exists()
    ]
    if missing:
        raise RunError(
            f"{folder}: the run is marked complete but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing"
        )
    return info


def load_run(
    folder: str | Path, *, merge: bool = False, check_fingerprint: bool = True, load_in_4bit: bool = False
) -> tuple[SafetyModel, PreTrainedTokenizerBase, dict]:
    """Load a finished run: the base model by its reference, the adapter on top, the head beside it."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    folder = Path(folder)
    check_run(folder)
    try:
        head, meta = load_head(folder)
    except Exception as exc:  # a corrupt head must not load
        raise RunError(f"{folder}: cannot load the safety head: {exc}") from exc
    base, _ = load_base_model(meta["base_model"], load_in_4bit=load_in_4bit)
    if check_fingerprint and fingerprint(base) != meta["base_fingerprint"]:
        raise RunError(
            f"{folder}: trained on a base model with fingerprint {meta['base_fingerprint']}, "
            f"but {meta['base_model']!r} has {fingerprint(base)}: a different base model"
        )
    body = PeftModel.from_pretrained(base, str(folder / ADAPTER_DIR))
    if merge:
        body = body.merge_and_unload()
    check_finite(head, f"{folder} (safety head)")
    check_finite(body, f"{folder} (base model + adapter)")
    tokenizer = AutoTokenizer.from_pretrained(str(folder / TOKENIZER_DIR))
    model = SafetyModel(
        body, head.to(next(base.parameters()).device), meta.get("pooling", "mean"), meta.get("head_prompt", "chat")
    ).eval()
    return model, tokenizer, meta


def load_run_config(folder: str | Path) -> TrainConfig:
    """The TrainConfig a run was trained with (RUN/config.yaml), checked like any config file."""
    path = Path(folder) / CONFIG_FILE
    return from_dict(TrainConfig, load_yaml(path), str(path))


@dataclass
class LoadedRun:
    """A run ready to score: the model and tokenizer, with the max length (tokens) and the
    precision (amp) it was trained with, and its meta (head.json). What scoring needs, in one."""

    model: SafetyModel
    tokenizer: PreTrainedTokenizerBase
    max_length: int
    amp: str = "none"
    meta: dict = field(default_factory=dict)

    def probs(
        self, items: Sequence, between_batches: Callable[[], None] | None = None, desc: str | None = None
    ) -> np.ndarray:
        """P(ALLOW, ESCALATE, REFUSE) per record or conversation, one row each, in input order
        (see prompt_outputs for `between_batches` and the progress bar `desc`)."""
        return prompt_outputs(
            self.model,
            self.tokenizer,
            items,
            self.max_length,
            amp=self.amp,
            between_batches=between_batches,
            desc=desc,
        )[1].numpy()


class Run:
    """A run folder. `Run(folder)` reads nothing yet; `Run.open` checks it is a complete run,
    `Run.create` starts a new one. Every read goes to the folder, so two objects agree."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r})"

    @classmethod
    def open(cls, folder: str | Path) -> Run:
        """A complete run; RunError (see check_run) naming what is wrong otherwise."""
        check_run(folder)
        return cls(folder)

    @classmethod
    def create(cls, folder: str | Path, cfg: TrainConfig) -> Run:
        """A new run folder holding its config (config.yaml) and an empty metrics/ folder."""
        run = cls(folder)
        run.folder.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run.folder / CONFIG_FILE)
        (run.folder / "metrics").mkdir(exist_ok=True)
        return run

    @property
    def marker(self) -> Path:
        return self.folder / RUN_MARKER

    def status(self) -> dict | None:
        """The status marker (status, step, total_steps, ...), or None when there is none yet."""
        return json.loads(self.marker.read_text()) if self.marker.is_file() else None

    def write_status(self, **info) -> None:
        """Replace the status marker, atomically and fsynced."""
        atomic_write_text(self.marker, json.dumps(info, indent=2))

    def config(self) -> TrainConfig:
        return load_run_config(self.folder)

    def meta(self) -> dict:
        """head.json: base model, fingerprint, pooling, head kind, max length, amp, ..."""
        return json.loads((self.folder / HEAD_CONFIG).read_text(encoding="utf-8"))

    def thresholds(self) -> Thresholds | None:
        """The thresholds the run decides with (thresholds.json); None means argmax."""
        return load_thresholds(self.folder)

    def load(self, *, merge: bool = False, check_fingerprint: bool = True, load_in_4bit: bool = False) -> LoadedRun:
        """The finished run's model (see load_run), with the max length and amp of its config."""
        model, tokenizer, meta = load_run(
            self.folder, merge=merge, check_fingerprint=check_fingerprint, load_in_4bit=load_in_4bit
        )
        cfg = self.config()
        return LoadedRun(model, tokenizer, cfg.max_length, cfg.amp, meta)
