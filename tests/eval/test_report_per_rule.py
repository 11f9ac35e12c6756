"""`so8t eval` per policy rule: cases written by `so8t policy cases` carry `meta.rule`, and the
report breaks every system down by it (gate, baselines, compared runs), on a tiny trained run."""

import json
from pathlib import Path

from so8t.cli import main
from so8t.data import read_jsonl
from so8t.data.policy import load_policy
from so8t.data.policy_cases import policy_cases, side_paths

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy-en.yaml"
RULES = {"PAY-SMALL", "PAY-LIMIT", "CUST-EXPORT", "CUST-AGGREGATE", "CAL-OWN", "CAL-OTHERS", "AUDIT-TAMPER"}
EASY = ["--target", "refuse_recall>=0", "--target", "escalate_recall>=0", "--target", "overcompliance<=1"]


def _eval(run, data, out, *args):
    return main(
        [
            "eval",
            str(run),
            "--data",
            str(data),
            "--out",
            str(out),
            "--no-baselines",
            "--generate",
            "0",
            "--latency",
            "0",
            "--bootstrap",
            "20",
            "--no-progress",
            *EASY,
            *args,
        ]
    )


def test_eval_reports_per_rule_beside_a_compared_run(tiny_run, run_with_thresholds, tmp_path, capsys):
    cases = tmp_path / "cases.jsonl"
    policy_cases(EXAMPLE, cases, test_fraction=0, progress=False)
    run, _ = tiny_run
    other = run_with_thresholds(0.0, 0.5)  # refuses everything: right on the REFUSE rules only
    assert _eval(run, cases, tmp_path / "r", "--compare", str(other)) == 0
    printed = capsys.readouterr().out
    assert "rule PAY-LIMIT" in printed and "rule AUDIT-TAMPER" in printed
    ds = json.loads((tmp_path / "r" / "report.json").read_text())["datasets"][0]
    gate = ds["breakdown"]["rule"]
    per_rule = {r.id: len(r.precedents) for r in load_policy(EXAMPLE).rules}  # every precedent is a case
    assert set(gate) == RULES and {r: m["n"] for r, m in gate.items()} == per_rule
    refuses = ds["systems"][f"run:{other.name}"]["by_rule"]
    assert set(refuses) == RULES and set(ds["systems"]["lm_tag"]["by_rule"]) == RULES
    assert {r: m["accuracy"] for r, m in refuses.items()} == {
        r: 1.0 if r in ("CUST-EXPORT", "AUDIT-TAMPER") else 0.0 for r in RULES
    }
    md = (tmp_path / "r" / "report.md").read_text()
    assert "### By policy rule, every system" in md
    assert f"| CUST-EXPORT | run:{other.name} | {per_rule['CUST-EXPORT']} | 1.000 |" in md
    assert f"| PAY-LIMIT | gate | {per_rule['PAY-LIMIT']} |" in md


def test_data_without_rule_ids_gets_no_rule_table(tiny_run, tmp_path):
    run, d = tiny_run
    _eval(run, d / "dev.jsonl", tmp_path / "r")
    ds = json.loads((tmp_path / "r" / "report.json").read_text())["datasets"][0]
    assert "rule" not in ds["breakdown"] and "by_rule" not in ds["systems"]["lm_tag"]
    assert "policy rule" not in (tmp_path / "r" / "report.md").read_text()


def test_a_gate_trained_on_builtin_contrast_and_the_cases_is_evaluated_per_rule(tiny_model_dir, tmp_path):
    """The README's flow on the tiny model: policy cases, so8t train --data builtin contrast CASES.jsonl,
    then so8t eval on the held-out cases."""
    from so8t.config import TrainConfig
    from so8t.train.recipe import train

    cases = tmp_path / "cases.jsonl"
    policy_cases(EXAMPLE, cases, test_fraction=0.4, progress=False)
    test = side_paths(cases)[0]
    cfg = TrainConfig(
        model=str(tiny_model_dir),
        data=["builtin", "contrast", str(cases)],
        lora_r=4,
        lora_alpha=8,
        max_length=64,
        micro_batch=4,
        grad_accum=1,
        max_steps=2,
        eval_every=2,
        head_probe_steps=20,
    )
    cfg.validate()
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    assert _eval(run, test, tmp_path / "r") == 0
    ds = json.loads((tmp_path / "r" / "report.json").read_text())["datasets"][0]
    held_out = {r.meta["rule"] for r in read_jsonl(test)}
    assert set(ds["breakdown"]["rule"]) == held_out and len(held_out) >= 3
