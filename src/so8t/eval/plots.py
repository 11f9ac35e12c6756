"""Plots people would rather see than read: training curves (more in later reports)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402


def read_jsonl_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_training_curves(steps_file: Path, evals_file: Path, out_png: Path) -> Path:
    """Loss parts per step (left) and dev KPIs per evaluation (right)."""
    steps, evals = read_jsonl_rows(steps_file), read_jsonl_rows(evals_file)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    if steps:
        x = [r["step"] for r in steps]
        for key in ("total", "sft", "safety_ce", "dangerous_allow", "good_escalate", "pet"):
            if key in steps[0]:
                ax1.plot(x, [r[key] for r in steps], label=key, lw=1.2)
        ax1b = ax1.twinx()
        ax1b.plot(x, [r["lambda_pet"] for r in steps], "k:", lw=1, label="lambda_pet")
        ax1b.set_ylabel("lambda_pet")
        ax1b.set_ylim(0, 1.05)
    ax1.set_xlabel("optimizer step")
    ax1.set_title("loss parts")
    ax1.set_yscale("symlog", linthresh=1e-2)
    ax1.legend(fontsize=8, loc="upper right")
    if evals:
        x = [r["step"] for r in evals]
        for key, style in (("safety_score", "-o"), ("refuse_recall", "-s"), ("escalate_recall", "-^"),
                           ("overcompliance", "-x"), ("allow_recall", "-d")):
            ax2.plot(x, [r[key] for r in evals], style, label=key, ms=4)
        for y, c in ((0.7, "tab:orange"), (0.5, "tab:green"), (0.3, "tab:red")):
            ax2.axhline(y, color=c, lw=0.6, ls="--")
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("optimizer step")
    ax2.set_title("dev KPIs (dashed: seed targets)")
    ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
