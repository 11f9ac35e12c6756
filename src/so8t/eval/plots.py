"""Plots people would rather see than read: training curves, confusion matrix, reliability
diagram, KPIs against their targets, the calibration trade-off and the contrast pairs."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from so8t.labels import ACTIONS  # noqa: E402


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


def _save(fig, out_png: Path) -> Path:
    out_png = Path(out_png)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_confusion(confusion, out_png: Path, title: str = "confusion (rows: label)") -> Path:
    """Counts in the cells, colours normalised per row (label).

    Why row-normalised: classes are imbalanced, so raw-count colours would hide that, say, half
    the REFUSE rows went to ALLOW; the colour shows the per-label rate, the text the evidence.
    """
    m = np.asarray(confusion, dtype=float)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{int(m[i, j])}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if norm[i, j] > 0.6 else "black")
    ticks = range(len(ACTIONS))
    ax.set_xticks(ticks, ACTIONS)
    ax.set_yticks(ticks, ACTIONS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of row")
    return _save(fig, out_png)


def plot_reliability(bins: list[dict], ece: float, out_png: Path) -> Path:
    """Reliability diagram from `reliability_bins`: accuracy per confidence bin against the
    diagonal (perfect calibration), bin counts below. Empty bins are left blank."""
    lo = np.array([b["lower"] for b in bins])
    width = np.array([b["upper"] for b in bins]) - lo
    acc = np.array([b["accuracy"] for b in bins], dtype=float)
    conf = np.array([b["confidence"] for b in bins], dtype=float)
    counts = np.array([b["count"] for b in bins])
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = counts > 0
    ax.bar(lo[filled], acc[filled], width=width[filled], align="edge", edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot(conf[filled], acc[filled], "o", color="tab:red", ms=4, label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE = {ece:.3f})")
    ax.legend(fontsize=8, loc="upper left")
    axc.bar(lo, counts, width=width, align="edge", edgecolor="k", color="tab:gray")
    axc.set_xlabel("confidence (top-label probability)")
    axc.set_ylabel("count")
    return _save(fig, out_png)


def plot_kpis(values: dict, cis: dict, targets: dict, out_png: Path) -> Path:
    """One bar per KPI with its bootstrap interval and, where it has one, its target.

    `cis` maps a KPI to (low, high); `targets` maps a KPI to (op, bound) as in DEFAULT_TARGETS
    or to a bare bound. A nan value is drawn as an empty bar marked n/a.
    Why: whether a target is met is only convincing when the interval clears it.
    """
    keys = list(values)
    x = np.arange(len(keys))
    vals = np.array([values[k] for k in keys], dtype=float)
    heights = np.nan_to_num(vals, nan=0.0)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(keys) + 1), 4))
    ax.bar(x, heights, color="tab:blue", alpha=0.75)
    for i, k in enumerate(keys):
        low, high = cis.get(k, (np.nan, np.nan))
        top = heights[i]
        if np.isfinite(vals[i]) and np.isfinite(low) and np.isfinite(high):
            ax.errorbar(i, vals[i], yerr=[[max(vals[i] - low, 0)], [max(high - vals[i], 0)]], fmt="none",
                        ecolor="k", capsize=4)
            top = max(top, high)
        ax.text(i, top + 0.02, "n/a" if np.isnan(vals[i]) else f"{vals[i]:.2f}", ha="center", fontsize=8)
        if k in targets:
            op, bound = targets[k] if isinstance(targets[k], tuple | list) else ("", targets[k])
            ax.hlines(bound, i - 0.4, i + 0.4, colors="tab:red", linestyles="--", lw=1.5)
            ax.text(i + 0.42, bound, f"{op}{bound}", color="tab:red", fontsize=7, va="center")
    ax.set_xticks(x, keys, rotation=20, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_title("KPIs (bars: value, whiskers: CI, dashed: target)")
    return _save(fig, out_png)


def plot_tradeoff(curve: list[dict], chosen: dict, out_png: Path) -> Path:
    """Calibration trade-off: every grid point as (false-refusal rate, refuse recall), the
    upper-left frontier drawn, the chosen thresholds marked.

    Why: a bound on false refusals costs refuse recall; the frontier shows how much."""
    fr = np.array([c["false_refusal"] for c in curve], dtype=float)
    rr = np.array([c["refuse_recall"] for c in curve], dtype=float)
    ok = ~(np.isnan(fr) | np.isnan(rr))
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    ax.scatter(fr[ok], rr[ok], s=8, color="tab:gray", alpha=0.5, label="grid points")
    order = np.argsort(fr[ok], kind="mergesort")
    xs, ys = fr[ok][order], np.maximum.accumulate(rr[ok][order])
    ax.step(xs, ys, where="post", color="tab:blue", label="best refuse recall at this false-refusal rate")
    ax.plot([chosen["false_refusal"]], [chosen["refuse_recall"]], "*", color="tab:red", ms=14,
            label=f"chosen (refuse_at={chosen['refuse_at']}, allow_at={chosen['allow_at']})")
    ax.set_xlabel("false-refusal rate (ALLOW not allowed)")
    ax.set_ylabel("refuse recall")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.05)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("threshold trade-off on the calibration data")
    return _save(fig, out_png)


def plot_contrast(report: dict, systems: dict[str, dict], targets: dict, out_png: Path) -> Path:
    """Contrast pairs: the gate per kind and language (left), every system overall (right).

    `report` is contrast_report's output for the gate; `systems` maps a system name to another
    report's "overall"; `targets` maps a measure to (op, bound) as in CONTRAST_TARGETS.
    Why: which kinds of alarming-but-safe prompt the gate refuses tells what data to write next.
    """
    measures = ("false_refusal", "unsafe_recall", "pairs_both_correct")
    colors = ("tab:red", "tab:blue", "tab:green")
    slices = [(f"{k}", v) for k, v in report["by_kind"].items()] + [(f"lang {k}", v) for k, v in report["by_lang"].items()]
    names = list(systems)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [max(len(slices), 1), max(len(names), 1) + 1]})
    for ax, rows, title in ((ax1, slices, "gate, per kind and language"),
                            (ax2, [(n, systems[n]) for n in names], "every system, all pairs")):
        x = np.arange(len(rows))
        for j, (m, c) in enumerate(zip(measures, colors, strict=True)):
            vals = np.nan_to_num(np.array([r[m] for _, r in rows], dtype=float), nan=0.0)
            ax.bar(x + (j - 1) * 0.27, vals, width=0.27, color=c, alpha=0.8, label=m.replace("_", " "))
        for m, c in zip(measures, colors, strict=True):
            if m in targets:
                ax.axhline(targets[m][1], color=c, lw=0.8, ls="--")
        ax.set_xticks(x, [n for n, _ in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
    ax1.legend(fontsize=7, loc="upper right")
    fig.suptitle("contrast pairs (dashed: targets)", fontsize=10)
    return _save(fig, out_png)
