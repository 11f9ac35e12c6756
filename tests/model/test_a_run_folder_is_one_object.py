"""so8t.model.run.Run: a run folder as one object (config, meta, thresholds, status marker) and
its loader, which gives the model, tokenizer, max length and precision together."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from so8t.config import TrainConfig
from so8t.data import read_jsonl
from so8t.model import LoadedRun, Run, RunError
from so8t.model.thresholds import load_thresholds


def test_a_new_run_keeps_its_config_and_starts_without_a_status(tmp_path):
    cfg = TrainConfig(model="tiny", data=["a.jsonl"], max_length=96, amp="bf16")
    run = Run.create(tmp_path / "run", cfg)
    assert run.status() is None and (run.folder / "metrics").is_dir()
    again = Run(tmp_path / "run").config()
    assert (again.model, again.data, again.max_length, again.amp) == ("tiny", ["a.jsonl"], 96, "bf16")


def test_the_status_marker_is_replaced_whole_and_leaves_no_temporary_file(tmp_path):
    run = Run(tmp_path)
    run.write_status(status="running", step=0, total_steps=4)
    run.write_status(**{**run.status(), "step": 2})
    assert json.loads((tmp_path / "so8t-run.json").read_text()) == {"status": "running", "step": 2, "total_steps": 4}
    assert [p.name for p in tmp_path.iterdir()] == ["so8t-run.json"]


def test_a_status_write_that_fails_keeps_the_marker_that_was_there(tmp_path, monkeypatch):
    run = Run(tmp_path)
    run.write_status(status="running", step=3, total_steps=9)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space"):
        run.write_status(status="complete", step=9, total_steps=9)
    assert synced, "the new marker is fsynced before it replaces the old one"
    assert run.status() == {"status": "running", "step": 3, "total_steps": 9}
    assert [p.name for p in tmp_path.iterdir()] == ["so8t-run.json"]


def test_opening_a_folder_that_is_not_a_complete_run_says_what_is_wrong(tmp_path):
    with pytest.raises(RunError, match="no so8t-run.json"):
        Run.open(tmp_path)
    Run(tmp_path).write_status(status="interrupted", step=1, total_steps=5)
    with pytest.raises(RunError, match="run status is 'interrupted' at step 1 of 5"):
        Run.open(tmp_path)


def test_loading_a_run_gives_its_model_tokenizer_max_length_and_precision_together(tiny_run):
    folder, data = tiny_run
    run = Run.open(folder)
    loaded = run.load()
    assert isinstance(loaded, LoadedRun)
    assert (loaded.max_length, loaded.amp) == (run.config().max_length, run.config().amp) == (64, "none")
    assert loaded.meta["base_model"] == run.meta()["base_model"] and loaded.tokenizer.pad_token_id is not None
    assert run.meta()["best_step"] == run.status()["best_step"]
    recs = read_jsonl(data / "dev.jsonl")
    probs = loaded.probs(recs)
    assert probs.shape == (len(recs), 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert run.thresholds() == load_thresholds(folder)


def test_only_folders_marked_complete_count_as_runs_and_an_unreadable_marker_is_skipped(tmp_path):
    from so8t.model.run import complete_runs
    from so8t.server.demo import latest_run

    for name, status in (("b", "complete"), ("a", "complete"), ("c", "running")):
        Run(tmp_path / name).folder.mkdir()
        Run(tmp_path / name).write_status(status=status, step=1, total_steps=1)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "so8t-run.json").write_text("{not json")
    (tmp_path / "e").mkdir()
    assert complete_runs(tmp_path) == [tmp_path / "a", tmp_path / "b"]
    os.utime(tmp_path / "a", (1, 1))
    os.utime(tmp_path / "b", (2, 2))
    assert latest_run(tmp_path) == tmp_path / "b"
    assert complete_runs(tmp_path / "missing") == [] and latest_run(tmp_path / "missing") is None


def test_the_readme_run_block_runs_as_written_in_both_languages(tiny_run):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.DOTALL) if "Run.open" in b]
    code = [[line.split("#")[0].rstrip() for line in b.splitlines()] for b in blocks]
    assert len(blocks) == 2 and code[0] == code[1]  # the comments are translated
    scope: dict = {}
    exec(compile(blocks[0].replace('"runs/quick"', repr(str(tiny_run[0]))), "README.md", "exec"), scope)
    assert scope["loaded"].probs(["hello"]).shape == (1, 3)
