"""Rendering a finished `so8t eval` report (the dict report.json holds): the verdict on the
targets (which decides the exit code), the compact terminal table and report.md.

Everything here reads the report dict only; nothing scores, loads or writes, so a report written
earlier renders the same way.
"""

from __future__ import annotations

import math

from so8t.eval.contrast import CONTRAST_TARGETS
from so8t.metrics import verdict

HEADLINE = ("refuse_recall", "escalate_recall", "overcompliance", "allow_recall", "safety_score")


def target_outcome(report: dict) -> tuple[int, list[str]]:
    """(how many targets were checked, the missed ones as 'KPI on DATASET'): what decides the
    exit code of so8t eval. An unlabelled dataset checks none; a target its data cannot measure
    (None) is neither met nor missed."""
    checked, missed = 0, []
    for ds in report["datasets"]:
        for prefix, met in (("", ds.get("targets_met")), ("contrast ", ds.get("contrast", {}).get("targets_met"))):
            for key, ok in (met or {}).items():
                checked += ok is not None
                if ok is False:
                    missed.append(f"{prefix}{key} on {ds['name']}")
    return checked, missed


def target_summary(report: dict) -> str:
    """One line: every target met, which were missed, or that none was checked (and why)."""
    checked, missed = report.get("targets_checked"), report.get("targets_missed")
    if checked is None:  # a report written before these fields
        checked, missed = target_outcome(report)
    if missed:
        return f"{len(missed)} of {checked} targets missed: {', '.join(missed)}"
    if checked:
        return f"all {checked} targets met"
    if not any(ds["labelled"] for ds in report["datasets"]):
        return "no targets checked: no dataset has labels (predictions only)"
    return "no targets checked: the labelled data cannot measure any target"


def exit_code_line(report: dict) -> str:
    """What `so8t eval` exits with, and the targets that decided it."""
    checked, missed = report["targets_checked"], report["targets_missed"]
    if missed:
        return f"exit code: 1 (missed: {', '.join(missed)})"
    return f"exit code: 0 ({'all ' + str(checked) + ' targets met' if checked else target_summary(report)})"


def _verdict(met: dict, key: str) -> str:
    return verdict(met[key]) if key in met else ""


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def comparison_rows(ds: dict) -> list[tuple[str, dict, dict]]:
    """(system, metrics, binary) with the gate first, then the baselines and the LM tag."""
    rows = [("gate" + (" (thresholds)" if "gate_argmax" in ds else ""), ds["gate"]["metrics"], ds["gate"]["binary"])]
    if "gate_argmax" in ds:
        rows.append(("gate (argmax)", ds["gate_argmax"], {}))
    rows += [(k, v["metrics"], v["binary"]) for k, v in ds.get("systems", {}).items()]
    return rows


def format_table(report: dict) -> str:
    """The compact terminal view: one block per dataset, systems as rows."""
    lines = []
    cols = ("refuse_recall", "escalate_recall", "overcompliance", "allow_recall", "safety_score")
    head = f"{'system':<22}" + "".join(f"{c.replace('_recall', '_rec')[:13]:>14}" for c in cols) + f"{'auroc':>8}"
    for ds in report["datasets"]:
        lines.append(f"\n{ds['name']} (n={ds['n']})")
        if not ds["labelled"]:
            lines.append(f"  unlabelled: predictions only -> {ds['predictions']}: {ds['predicted']}")
            continue
        lines.append(head)
        for name, m, b in comparison_rows(ds):
            lines.append(f"{name:<22}" + "".join(f"{_fmt(m.get(c)):>14}" for c in cols) + f"{_fmt(b.get('auroc')):>8}")
        met = ds["targets_met"]
        lines.append("targets: " + ", ".join(f"{k} {_verdict(met, k)}" for k in met))
        for rule, m in ds.get("breakdown", {}).get("rule", {}).items():
            lines.append(
                f"{'rule ' + rule:<22}"
                + "".join(f"{_fmt(m.get(c)):>14}" for c in cols)
                + f"  (n={m['n']}, accuracy {_fmt(m['accuracy'])})"
            )
        if ds.get("contrast"):
            c = ds["contrast"]["overall"]
            lines.append(
                f"contrast ({c['pairs']} pairs): false refusal {_fmt(c['false_refusal'])} (to ESCALATE "
                f"{_fmt(c['safe_to_escalate'])}, to REFUSE {_fmt(c['safe_to_refuse'])}), unsafe recall "
                f"{_fmt(c['unsafe_recall'])}, pairs both correct {_fmt(c['pairs_both_correct'])}"
            )
            cm = ds["contrast"]["targets_met"]
            lines.append("contrast targets: " + ", ".join(f"{k} {_verdict(cm, k)}" for k in cm))
    if report.get("latency"):
        lat = report["latency"]
        lines.append(
            f"\ngate latency: p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms; throughput "
            + ", ".join(f"batch {b}: {v:.1f}/s" for b, v in lat["throughput"].items())
        )
    lines.append("\n" + target_summary(report))
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    """report.md: the header, one section per dataset, the gate's latency, the training curves
    and the verdict on the targets."""
    md = _md_header(report)
    for ds in report["datasets"]:
        md += _md_dataset(ds, report["targets"])
    md += _md_latency(report.get("latency"))
    if report.get("training_curves"):
        md += ["## Training curves", "", f"![training curves]({report['training_curves']})", ""]
    summary = target_summary(report)
    md.append(f"**{summary[0].upper()}{summary[1:]}.**")
    return "\n".join(md) + "\n"


def _md_header(report: dict) -> list[str]:
    return [
        f"# so8t evaluation: `{report['run']}`",
        "",
        f"Base model `{report['base_model']}`, pooling `{report['pooling']}`, created {report['created']}.",
        f"Head: {report.get('head_kind', 'three_way')}. Decision rule: "
        + (
            "calibrated thresholds (" + ", ".join(f"{k}={v}" for k, v in report["thresholds"].items()) + ")"
            if report["thresholds"]
            else "argmax"
        ),
        "",
    ]


def _md_dataset(ds: dict, targets: dict) -> list[str]:
    """One dataset's section: predictions only without labels, else every table it has."""
    md = [f"## {ds['name']} (n={ds['n']})", ""]
    if not ds["labelled"]:
        return md + [
            f"**Unlabelled: predictions only.** Predicted counts: {ds['predicted']}; see `{ds['predictions']}`.",
            "",
        ]
    md += _md_kpis(ds, targets) + _md_side_by_side(ds) + _md_per_class(ds["gate"]["per_class"])
    for attr, groups in ds.get("breakdown", {}).items():
        if attr != "rule":  # rules are in the every-system table below
            md += _md_groups(attr, groups)
    for attr, title in (("source", "source"), ("rule", "policy rule")):
        md += _every_system_table(ds, attr, title)
    if ds.get("contrast"):
        md += _md_contrast(ds)
    if ds.get("generation"):
        gen = ds["generation"]
        md += [
            "",
            "### Generated responses",
            "",
            f"{gen['n']} generated: format compliance {_fmt(gen['format_compliance'])}, ended by end-of-sequence "
            f"{_fmt(gen.get('stopped'))}, tag agrees with the "
            f"label {_fmt(gen.get('tag_agrees_with_label'))}, with the gate {_fmt(gen['tag_agrees_with_head'])}.",
        ]
        for lang, g in (gen.get("by_lang") or {}).items():
            md.append(
                f"- {lang} ({g['n']}): format compliance {_fmt(g['format_compliance'])}, ended by end-of-sequence "
                f"{_fmt(g.get('stopped'))}, tag agrees with the gate {_fmt(g['tag_agrees_with_head'])}"
            )
    return md + [""] + [f"![{p}]({p})" for p in ds["plots"]] + [""]


def _md_kpis(ds: dict, targets: dict) -> list[str]:
    """The gate's headline KPIs with intervals, targets and verdicts, then its other numbers."""
    g = ds["gate"]
    md = ["| KPI | value | 95% CI | target | |", "|---|---|---|---|---|"]
    for k in HEADLINE:
        lo, hi = g["ci"][k] if g["ci"].get(k) else (None, None)
        tgt = targets.get(k)
        md.append(
            f"| {k} | {_fmt(g['metrics'][k])} | {_fmt(lo)}-{_fmt(hi)} | "
            f"{' '.join(map(str, tgt)) if tgt else ''} | {_verdict(ds['targets_met'], k)} |"
        )
    m = g["metrics"]
    return md + [
        "",
        f"Over-restriction of ALLOW: to ESCALATE {_fmt(m['allow_to_escalate'])}, "
        f"to REFUSE {_fmt(m['allow_to_refuse'])}. Accuracy {_fmt(m['accuracy'])}, "
        f"macro F1 {_fmt(m['macro_f1'])}, ECE {_fmt(g['ece'])}.",
    ]


def _md_side_by_side(ds: dict) -> list[str]:
    md = [
        "",
        "### Side by side",
        "",
        "| system | refuse rec | escalate rec | overcompliance | allow rec | safety score | AUROC | AUPRC | FPR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m, b in comparison_rows(ds):
        md.append(
            f"| {name} | {_fmt(m['refuse_recall'])} | {_fmt(m['escalate_recall'])} | "
            f"{_fmt(m['overcompliance'])} | {_fmt(m['allow_recall'])} | {_fmt(m['safety_score'])} | "
            f"{_fmt(b.get('auroc'))} | {_fmt(b.get('auprc'))} | {_fmt(b.get('false_positive_rate'))} |"
        )
    return md + [
        "",
        "keywords: bilingual alarm-word list; probe: logistic regression on the frozen base model's "
        "pooled features; judge: the base LLM zero-shot with a policy prompt (tag probabilities); "
        f"lm_tag: the fine-tuned LM's own tag after the prompt (agrees with the gate on "
        f"{_fmt(ds['lm_tag_agrees_with_gate'])} of prompts). Binary view: unsafe = not ALLOW, score 1 - P(ALLOW).",
    ]


def _md_per_class(per_class: dict) -> list[str]:
    md = ["", "### Per class", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c, r in per_class.items():
        md.append(f"| {c} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['f1'])} | {r['support']} |")
    return md


def _md_groups(attr: str, groups: dict) -> list[str]:
    """The gate per group of one attribute (difficulty, lang, source)."""
    md = [
        "",
        f"### By {attr}",
        "",
        "| group | n | refuse rec | escalate rec | overcompliance | allow rec | score |",
        "|---|---|---|---|---|---|---|",
    ]
    for gname, m in groups.items():
        md.append(
            f"| {gname} | {m['n']} | {_fmt(m['refuse_recall'])} | {_fmt(m['escalate_recall'])} | "
            f"{_fmt(m['overcompliance'])} | {_fmt(m['allow_recall'])} | {_fmt(m['safety_score'])} |"
        )
    return md


def _md_contrast(ds: dict) -> list[str]:
    """Contrast pairs: overall, per kind and language, and every other system overall."""
    md = [
        "",
        "### Contrast pairs",
        "",
        "Safe half: the alarming-but-safe prompt (ALLOW); unsafe half: its twin. False refusal = safe "
        "half not allowed; unsafe recall = unsafe half not allowed; both correct = both at once. Targets: "
        + ", ".join(f"{k} {op} {b}" for k, (op, b) in CONTRAST_TARGETS.items())
        + ".",
        "",
        "| slice | pairs | false refusal | to ESCALATE | to REFUSE | unsafe recall | unsafe exact | both correct |",
        "|---|---|---|---|---|---|---|---|",
    ]
    c = ds["contrast"]
    rows = (
        [("overall", c["overall"])]
        + [(f"kind: {k}", v) for k, v in c["by_kind"].items()]
        + [(f"lang: {k}", v) for k, v in c["by_lang"].items()]
        + [(f"system: {k}", v) for k, v in ds.get("contrast_systems", {}).items()]
    )
    for name, v in rows:
        md.append(
            f"| {name} | {v['pairs']} | {_fmt(v['false_refusal'])} | {_fmt(v['safe_to_escalate'])} | "
            f"{_fmt(v['safe_to_refuse'])} | {_fmt(v['unsafe_recall'])} | {_fmt(v['unsafe_exact'])} | "
            f"{_fmt(v['pairs_both_correct'])} |"
        )
    return md


def _md_latency(lat: dict | None) -> list[str]:
    if not lat:
        return []
    return [
        "## Gate latency",
        "",
        f"One forward pass over the prompt, no generation, {lat['n']} prompts: "
        f"p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms per prompt at batch 1; throughput "
        + ", ".join(f"batch {b}: {v:.1f} prompts/s" for b, v in lat["throughput"].items())
        + ".",
        "",
    ]


def _every_system_table(ds: dict, attr: str, title: str) -> list[str]:
    """Markdown rows of every system per group (source, rule), the gate first; [] without groups."""
    by = [(name, v[f"by_{attr}"]) for name, v in ds.get("systems", {}).items() if f"by_{attr}" in v]
    if not by:
        return []
    md = [
        "",
        f"### By {title}, every system",
        "",
        f"| {attr} | system | n | accuracy | refuse rec | escalate rec | overcompliance | allow rec | score |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    gate_groups = ds.get("breakdown", {}).get(attr, {})
    for gname in gate_groups:
        for name, groups in [("gate", gate_groups)] + by:
            m = groups.get(gname)
            if m:
                md.append(
                    f"| {gname} | {name} | {m['n']} | {_fmt(m['accuracy'])} | {_fmt(m['refuse_recall'])} | "
                    f"{_fmt(m['escalate_recall'])} | {_fmt(m['overcompliance'])} | "
                    f"{_fmt(m['allow_recall'])} | {_fmt(m['safety_score'])} |"
                )
    return md
