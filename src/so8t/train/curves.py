"""The training curves of a run (RUN/plots/training_curves.png): loss parts per step and dev
KPIs per evaluation, drawn by `so8t train` when a run finishes and again by `so8t eval`.

Guarantees: the plot is written for any logs it can be given (missing or empty files draw an
empty panel that says so, never raise); the loss axis is linear (the PET term can be
negative); lower-is-better KPIs are labelled so. `save_png` is the one figure writer every
so8t plot uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from so8t.metrics import LOWER_IS_BETTER  # noqa: E402


def read_jsonl_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_training_curves(
    steps_file: Path, evals_file: Path, out_png: Path, title: str = "training curves (dev KPIs on the run's dev split)"
) -> Path:
    """Loss parts per step (left, linear axis: the PET term can be negative) with lambda_pet on a
    right axis and in the legend; dev KPIs per evaluation (right) with the seed's targets dashed."""
    steps, evals = read_jsonl_rows(Path(steps_file)), read_jsonl_rows(Path(evals_file))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    handles = []
    if steps:
        x = [r["step"] for r in steps]
        for key in ("total", "sft", "safety_ce", "dangerous_allow", "good_escalate", "pet"):
            if key in steps[0]:
                handles += ax1.plot(x, [r.get(key, np.nan) for r in steps], label=key, lw=1.2)
        if "lambda_pet" in steps[0]:
            ax1b = ax1.twinx()
            handles += ax1b.plot(
                x, [r.get("lambda_pet", np.nan) for r in steps], "k:", lw=1.2, label="lambda_pet (right axis)"
            )
            ax1b.set_ylabel("lambda_pet (PET weight)")
            ax1b.set_ylim(bottom=0)
    else:
        ax1.text(0.5, 0.5, "no steps logged", ha="center", va="center", transform=ax1.transAxes)
    ax1.axhline(0, color="0.6", lw=0.6)
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("loss (per part)")
    ax1.set_title("loss parts")
    if handles:
        ax1.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    if evals:
        x = [r["step"] for r in evals]
        for key, style in (
            ("safety_score", "-o"),
            ("refuse_recall", "-s"),
            ("escalate_recall", "-^"),
            ("overcompliance", "--x"),
            ("allow_recall", "-d"),
        ):
            ax2.plot(
                x,
                [np.nan if r.get(key) is None else r[key] for r in evals],
                style,
                ms=4,
                label=key + (" (lower is better)" if key in LOWER_IS_BETTER else ""),
            )
        for y, c, what in (
            (0.7, "tab:orange", "refuse_recall >= 0.7"),
            (0.5, "tab:green", "escalate_recall >= 0.5"),
            (0.3, "tab:red", "overcompliance <= 0.3"),
        ):
            ax2.axhline(y, color=c, lw=0.7, ls=":", label=f"target {what}")
        ax2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax2.text(0.5, 0.5, "no dev evaluations logged", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("KPI on dev")
    ax2.set_title("dev KPIs (dotted: seed targets)")
    fig.suptitle(title, fontsize=11)
    return save_png(fig, out_png)


def save_png(fig, out_png: Path, tight: bool = True) -> Path:
    out_png = Path(out_png)
    if tight:
        fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out_png
