"""A trained run on disk: LoRA adapter (PEFT format) + safety head + tokenizer + metadata.

The base weights are not copied: the run names its base model and carries a fingerprint of
its weights, so loading it on a different base fails instead of silently misbehaving.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from so8t.model.head import HEAD_CONFIG, HEAD_WEIGHTS, load_head, save_head
from so8t.model.loading import load_base_model
from so8t.model.safety_model import SafetyModel

ADAPTER_DIR = "adapter"
TOKENIZER_DIR = "tokenizer"
RUN_MARKER = "so8t-run.json"


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
    save_head(model.head, folder, {"pooling": model.pooling, **meta})
    tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))


def load_adapter_and_head(folder: str | Path, model: SafetyModel) -> None:
    """Load weights saved by save_artifacts into an existing SafetyModel (resume, best restore)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    state = load_file(str(folder / ADAPTER_DIR / "adapter_model.safetensors"))
    set_peft_model_state_dict(model.body, state)
    head, _ = load_head(folder)
    model.head.load_state_dict(head.state_dict())


def _runs_near(folder: Path) -> list[Path]:
    """Complete runs beside `folder` (or inside it, when it is a folder of runs such as runs/)."""
    found = []
    for parent in (folder, folder.parent):
        if parent.is_dir():
            for marker in sorted(parent.glob(f"*/{RUN_MARKER}")):
                try:
                    if json.loads(marker.read_text()).get("status") == "complete":
                        found.append(marker.parent)
                except (OSError, ValueError):
                    continue
    return found


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
    model = SafetyModel(body, head.to(next(base.parameters()).device), meta.get("pooling", "mean")).eval()
    return model, tokenizer, meta
