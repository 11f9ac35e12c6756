"""`so8t eval`: one trained run, one or more datasets, every KPI with intervals, baselines
side by side, the LM's own tags, latency, plots, and a report that is written whole or not
at all.

No silent stretch: every phase a user waits on (loading, scoring the gate, each baseline, the LM
tag, generation, bootstrap, latency, plots) logs one line to stderr when it starts and one with
its elapsed time when it ends; with progress on and stderr a terminal, the model passes also get
a tqdm bar (prompts done of the total), as `so8t train` does. --no-progress keeps the lines only.

The report is built from four modules: datasets (the --data specs), systems (the gate and
everything it is compared with, behind one interface), this module (the orchestration: scoring,
metrics, plots, the atomic write) and render (report.md and the terminal table). The names other
code uses are importable from here as before.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from so8t.data import Record
from so8t.eval.contrast import CONTRAST_TARGETS, contrast_report, has_pairs
from so8t.eval.datasets import Dataset, load_dataset, rule_groups
from so8t.eval.latency import measure_latency
from so8t.eval.phases import Phases
from so8t.eval.plots import plot_confusion, plot_contrast, plot_kpis, plot_reliability, plot_training_curves
from so8t.eval.render import (
    HEADLINE,
    comparison_rows,
    exit_code_line,
    format_markdown,
    format_table,
    target_outcome,
    target_summary,
)
from so8t.eval.systems import BASELINES, Gate, System, baseline_systems, score, score_compared_runs, train_probe
from so8t.eval.taskhead import generate_responses, generation_summary
from so8t.labels import ACTIONS
from so8t.metrics import (
    DEFAULT_TARGETS,
    SafetyMetrics,
    binary_metrics,
    bootstrap_ci,
    breakdown,
    compute_metrics,
    expected_calibration_error,
    per_class_report,
    reliability_bins,
)
from so8t.model import LoadedRun, Run
from so8t.model.thresholds import Thresholds, decide

__all__ = [
    "BASELINES",
    "HEADLINE",
    "Dataset",
    "EvalOptions",
    "Phases",
    "calibrate_run",
    "comparison_rows",
    "evaluate_run",
    "exit_code_line",
    "format_markdown",
    "format_table",
    "load_dataset",
    "rule_groups",
    "target_outcome",
    "target_summary",
]


@dataclass
class EvalOptions:
    targets: dict = field(default_factory=lambda: dict(DEFAULT_TARGETS))
    baselines: Sequence[str] = BASELINES
    generate: int = 24  # examples with a response to generate for (0: skip)
    latency: int = 48  # prompts to time (0: skip)
    bootstrap: int = 1000
    probe_train_max: int = 1200  # class-balanced sample of the run's training split for the probe
    use_thresholds: bool = True
    compare: Sequence[str] = ()  # other trained runs to put beside this one, row by row
    progress: bool = True  # tqdm bars for the model passes (only when stderr is a terminal)


def _clean(x):
    """JSON-safe: nan -> null, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def evaluate_run(
    run_dir: str | Path,
    data: Sequence[str],
    out_dir: str | Path | None = None,
    opts: EvalOptions | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate a run and write report.json, report.md, predictions and plots into out_dir
    (default RUN/eval/<first dataset>). Returns the report dict; report['passed'] says whether
    every target was met on every labelled dataset."""
    opts = opts or EvalOptions()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    run_dir = Path(run_dir)
    datasets = _check_request(data, opts)  # every data problem before the model loads
    out_dir = Path(out_dir) if out_dir else run_dir / "eval" / datasets[0].name
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "report.json").is_file():
        raise FileExistsError(f"{out_dir} exists and is not an so8t eval report; choose another --out")

    phases = Phases(log, opts.progress)
    run = Run(run_dir)
    with phases.phase(f"loading run {run_dir}"):
        loaded = run.load()  # the run's own max_length and amp
        cfg = run.config()  # and its training data (the probe baseline)
    thresholds = run.thresholds() if opts.use_thresholds else None
    tmp = Path(tempfile.mkdtemp(prefix=".eval-", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        (tmp / "plots").mkdir()
        report = _report_header(run_dir, loaded.meta, thresholds, opts)
        compared = score_compared_runs(opts.compare, datasets, phases)
        probe = None
        if "probe" in opts.baselines and any(d.labelled for d in datasets):
            probe = train_probe(loaded, cfg, opts.probe_train_max, phases)
        for i, ds in enumerate(datasets, 1):
            log(f"dataset {i} of {len(datasets)}: {ds.name} ({len(ds.records)} prompts)")
            systems = baseline_systems(opts.baselines, loaded, probe) + list(compared.get(ds.name, []))
            report["datasets"].append(_evaluate_dataset(loaded, ds, thresholds, systems, opts, tmp, phases))
        if opts.latency:
            prompts = [r for ds in datasets for r in ds.records][: opts.latency]
            with phases.phase(f"timing the gate on {len(prompts)} prompts (batch 1, then throughput)"):
                report["latency"] = measure_latency(loaded, prompts)
        report["training_curves"] = _plot_training_curves(run_dir, tmp, phases)
        report = _finish(report, tmp)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report["out_dir"] = str(out_dir)
    return report


def _check_request(data: Sequence[str], opts: EvalOptions) -> list[Dataset]:
    """The datasets, read; unknown baselines or no data at all are errors first."""
    unknown = [b for b in opts.baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    if not data:
        raise ValueError("no datasets given (--data FILE... or builtin:test)")
    return [load_dataset(d) for d in data]


def _report_header(run_dir: Path, meta: dict, thresholds: Thresholds | None, opts: EvalOptions) -> dict:
    return {
        "run": str(run_dir),
        "base_model": meta.get("base_model"),
        "pooling": meta.get("pooling"),
        "head_kind": meta.get("head_kind", "three_way"),
        "thresholds": None if thresholds is None else thresholds.as_dict(),
        "targets": {k: list(v) for k, v in opts.targets.items()},
        "datasets": [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _plot_training_curves(run_dir: Path, tmp: Path, phases: Phases) -> str | None:
    """The run's loss and dev curves as plots/training_curves.png; None without its metrics."""
    steps, evals = run_dir / "metrics" / "steps.jsonl", run_dir / "metrics" / "evals.jsonl"
    if not (steps.is_file() and evals.is_file()):
        return None
    with phases.phase("plotting the training curves"):
        curves = plot_training_curves(
            steps, evals, tmp / "plots" / "training_curves.png", title=f"training curves: {run_dir.name}"
        )
    return "plots/training_curves.png" if curves else None


def _finish(report: dict, tmp: Path) -> dict:
    """The verdict on the targets added, then report.json and report.md written into tmp."""
    # a target the data cannot measure (None) is neither a pass nor a miss
    checked, missed = target_outcome(report)
    report["targets_checked"], report["targets_missed"] = checked, missed
    report["passed"] = not missed
    report = _clean(report)
    (tmp / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    (tmp / "report.md").write_text(format_markdown(report), encoding="utf-8")
    return report


def _replace_dir(tmp: Path, out: Path) -> None:
    """Swap the finished report in; an earlier report at `out` is replaced only now."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if out.exists():
        old = out.with_name(out.name + f".old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _evaluate_dataset(
    loaded: LoadedRun,
    ds: Dataset,
    thresholds: Thresholds | None,
    systems: Sequence[System],
    opts: EvalOptions,
    tmp: Path,
    phases: Phases,
) -> dict:
    """One dataset's section of the report: predictions always; with labels, the gate's KPIs with
    intervals, the breakdowns, every other system side by side, contrast pairs, generated
    responses and plots."""
    recs = ds.records
    probs = score(Gate(loaded, thresholds), ds.name, recs, phases)
    pred = decide(probs, thresholds)
    _write_predictions(tmp / f"predictions-{ds.name}.jsonl", recs, pred, probs)
    out: dict[str, Any] = {
        "name": ds.name,
        "n": len(recs),
        "labelled": ds.labelled,
        "predicted": {a: int((pred == i).sum()) for i, a in enumerate(ACTIONS)},
        "predictions": f"predictions-{ds.name}.jsonl",
        "targets_met": None,
    }
    if not ds.labelled:
        out["note"] = "no labels: predictions only, no metrics"
        return out
    y = np.array([int(r.required_label()) for r in recs])
    gate = compute_metrics(y, pred)
    out["targets_met"] = gate.targets_met(opts.targets)
    with phases.phase(f"{ds.name}: bootstrap intervals ({opts.bootstrap} resamples x {len(HEADLINE)} KPIs)"):
        out["gate"] = _gate_section(gate, y, pred, probs, opts.bootstrap)
    if thresholds is not None:
        out["gate_argmax"] = compute_metrics(y, decide(probs)).as_dict()
    rules = rule_groups(recs)
    out["breakdown"] = _gate_breakdown(recs, y, pred, rules)
    scored = {s.name: (score(s, ds.name, recs, phases), s.thresholds) for s in systems}
    system_preds = {name: decide(p, thr) for name, (p, thr) in scored.items()}
    out["systems"] = {name: _system_section(p, y, system_preds[name], recs, rules) for name, (p, _) in scored.items()}
    out["lm_tag_agrees_with_gate"] = float(np.mean(system_preds["lm_tag"] == pred))
    if has_pairs(recs):
        out["contrast"] = contrast_report(recs, pred)
        out["contrast_systems"] = {name: contrast_report(recs, p)["overall"] for name, p in system_preds.items()}
    generation = _generation(loaded, ds, y, pred, opts.generate, phases)
    if generation:
        out["generation"] = generation
    with phases.phase(f"{ds.name}: plots"):
        out["plots"] = _plot_dataset(ds.name, gate, out, opts.targets, tmp)
    return out


def _write_predictions(path: Path, recs: Sequence[Record], pred: np.ndarray, probs: np.ndarray) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r, p, pr in zip(recs, pred, probs, strict=True):
            row = {
                "id": r.id,
                "label": r.label.name if r.label is not None else None,
                "action": ACTIONS[int(p)],
                "probs": [round(float(v), 5) for v in pr],
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _gate_section(gate: SafetyMetrics, y: np.ndarray, pred: np.ndarray, probs: np.ndarray, bootstrap: int) -> dict:
    """The gate's KPIs, binary view, per-class report, bootstrap intervals and calibration."""
    return {
        "metrics": gate.as_dict(),
        "binary": binary_metrics(y, 1 - probs[:, 0]),
        "per_class": per_class_report(y, pred),
        "ci": {k: bootstrap_ci(y, pred, k, n=bootstrap) for k in HEADLINE},
        "ece": expected_calibration_error(probs, y),
        "reliability": reliability_bins(probs, y),
    }


def _gate_breakdown(recs: Sequence[Record], y: np.ndarray, pred: np.ndarray, rules: list[str] | None) -> dict:
    """The gate per difficulty, language and source (where the data has more than one) and per
    policy rule (a policy's cases: one row per rule, even when there is one rule)."""
    out = {}
    for attr in ("difficulty", "lang", "source"):
        groups = [getattr(r, attr) or "unknown" for r in recs]
        if len(set(groups)) > 1:
            out[attr] = {g: m.as_dict() for g, m in breakdown(y, pred, groups).items()}
    if rules:
        out["rule"] = {g: m.as_dict() for g, m in breakdown(y, pred, rules).items()}
    return out


def _system_section(
    probs: np.ndarray, y: np.ndarray, pred: np.ndarray, recs: Sequence[Record], rules: list[str] | None
) -> dict:
    """One compared system's KPIs and binary view, per source (when there are several: "did adding
    data X cost recall on set Y" is a per-set question) and per policy rule."""
    row: dict[str, Any] = {"metrics": compute_metrics(y, pred).as_dict(), "binary": binary_metrics(y, 1 - probs[:, 0])}
    sources = [r.source or "unknown" for r in recs]
    if len(set(sources)) > 1:
        row["by_source"] = {g: m.as_dict() for g, m in breakdown(y, pred, sources).items()}
    if rules:
        row["by_rule"] = {g: m.as_dict() for g, m in breakdown(y, pred, rules).items()}
    return row


def _generation(
    loaded: LoadedRun, ds: Dataset, y: np.ndarray, pred: np.ndarray, limit: int, phases: Phases
) -> dict | None:
    """Responses generated for up to `limit` records that have one: format compliance, tag
    agreement and five samples; None when no record has a response."""
    recs = ds.records
    with_resp = [i for i, r in enumerate(recs) if r.response is not None][:limit]
    if not with_resp:
        return None
    with phases.phase(f"{ds.name}: generating {len(with_resp)} responses", total=len(with_resp), batch_size=8) as tick:
        gen = generate_responses(loaded, [recs[i] for i in with_resp], between_batches=tick)
    out = generation_summary(gen, y[with_resp], pred[with_resp])
    by_lang: dict[str, list[int]] = {}
    for k, i in enumerate(with_resp):
        by_lang.setdefault(recs[i].lang or "?", []).append(k)
    rows = np.array(with_resp)
    out["by_lang"] = {
        lang: generation_summary([gen[k] for k in ks], y[rows[ks]], pred[rows[ks]])
        for lang, ks in sorted(by_lang.items())
    }
    out["samples"] = [
        {"id": recs[i].id, "label": ACTIONS[y[i]], "text": g.text[:400]}
        for i, g in zip(with_resp[:5], gen[:5], strict=False)
    ]
    return out


def _plot_dataset(name: str, gate: SafetyMetrics, out: dict, targets: dict, tmp: Path) -> list[str]:
    """Confusion, reliability and KPI plots (and contrast pairs, when there are any); their paths."""
    plots = tmp / "plots"
    plot_confusion(gate.confusion, plots / f"{name}-confusion.png", title=f"{name}: gate (rows: label)")
    plot_reliability(
        out["gate"]["reliability"],
        out["gate"]["ece"],
        plots / f"{name}-reliability.png",
        title=f"{name}: gate reliability",
    )
    plot_kpis(
        {k: getattr(gate, k) for k in HEADLINE},
        out["gate"]["ci"],
        targets,
        plots / f"{name}-kpis.png",
        title=f"{name}: gate KPIs (n={out['n']})",
    )
    paths = [f"plots/{name}-{k}.png" for k in ("confusion", "reliability", "kpis")]
    if "contrast" in out:
        plot_contrast(
            out["contrast"],
            {"gate": out["contrast"]["overall"], **out["contrast_systems"]},
            CONTRAST_TARGETS,
            plots / f"{name}-contrast.png",
            title=f"{name}: contrast pairs",
        )
        paths.append(f"plots/{name}-contrast.png")
    return paths


def calibrate_run(
    run_dir: str | Path,
    data: Sequence[str],
    *,
    objective: str = "safety_score",
    min_refuse_recall: float = 0.0,
    max_false_refusal: float | None = None,
    apply: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
):
    """Choose thresholds on labelled data (a dev set, never the test set) and plot the trade-off
    (RUN/calibration/calibration.png): refuse_at and allow_at, or for a split head refuse_at and
    escalate_at (the run's head.json says which). The choice is written to RUN/calibration/proposal.json;
    only apply=True also writes RUN/thresholds.json, which serve, chat, demo and eval then use.
    Returns (calibration, path written)."""
    from so8t.eval.plots import plot_tradeoff
    from so8t.model.thresholds import calibrate, false_refusal, save_thresholds

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    datasets = [load_dataset(d) for d in data]
    unlabelled = [d.name for d in datasets if not d.labelled]
    if unlabelled:
        raise ValueError(f"calibration needs labels; unlabelled: {', '.join(unlabelled)}")
    recs = [r for d in datasets for r in d.records]
    phases = Phases(log, progress)
    with phases.phase(f"loading run {run_dir}"):
        loaded = Run(run_dir).load()
    with phases.phase(f"scoring {len(recs)} prompts with the gate", total=len(recs)) as tick:
        probs = loaded.probs(recs, between_batches=tick)
    kind = loaded.model.head.kind
    with phases.phase(f"searching the threshold grid ({kind} head)"):
        cal = calibrate(
            probs,
            [int(r.required_label()) for r in recs],
            objective=objective,
            kind=kind,
            min_refuse_recall=min_refuse_recall,
            max_false_refusal=max_false_refusal,
        )
    cal.data = list(data)
    chosen = next(c for c in cal.curve if all(c[k] == v for k, v in cal.thresholds.as_dict().items()))
    plot_tradeoff(
        cal.curve,
        chosen,
        Path(run_dir) / "calibration" / "calibration.png",
        constraints={"min_refuse_recall": min_refuse_recall, "max_false_refusal": max_false_refusal},
        argmax={"false_refusal": false_refusal(cal.before), "refuse_recall": cal.before.refuse_recall},
        title=f"threshold trade-off on {', '.join(d.name for d in datasets)} (n={len(recs)})",
    )
    save_thresholds(run_dir, cal, proposal=True)
    written = save_thresholds(run_dir, cal) if apply else Path(run_dir) / "calibration" / "proposal.json"
    return cal, written
