"""Plots people would rather see than read: training curves (so8t.train.curves), confusion matrix, reliability
diagram, KPIs against their targets, the calibration trade-off and the contrast pairs.

Guarantees: every plot names its data in the title (the `title` argument; callers pass the
dataset name); every function writes a PNG for any input it can be given, including an empty
class, all-NaN values and empty bins, without raising; lower-is-better KPIs are never drawn on
the same axis as higher-is-better ones; no log axis carries values that can be negative.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from so8t.labels import ACTIONS  # noqa: E402
from so8t.metrics import LOWER_IS_BETTER  # noqa: E402

# the training curves are drawn by training itself; re-exported here with the figure writer
from so8t.train.curves import (  # noqa: E402
    plot_training_curves,
    read_jsonl_rows,
    save_png as _save,  # noqa: E402
)

__all__ = [
    "LOWER_IS_BETTER",
    "plot_confusion",
    "plot_contrast",
    "plot_kpis",
    "plot_reliability",
    "plot_tradeoff",
    "plot_training_curves",
    "read_jsonl_rows",
]


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
            ax.text(
                j,
                i,
                f"{int(m[i, j])}\n{norm[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if norm[i, j] > 0.6 else "black",
            )
    ticks = range(len(ACTIONS))
    ax.set_xticks(ticks, ACTIONS)
    ax.set_yticks(ticks, ACTIONS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of row")
    return _save(fig, out_png)


def plot_reliability(bins: list[dict], ece: float, out_png: Path, title: str = "gate reliability") -> Path:
    """Reliability diagram from `reliability_bins`: accuracy per confidence bin as bars against
    the diagonal (perfect calibration), the gap between each bin's mean confidence and its
    accuracy shaded (red: overconfident, orange: underconfident), bin counts below. Empty bins are
    left blank."""
    lo = np.array([b["lower"] for b in bins], dtype=float)
    width = np.array([b["upper"] for b in bins], dtype=float) - lo
    acc = np.array([np.nan if b.get("accuracy") is None else b["accuracy"] for b in bins], dtype=float)
    conf = np.array([np.nan if b.get("confidence") is None else b["confidence"] for b in bins], dtype=float)
    counts = np.array([b.get("count") or 0 for b in bins])
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5.4, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = (counts > 0) & np.isfinite(acc) & np.isfinite(conf)
    ax.bar(
        lo[filled],
        acc[filled],
        width=width[filled],
        align="edge",
        edgecolor="k",
        color="lightsteelblue",
        label="accuracy in the bin",
    )
    over_done = under_done = False
    for i in np.flatnonzero(filled):
        over = conf[i] > acc[i]
        label = None
        if over and not over_done:
            label, over_done = "gap: confidence above accuracy", True
        elif not over and not under_done:
            label, under_done = "gap: accuracy above confidence", True
        ax.bar(
            lo[i],
            conf[i] - acc[i],
            bottom=acc[i],
            width=width[i],
            align="edge",
            color="tab:red" if over else "tab:orange",
            alpha=0.55,
            hatch="//",
            edgecolor="k",
            lw=0.5,
            label=label,
        )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ece_txt = "n/a" if ece is None or not np.isfinite(ece) else f"{ece:.3f}"
    ax.set_title(f"{title} (ECE = {ece_txt})")
    if not filled.any():
        ax.text(0.5, 0.5, "no predictions", ha="center", va="center", transform=ax.transAxes)
    ax.legend(fontsize=7, loc="upper left")
    axc.bar(lo, counts, width=width, align="edge", edgecolor="k", color="tab:gray")
    axc.set_xlabel("confidence (top-label probability)")
    axc.set_ylabel("prompts")
    return _save(fig, out_png)


def plot_kpis(values: dict, cis: dict, targets: dict, out_png: Path, title: str = "gate KPIs") -> Path:
    """KPIs in two panels, higher-is-better left and lower-is-better right, each bar with its
    bootstrap interval and, where it has one, its target as a dashed line with the label in the
    legend (so no label sits on a bar). `cis` maps a KPI to (low, high); `targets` maps a KPI to
    (op, bound) as in DEFAULT_TARGETS or to a bare bound. A nan value is an empty bar marked n/a.
    Why: whether a target is met is only convincing when the interval clears it."""
    groups = [
        ("higher is better", [k for k in values if k not in LOWER_IS_BETTER], "tab:blue"),
        ("lower is better", [k for k in values if k in LOWER_IS_BETTER], "tab:orange"),
    ]
    groups = [g for g in groups if g[1]] or [("higher is better", [], "tab:blue")]
    fig, axes = plt.subplots(
        1,
        len(groups),
        figsize=(2.0 + 1.3 * max(len(values), 1), 4.4),
        squeeze=False,
        gridspec_kw={"width_ratios": [max(len(g[1]), 1) for g in groups]},
    )
    for ax, (name, keys, color) in zip(axes[0], groups, strict=True):
        x = np.arange(len(keys))
        vals = np.array([values[k] if values[k] is not None else np.nan for k in keys], dtype=float)
        heights = np.nan_to_num(vals, nan=0.0)
        ax.bar(x, heights, color=color, alpha=0.75, width=0.6)
        for i, k in enumerate(keys):
            low, high = cis.get(k) or (np.nan, np.nan)
            low, high = (np.nan if low is None else low), (np.nan if high is None else high)
            top = heights[i]
            if np.isfinite(vals[i]) and np.isfinite(low) and np.isfinite(high):
                ax.errorbar(
                    i,
                    vals[i],
                    yerr=[[max(vals[i] - low, 0)], [max(high - vals[i], 0)]],
                    fmt="none",
                    ecolor="k",
                    capsize=4,
                )
                top = max(top, high)
            ax.text(i, top + 0.02, "n/a" if np.isnan(vals[i]) else f"{vals[i]:.2f}", ha="center", fontsize=8)
            if k in targets:
                op, bound = targets[k] if isinstance(targets[k], tuple | list) else ("", targets[k])
                ax.hlines(
                    bound,
                    i - 0.42,
                    i + 0.42,
                    colors="tab:red",
                    linestyles="--",
                    lw=1.5,
                    label=f"target {k} {op} {bound}".replace("  ", " "),
                )
        ax.set_xticks(x, keys, rotation=20, ha="right")
        ax.set_xlim(-0.6, max(len(keys), 1) - 0.4)
        ax.set_ylim(0, 1.12)
        ax.set_title(name, fontsize=9)
        if any(k in targets for k in keys):
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.32), frameon=False)
    axes[0][0].set_ylabel("value (whiskers: 95% CI)")
    fig.suptitle(title, fontsize=11)
    return _save(fig, out_png)


THRESHOLD_KEYS = ("refuse_at", "allow_at", "escalate_at")


def plot_tradeoff(
    curve: list[dict],
    chosen: dict,
    out_png: Path,
    *,
    constraints: dict | None = None,
    argmax: dict | None = None,
    title: str = "threshold trade-off on the calibration data",
) -> Path:
    """Calibration trade-off: every grid point as (false-refusal rate, refuse recall), the
    upper-left frontier drawn, the constraints as lines with the region that breaks them shaded,
    the argmax operating point (`argmax`: its false_refusal and refuse_recall) and the chosen
    thresholds marked.

    Why: a bound on false refusals costs refuse recall; the frontier shows how much."""
    fr = np.array([np.nan if c.get("false_refusal") is None else c["false_refusal"] for c in curve], dtype=float)
    rr = np.array([np.nan if c.get("refuse_recall") is None else c["refuse_recall"] for c in curve], dtype=float)
    ok = ~(np.isnan(fr) | np.isnan(rr))
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.scatter(fr[ok], rr[ok], s=8, color="tab:gray", alpha=0.5, label="grid points")
    if ok.any():
        order = np.argsort(fr[ok], kind="mergesort")
        xs, ys = fr[ok][order], np.maximum.accumulate(rr[ok][order])
        ax.step(xs, ys, where="post", color="tab:blue", label="best refuse recall at this false-refusal rate")
    constraints = constraints or {}
    mrr, mfr = constraints.get("min_refuse_recall"), constraints.get("max_false_refusal")
    if mrr:
        ax.axhspan(-0.02, mrr, color="tab:red", alpha=0.07)
        ax.axhline(mrr, color="tab:red", ls="--", lw=1, label=f"constraint: refuse recall >= {mrr}")
    if mfr is not None:
        ax.axvspan(mfr, 1.02, color="tab:purple", alpha=0.07)
        ax.axvline(mfr, color="tab:purple", ls="--", lw=1, label=f"constraint: false refusal <= {mfr}")
    if argmax and argmax.get("false_refusal") is not None and argmax.get("refuse_recall") is not None:
        ax.plot(
            [argmax["false_refusal"]],
            [argmax["refuse_recall"]],
            "D",
            color="k",
            ms=8,
            mfc="none",
            mew=1.5,
            label="argmax (no thresholds)",
        )
    if chosen and chosen.get("false_refusal") is not None and chosen.get("refuse_recall") is not None:
        ax.plot(
            [chosen["false_refusal"]],
            [chosen["refuse_recall"]],
            "*",
            color="tab:red",
            ms=14,
            label="chosen (" + ", ".join(f"{k}={chosen[k]}" for k in THRESHOLD_KEYS if k in chosen) + ")",
        )
    ax.set_xlabel("false-refusal rate (ALLOW prompts not allowed; lower is better)")
    ax.set_ylabel("refuse recall (higher is better)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.05)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    ax.set_title(title, fontsize=10)
    return _save(fig, out_png)


def plot_contrast(
    report: dict, systems: dict[str, dict], targets: dict, out_png: Path, title: str = "contrast pairs"
) -> Path:
    """Contrast pairs in three panels: the gate per kind, the gate per language, every system on
    all pairs; grouped bars per measure, targets dashed, one shared legend below the panels so
    it covers no bar.

    `report` is contrast_report's output for the gate; `systems` maps a system name to another
    report's "overall"; `targets` maps a measure to (op, bound) as in CONTRAST_TARGETS.
    Why: which kinds of alarming-but-safe prompt the gate refuses tells what data to write next."""
    measures = ("false_refusal", "unsafe_recall", "pairs_both_correct")
    colors = ("tab:red", "tab:blue", "tab:green")
    panels = [
        ("gate, per kind", list(report.get("by_kind", {}).items())),
        ("gate, per language", list(report.get("by_lang", {}).items())),
        ("every system, all pairs", list(systems.items())),
    ]
    fig, axes = plt.subplots(
        1, 3, figsize=(14, 5.2), gridspec_kw={"width_ratios": [max(len(rows), 1) + 0.5 for _, rows in panels]}
    )
    for ax, (name, rows) in zip(axes, panels, strict=True):
        x = np.arange(len(rows))
        for j, (m, c) in enumerate(zip(measures, colors, strict=True)):
            vals = np.array([np.nan if r.get(m) is None else r[m] for _, r in rows], dtype=float)
            ax.bar(
                x + (j - 1) * 0.27,
                np.nan_to_num(vals, nan=0.0),
                width=0.27,
                color=c,
                alpha=0.8,
                label=m.replace("_", " ") + (" (lower is better)" if m in LOWER_IS_BETTER else ""),
            )
            for i in np.flatnonzero(np.isnan(vals)):  # no bar: say so where it would stand, over any target line
                ax.text(
                    x[i] + (j - 1) * 0.27,
                    0.015,
                    "n/a",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    color=c,
                    fontweight="bold",
                    zorder=5,
                    bbox={"facecolor": "white", "edgecolor": c, "pad": 1.5, "lw": 0.6},
                )
        for m, c in zip(measures, colors, strict=True):
            if m in targets:
                ax.axhline(
                    targets[m][1],
                    color=c,
                    lw=0.8,
                    ls="--",
                    label=f"target {m.replace('_', ' ')} {targets[m][0]} {targets[m][1]}",
                )
        ax.set_xticks(x, [f"{n}\n({r.get('pairs', '?')} pairs)" for n, r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, max(len(rows), 1) - 0.4)
        ax.set_ylim(0, 1.05)
        ax.set_title(name, fontsize=9)
        if not rows:
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    axes[0].set_ylabel("share of pairs / halves")
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _save(fig, out_png, tight=False)
