"""`so8t eval` and `so8t calibrate` end to end on a tiny trained run."""

import json

import pytest

from so8t.cli import main


def _eval(run, *args):
    return main(["eval", str(run), "--generate", "2", "--latency", "4", "--bootstrap", "50", *args])


EASY = ["--target", "refuse_recall>=0", "--target", "escalate_recall>=0", "--target", "overcompliance<=1"]


def test_eval_writes_a_complete_report_with_baselines_side_by_side(tiny_run, tmp_path, capsys):
    run, d = tiny_run
    out = tmp_path / "report"
    assert _eval(run, "--data", str(d / "dev.jsonl"), "--out", str(out), *EASY) == 0
    printed = capsys.readouterr().out
    for row in ("gate", "keywords", "probe", "judge", "lm_tag", "gate latency"):
        assert row in printed
    rep = json.loads((out / "report.json").read_text())
    ds = rep["datasets"][0]
    assert ds["n"] == 12 and ds["labelled"] and rep["passed"]
    assert set(ds["systems"]) == {"keywords", "probe", "judge", "lm_tag"}
    m = ds["gate"]["metrics"]
    assert sum(map(sum, m["confusion"])) == 12
    lo, hi = ds["gate"]["ci"]["safety_score"]
    assert lo <= m["safety_score"] <= hi
    assert {"lang", "difficulty"} <= set(ds["breakdown"]) and "source" not in ds["breakdown"]  # one source only
    assert ds["generation"]["n"] == 2 and 0 <= ds["generation"]["format_compliance"] <= 1
    by_lang = ds["generation"]["by_lang"]  # every generated answer in exactly one language's count
    assert sum(g["n"] for g in by_lang.values()) == 2 and all(0 <= g["stopped"] <= 1 for g in by_lang.values())
    assert rep["latency"]["p50_ms"] > 0 and set(rep["latency"]["throughput"]) == {"1", "16"}
    for p in ds["plots"] + [rep["training_curves"]]:
        assert (out / p).stat().st_size > 1000
    preds = (out / ds["predictions"]).read_text().splitlines()
    assert len(preds) == 12 and json.loads(preds[0])["action"] in ("ALLOW", "ESCALATE", "REFUSE")
    md = (out / "report.md").read_text()
    assert "| keywords |" in md and "95% CI" in md


def test_eval_exit_code_follows_the_targets(tiny_run, tmp_path):
    run, d = tiny_run
    code = _eval(
        run,
        "--data",
        str(d / "dev.jsonl"),
        "--out",
        str(tmp_path / "r"),
        "--no-baselines",
        "--target",
        "refuse_recall>=1.01",
    )
    assert code == 1
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["datasets"][0]["targets_met"]["refuse_recall"] is False and not rep["passed"]


def test_unlabelled_data_gets_predictions_only(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    f = tmp_path / "unlabelled.jsonl"
    f.write_text('{"prompt": "Delete every table in prod"}\n{"prompt": "会議の議事録を要約して"}\n', encoding="utf-8")
    assert _eval(run, "--data", str(f), "--out", str(tmp_path / "r"), "--no-baselines") == 0
    assert "predictions only" in capsys.readouterr().out
    ds = json.loads((tmp_path / "r" / "report.json").read_text())["datasets"][0]
    assert not ds["labelled"] and ds["targets_met"] is None and sum(ds["predicted"].values()) == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a", "label": "ALLOW"}\n{"prompt": "b"}\n', "1 of 2 rows have no label"),
        ('{"prompt": "a", "label": "MAYBE"}\n', ":1: label:"),
        ("", "no records"),
    ],
)
def test_bad_data_is_a_clear_error_and_writes_nothing(tiny_run, tmp_path, capsys, content, message):
    run, _ = tiny_run
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    assert _eval(run, "--data", str(f), "--out", str(tmp_path / "r")) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_run_on_another_base_model_is_refused(tiny_run, tmp_path, capsys):
    import shutil

    run, d = tiny_run
    other = tmp_path / "other"
    shutil.copytree(run, other)
    head = json.loads((other / "head.json").read_text())
    head["base_fingerprint"] = "0" * 16
    (other / "head.json").write_text(json.dumps(head))
    assert _eval(other, "--data", str(d / "dev.jsonl")) == 2
    assert "different base model" in capsys.readouterr().err
    assert not (other / "eval").exists()


def test_calibrate_stores_thresholds_that_eval_then_uses(tiny_run, tmp_path, capsys):
    import shutil

    run, d = tiny_run
    cal_run = tmp_path / "cal"
    shutil.copytree(run, cal_run)
    assert (
        main(["calibrate", str(cal_run), "--data", str(d / "dev.jsonl"), "--min-refuse-recall", "1.0", "--apply"]) == 0
    )
    out = capsys.readouterr().out
    assert "argmax" in out and "thresholds" in out and "refuse_at=" in out and "applied: wrote" in out
    saved = json.loads((cal_run / "thresholds.json").read_text())
    assert saved["after"]["refuse_recall"] == 1.0
    assert (cal_run / "calibration" / "calibration.png").stat().st_size > 1000
    assert _eval(cal_run, "--data", str(d / "dev.jsonl"), "--out", str(tmp_path / "r"), "--no-baselines", *EASY) == 0
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["thresholds"] == saved["thresholds"]
    ds = rep["datasets"][0]
    assert ds["gate"]["metrics"]["refuse_recall"] == 1.0 and "gate_argmax" in ds
    assert "gate (thresholds)" in capsys.readouterr().out
    # --argmax ignores them
    assert (
        _eval(
            cal_run, "--data", str(d / "dev.jsonl"), "--out", str(tmp_path / "r2"), "--no-baselines", "--argmax", *EASY
        )
        == 0
    )
    assert json.loads((tmp_path / "r2" / "report.json").read_text())["thresholds"] is None


def test_calibrate_with_unreachable_constraints_fails_clearly_and_keeps_no_file(tiny_run, tmp_path, capsys):
    import shutil

    run, d = tiny_run
    cal_run = tmp_path / "cal"
    shutil.copytree(run, cal_run)
    code = main(
        [
            "calibrate",
            str(cal_run),
            "--data",
            str(d / "dev.jsonl"),
            "--min-refuse-recall",
            "1.0",
            "--max-false-refusal",
            "-1",
        ]
    )
    assert code == 2 and "no thresholds meet" in capsys.readouterr().err
    assert not (cal_run / "thresholds.json").exists()


def test_contrast_pairs_get_their_own_report(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    code = _eval(run, "--data", "contrast:dev", "--out", str(tmp_path / "r"), "--baselines", "keywords")
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    ds = rep["datasets"][0]
    assert ds["name"] == "contrast-dev" and ds["contrast"]["overall"]["pairs"] == 72
    assert set(ds["contrast"]["by_lang"]) == {"en", "ja"} and "agent_work" in ds["contrast"]["by_kind"]
    assert "keywords" in ds["contrast_systems"] and "contrast (72 pairs)" in out
    assert "### Contrast pairs" in (tmp_path / "r" / "report.md").read_text()
    assert (
        "plots/contrast-dev-contrast.png" in ds["plots"]
        and (tmp_path / "r" / "plots" / "contrast-dev-contrast.png").is_file()
    )
    assert code == (0 if rep["passed"] else 1)


def test_other_runs_are_measured_side_by_side(tiny_run, run_with_thresholds, tmp_path):
    run, d = tiny_run
    other = run_with_thresholds(0.0, 0.5)  # the same weights, thresholds that refuse everything
    code = _eval(
        run,
        "--data",
        str(d / "dev.jsonl"),
        "--out",
        str(tmp_path / "r"),
        "--no-baselines",
        "--compare",
        str(other),
        *EASY,
    )
    ds = json.loads((tmp_path / "r" / "report.json").read_text())["datasets"][0]
    row = ds["systems"][f"run:{other.name}"]["metrics"]
    assert code == 0 and row["refuse_recall"] == 1.0 and row["allow_recall"] == 0.0
    assert f"| run:{other.name} |" in (tmp_path / "r" / "report.md").read_text()


def test_compared_runs_are_broken_down_by_source(tiny_run, run_with_thresholds, tmp_path):
    from so8t.data import read_jsonl, write_jsonl

    run, d = tiny_run
    other = run_with_thresholds(0.0, 0.5)  # refuses everything: refuse recall 1 and allow recall 0 in every source
    recs = read_jsonl(d / "dev.jsonl")
    mixed = [r.model_copy(update={"source": "set-a" if i % 2 else "set-b"}) for i, r in enumerate(recs)]
    write_jsonl(tmp_path / "mixed.jsonl", mixed)
    _eval(
        run,
        "--data",
        str(tmp_path / "mixed.jsonl"),
        "--out",
        str(tmp_path / "r"),
        "--no-baselines",
        "--compare",
        str(other),
        *EASY,
    )
    ds = json.loads((tmp_path / "r" / "report.json").read_text())["datasets"][0]
    by = ds["systems"][f"run:{other.name}"]["by_source"]
    assert set(by) == {"set-a", "set-b"} and sum(m["n"] for m in by.values()) == len(recs)
    assert all(m["allow_recall"] == 0.0 for m in by.values())
    md = (tmp_path / "r" / "report.md").read_text()
    assert "### By source, every system" in md and f"| set-a | run:{other.name} |" in md and "| set-b | gate |" in md


# --- issue 17, item 6: which targets decide the exit code


def test_the_exit_code_line_names_the_missed_target_and_its_dataset(tiny_run, tmp_path, capsys):
    run, d = tiny_run
    code = _eval(
        run,
        "--data",
        str(d / "dev.jsonl"),
        "--out",
        str(tmp_path / "r"),
        "--no-baselines",
        *EASY,
        "--target",
        "refuse_recall>=1.01",
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 1 and out[-1] == "exit code: 1 (missed: refuse_recall on dev)"
    assert any(line.endswith("targets missed: refuse_recall on dev") for line in out)
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["targets_missed"] == ["refuse_recall on dev"] and rep["targets_checked"] == 3  # EASY + the one missed


def test_met_targets_say_how_many_were_checked(tiny_run, tmp_path, capsys):
    run, d = tiny_run
    assert (
        _eval(
            run,
            "--data",
            str(d / "dev.jsonl"),
            "--out",
            str(tmp_path / "r"),
            "--no-baselines",
            "--target",
            "refuse_recall>=0",
            "--target",
            "escalate_recall>=0",
            "--target",
            "overcompliance<=1",
            "--target",
            "allow_recall>=0",
            "--target",
            "safety_score>=0",
        )
        == 0
    )
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    n = rep["targets_checked"]
    assert capsys.readouterr().out.splitlines()[-1] == f"exit code: 0 (all {n} targets met)" and n >= 5


def test_an_unlabelled_file_does_not_claim_that_targets_were_met(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    f = tmp_path / "unlabelled.jsonl"
    f.write_text('{"prompt": "Delete every table in prod"}\n', encoding="utf-8")
    assert _eval(run, "--data", str(f), "--out", str(tmp_path / "r"), "--no-baselines") == 0
    out = capsys.readouterr().out
    assert "all targets met" not in out  # was printed though no label was read
    assert "no targets checked: no dataset has labels (predictions only)" in out
    assert out.splitlines()[-1] == "exit code: 0 (no targets checked: no dataset has labels (predictions only))"
    md = (tmp_path / "r" / "report.md").read_text()
    assert "All targets met" not in md and "**No targets checked: no dataset has labels (predictions only).**" in md


def test_a_missed_contrast_target_is_named_as_one():
    from so8t.eval.report import target_outcome, target_summary

    report = {
        "datasets": [
            {
                "name": "contrast-test",
                "labelled": True,
                "targets_met": {"refuse_recall": True, "allow_recall": None},
                "contrast": {"targets_met": {"false_refusal": False, "unsafe_recall": True}},
            },
            {"name": "mine", "labelled": False, "targets_met": None},
        ]
    }
    assert target_outcome(report) == (3, ["contrast false_refusal on contrast-test"])
    assert target_summary(report) == "1 of 3 targets missed: contrast false_refusal on contrast-test"


def test_calibrate_without_apply_only_proposes_and_prints_what_would_change(tiny_run, tmp_path, capsys):
    import shutil

    run, d = tiny_run
    cal_run = tmp_path / "cal"
    shutil.copytree(run, cal_run)
    assert main(["calibrate", str(cal_run), "--data", str(d / "dev.jsonl"), "--min-refuse-recall", "1.0"]) == 0
    out = capsys.readouterr().out
    assert not (cal_run / "thresholds.json").exists()  # serve, chat, demo and eval are unchanged
    proposal = json.loads((cal_run / "calibration" / "proposal.json").read_text())
    assert proposal["after"]["refuse_recall"] == 1.0
    for kpi in ("refuse_recall", "escalate_recall", "overcompliance", "allow_recall"):
        assert kpi in out
    assert "not applied: the run still decides by argmax" in out
    assert f"to apply: so8t calibrate {cal_run} --data {d / 'dev.jsonl'}" in out and out.rstrip().endswith("--apply")


def test_calibrate_reset_removes_applied_thresholds_and_says_so(tiny_run, tmp_path, capsys):
    import shutil

    run, d = tiny_run
    cal_run = tmp_path / "cal"
    shutil.copytree(run, cal_run)
    (cal_run / "thresholds.json").write_text(json.dumps({"thresholds": {"refuse_at": 0.3, "allow_at": 0.8}}))
    assert main(["calibrate", str(cal_run), "--reset"]) == 0
    assert "now decide by argmax" in capsys.readouterr().out and not (cal_run / "thresholds.json").exists()
    assert main(["calibrate", str(cal_run), "--reset"]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert main(["calibrate", str(cal_run), "--reset", "--apply"]) == 2
    assert "give one" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path / "nope"), "--reset"]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_eval_names_every_phase_with_its_elapsed_time(tiny_run, tmp_path, capsys):
    run, d = tiny_run
    assert (
        _eval(
            run,
            "--data",
            str(d / "dev.jsonl"),
            "--out",
            str(tmp_path / "r"),
            "--baselines",
            "judge",
            "--no-progress",
            *EASY,
        )
        == 0
    )
    err = capsys.readouterr().err
    for phase in (
        "loading run",
        "scoring 12 prompts with the gate",
        "zero-shot judge baseline on 12 prompts",
        "action tag on 12 prompts",
        "generating 2 responses",
        "bootstrap intervals (50 resamples",
        "timing the gate on 4 prompts",
        "plots",
        "plotting the training curves",
    ):
        assert phase in err, phase
    assert err.count("done in") >= 9
    assert "prompt/s" not in err  # --no-progress (and a non-terminal stderr): no bars of ours
