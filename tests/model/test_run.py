"""so8t.model.run: checking a run folder before any weights load."""

import json
import shutil

import pytest

from so8t.model import RunError
from so8t.model.run import check_run


def test_a_complete_trained_run_passes_the_check_and_returns_its_marker(tiny_run):
    info = check_run(tiny_run[0])
    assert info["status"] == "complete" and info["step"] == info["total_steps"] == 2


def test_a_folder_of_runs_points_to_the_run_inside_it(tiny_run, tmp_path):
    shutil.copytree(tiny_run[0], tmp_path / "runs" / "tiny")
    with pytest.raises(RunError, match=r"no so8t-run.json\); did you mean '.*runs/tiny'\?"):
        check_run(tmp_path / "runs")


def test_an_unreadable_marker_is_named(tmp_path):
    (tmp_path / "so8t-run.json").write_text("{not json")
    with pytest.raises(RunError, match="so8t-run.json cannot be read"):
        check_run(tmp_path)


def test_an_interrupted_run_says_how_to_resume(tmp_path):
    (tmp_path / "so8t-run.json").write_text(json.dumps({"status": "interrupted", "step": 3, "total_steps": 9}))
    with pytest.raises(
        RunError,
        match=r"'interrupted' at step 3 of 9, not 'complete' \(resume it with so8t train "
        r"--resume ",
    ):
        check_run(tmp_path)


def test_without_a_close_name_the_hint_is_the_newest_complete_run(tmp_path):
    import os

    for i, name in enumerate(["alpha", "beta"]):
        (tmp_path / "runs" / name).mkdir(parents=True)
        marker = tmp_path / "runs" / name / "so8t-run.json"
        marker.write_text(json.dumps({"status": "complete"}))
        os.utime(marker, (1_000_000 + 100 * (1 - i),) * 2)  # alpha is the newer
    with pytest.raises(RunError, match=r"did you mean '.*runs/alpha'\? \(complete runs here: alpha, beta\)"):
        check_run(tmp_path / "runs" / "quick")
