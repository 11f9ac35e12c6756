"""The GPU path, measured: the 12 GB presets' QLoRA recipe on a model of their base's exact shape,
and the cpu-quick recipe on the embedded model, on a GPU. Nothing is downloaded.

(a) For each preset (rtx3060-3b by default; rtx3060-7b with --presets): a random-initialised
    model with the exact shape of the preset's base (train/memory.py's KNOWN_CONFIGS: hidden
    size, blocks, heads, vocabulary) is written to a temporary folder in bf16, then trained by
    the real recipe (so8t.train.recipe.train) with the preset's settings -- loaded in 4-bit NF4
    with double quantization through the project's loading code, LoRA, gradient checkpointing,
    paged 8-bit AdamW -- for --steps optimizer steps on examples as long as the preset's
    max_length. The process's allocator is capped at --cap-gib (12) minus the CUDA context
    that memory.py budgets for (torch.cuda.set_per_process_memory_fraction), as on an RTX 3060.
    Printed beside `so8t train --dry-run`'s estimate: peak memory during the training steps and
    over the whole run (the final evaluation included), and seconds per optimizer step (median
    after the first). Out of memory under the cap is reported, not hidden.
(b) The cpu-quick recipe as it is (model embedded:gemma3-270m, its data, probe, LoRA and
    calibration) trained on the GPU: its test KPIs and wall time.

    python bench/gpu_check.py [--presets rtx3060-3b rtx3060-7b] [--steps 20] [--cap-gib 12]
        [--parts a b] [--json results.json] [--set KEY=VALUE ...]
    python bench/gpu_check.py --tiny       # on a CPU: a tiny model of the same family, seconds

--tiny shrinks the model (2 blocks, hidden 64) and the sequence length (64) and keeps the rest
of each recipe; where CUDA or bitsandbytes is missing it skips 4-bit NF4 and paged 8-bit AdamW
and says so (float32 weights, AdamW). Without --tiny a CUDA GPU and bitsandbytes are required.
Exit status 1 when a part failed (out of memory included).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gate_load import tiny_tokenizer

GIB = 2**30


def have_4bit() -> str | None:
    """None when 4-bit NF4 can run here, else why not."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    return None


def preset_config(name: str, overrides: dict):
    from so8t.config import TrainConfig, resolve
    from so8t.train.presets import preset

    return resolve(TrainConfig, (preset(name), f"preset {name}"), (overrides, "gpu_check"))


def shaped_model(ref: str, folder: Path, tiny: bool) -> Path:
    """A random bf16 model with the shape of `ref` (tiny: 2 blocks, hidden 64, the same family),
    saved with the tiny tokenizer (its ids fit any vocabulary)."""
    from transformers import AutoModelForCausalLM

    from so8t.train.memory import model_config_for

    tok = tiny_tokenizer()
    config = model_config_for(ref)
    if tiny:
        config = type(config)(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tok),
            tie_word_embeddings=config.tie_word_embeddings,
            max_position_embeddings=512,
        )
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if not tiny else torch.float32)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    free()
    return folder


def long_records(tokenizer, length: int, n: int, split: str) -> list:
    """n built-in records (labels in turn) whose prompts repeat until they fill `length` tokens."""
    from so8t.data import load_builtin
    from so8t.model.prompt import encode_prompt

    recs = load_builtin(split)
    by_label = [[r for r in recs if int(r.label) == k and isinstance(r.prompt, str)] for k in range(3)]
    out = []
    for i in range(n):
        r = by_label[i % 3][i // 3 % len(by_label[i % 3])]
        text = r.prompt
        while len(encode_prompt(tokenizer, [{"role": "user", "content": text}])) < length:
            text = f"{text}\n{r.prompt}"
        out.append(r.model_copy(update={"prompt": text, "id": f"gpu-check-{split}-{i}", "meta": None}))
    return out


class StepClock:
    """Wraps the recipe's optimizer so each optimizer step records its end time and the peak memory."""

    def __init__(self):
        self.stamps: list[float] = []
        self.peaks: list[int] = []

    def install(self, monkey_target) -> None:
        real = monkey_target.make_optimizer

        def make_optimizer(groups, cfg):
            opt = real(groups, cfg)
            step = opt.step

            def timed_step(_opt, *a, **k):
                out = step(*a, **k)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    self.peaks.append(torch.cuda.max_memory_allocated())
                self.stamps.append(time.perf_counter())
                return out

            opt.step = types.MethodType(timed_step, opt)  # a bound method, as the LR scheduler expects
            return opt

        monkey_target.make_optimizer = make_optimizer
        self._restore = (monkey_target, real)

    def uninstall(self) -> None:
        target, real = self._restore
        target.make_optimizer = real

    def seconds_per_step(self) -> float:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return statistics.median(gaps) if gaps else float("nan")


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def part_a(name: str, args, work: Path) -> dict:
    from so8t.data import write_jsonl
    from so8t.train import recipe
    from so8t.train.memory import estimate_memory, model_config_for

    ref = preset_config(name, {}).model
    overrides: dict = {"max_steps": args.steps, "epochs": 1.0}
    notes = []
    if args.tiny:
        overrides["max_length"] = args.tiny_length
    missing = have_4bit()
    if missing:
        if not args.tiny:
            raise RuntimeError(f"part a needs 4-bit NF4: {missing} (pip install bitsandbytes)")
        overrides.update(load_in_4bit=False, dtype="float32", optim="adamw", amp="none")
        notes.append(f"4-bit NF4 and paged 8-bit AdamW skipped ({missing}): float32 weights, AdamW")
    folder = shaped_model(ref, work / f"{name}-model", args.tiny)
    tok = tiny_tokenizer()
    cfg0 = preset_config(name, overrides)
    data = work / f"{name}-data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", long_records(tok, cfg0.max_length, 96, "train"))
    write_jsonl(data / "dev.jsonl", long_records(tok, cfg0.max_length, 6, "dev"))
    write_jsonl(data / "test.jsonl", long_records(tok, cfg0.max_length, 6, "test"))
    cfg = preset_config(
        name,
        {
            **overrides,
            "model": str(folder),
            "data": [str(data / "train.jsonl")],
            "dev_data": [str(data / "dev.jsonl")],
            "test_data": [str(data / "test.jsonl")],
            **args.overrides,
        },
    )
    shape = model_config_for(str(folder))
    estimate = estimate_memory(cfg, shape)
    row = {
        "part": "a",
        "preset": name,
        "shape_of": ref,
        "tiny": args.tiny,
        "notes": notes,
        "max_length": cfg.max_length,
        "micro_batch": cfg.micro_batch,
        "grad_accum": cfg.grad_accum,
        "load_in_4bit": cfg.load_in_4bit,
        "estimate_gib": round(estimate.total / GIB, 2),
    }
    clock = StepClock()
    clock.install(recipe)
    free()
    t0 = time.perf_counter()
    try:
        recipe.train(cfg, work / f"{name}-run", progress=False)
        row["status"] = "ok"
    except torch.OutOfMemoryError as exc:
        row["status"] = f"out of memory under the cap: {str(exc).splitlines()[0]}"
    finally:
        clock.uninstall()
    row["steps_done"] = len(clock.stamps)
    row["seconds_per_step"] = round(clock.seconds_per_step(), 3)
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    if torch.cuda.is_available():
        row["peak_train_gib"] = round(max(clock.peaks, default=0) / GIB, 2)
        row["peak_all_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 2)
    free()
    return row


def part_b(args, work: Path) -> dict:
    from so8t.train.recipe import train

    overrides: dict = {}
    if args.tiny:  # the recipe as it is, on a tiny model, with its sizes cut to seconds
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from gate_load import tiny_model

        overrides = {
            "model": str(tiny_model(work / "tiny-embedded")),
            "data": ["builtin"],
            "max_length": 64,
            "max_steps": 2,
            "eval_every": 2,
            "lora_layers": 2,
            "head_probe_steps": 10,
            "head_probe_examples": 64,
            "head_probe_batch": 32,
        }
    cfg = preset_config("cpu-quick", {**overrides, **args.overrides})
    free()
    result = train(cfg, work / "cpu-quick-run", progress=False)
    row = {
        "part": "b",
        "preset": "cpu-quick",
        "model": cfg.model,
        "tiny": args.tiny,
        "status": "ok",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "steps": result.steps,
        "wall_s": round(result.seconds, 1),
        "test": result.test.as_dict() if result.test else None,
    }
    if torch.cuda.is_available():
        row["peak_all_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
    free()
    return row


def report(rows: list[dict]) -> None:
    print()
    for r in rows:
        if r["part"] == "a" and "estimate_gib" in r:
            print(
                f"(a) {r['preset']}: random weights shaped like {r['shape_of']}{' (tiny)' if r['tiny'] else ''}, "
                f"4-bit NF4 {'on' if r['load_in_4bit'] else 'off'}, seq len {r['max_length']}, micro-batch "
                f"{r['micro_batch']} x accumulation {r['grad_accum']}"
            )
            for note in r["notes"]:
                print(f"    note: {note}")
            peaks = (
                f"peak during steps {r['peak_train_gib']} GiB, over the run {r['peak_all_gib']} GiB, reserved "
                f"{r['peak_reserved_gib']} GiB"
                if "peak_train_gib" in r
                else "peak GPU memory: n/a (no GPU)"
            )
            print(
                f"    dry-run estimate {r['estimate_gib']} GiB | {peaks} | {r['seconds_per_step']} s/step over "
                f"{r['steps_done']} steps | {r['wall_s']} s in all | {r['status']}"
            )
        elif r["part"] == "b" and "wall_s" in r:
            print(f"(b) cpu-quick on {r['model']} on {r.get('device', '?')}: {r['status']}")
            if r["status"] == "ok":
                t = r["test"] or {}
                kpis = " ".join(
                    f"{k}={t[k]:.3f}"
                    for k in ("refuse_recall", "escalate_recall", "overcompliance", "allow_recall", "safety_score")
                    if k in t
                )
                print(f"    wall time {r['wall_s']} s, {r['steps']} steps; test KPIs: {kpis}")


def main() -> int:
    from so8t.config import parse_overrides

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["rtx3060-3b"], choices=["rtx3060-3b", "rtx3060-7b"])
    ap.add_argument("--parts", nargs="+", default=["a", "b"], choices=["a", "b"])
    ap.add_argument("--steps", type=int, default=20, help="part a: optimizer steps per preset")
    ap.add_argument("--cap-gib", type=float, default=12.0, help="part a: the GPU's memory (CUDA context included)")
    ap.add_argument("--tiny", action="store_true", help="a tiny model of the same family (runs on a CPU)")
    ap.add_argument("--tiny-length", type=int, default=64, help="--tiny: sequence length of part a")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    args = ap.parse_args()
    args.overrides = parse_overrides(args.set)
    if not args.tiny and not torch.cuda.is_available():
        ap.error("no CUDA GPU here: the full-size check needs one; on a CPU run it with --tiny")

    print(
        f"torch {torch.__version__}, "
        f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}"
        f", bitsandbytes {'yes' if importlib.util.find_spec('bitsandbytes') else 'no'}",
        flush=True,
    )
    if torch.cuda.is_available():
        from so8t.train.memory import CUDA_CONTEXT_BYTES

        total = torch.cuda.get_device_properties(0).total_memory
        cap = args.cap_gib * GIB - CUDA_CONTEXT_BYTES
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
        print(
            f"allocator capped at {cap / GIB:.2f} GiB of {total / GIB:.1f} GiB ({args.cap_gib:g} GiB card "
            f"less {CUDA_CONTEXT_BYTES / GIB:g} GiB for the CUDA context)",
            flush=True,
        )
    rows: list[dict] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="so8t-gpu-check-") as tmp:
        jobs = [("a", p) for p in args.presets if "a" in args.parts] + ([("b", None)] if "b" in args.parts else [])
        for part, name in jobs:
            label = f"({part}) {name or 'cpu-quick'}"
            print(f"{label}: starting", flush=True)
            try:
                rows.append(part_a(name, args, Path(tmp)) if part == "a" else part_b(args, Path(tmp)))
                failed |= rows[-1]["status"] != "ok"
            except Exception as exc:  # noqa: BLE001 - one part failing must not hide the others' numbers
                traceback.print_exc()
                rows.append({"part": part, "preset": name or "cpu-quick", "status": f"failed: {exc}"})
                failed = True
                print(f"{label}: failed: {type(exc).__name__}: {exc}", flush=True)
            free()
    report(rows)
    for r in rows:
        if r["status"] != "ok":
            print(f"({r['part']}) {r['preset']}: {r['status']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
