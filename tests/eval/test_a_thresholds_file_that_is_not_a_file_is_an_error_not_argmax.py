"""A run's thresholds.json that exists but is not a regular file (a dangling symlink, a
folder in its place) was read as "never calibrated": the gate silently fell back to argmax,
which allows what the calibrated thresholds escalate. A thresholds.json that is valid JSON but
not an object raised a bare AttributeError without the file's name. Each is now a ValueError
naming the file, so the gate comes up not ready and fails closed."""

import shutil

import pytest

from so8t.eval.thresholds import load_thresholds
from so8t.gate import Gate


def _broken(run, how, tmp_path):
    path = run / "thresholds.json"
    path.unlink()
    if how == "dangling symlink":
        path.symlink_to(tmp_path / "gone.json")
    elif how == "folder":
        path.mkdir()
    else:
        path.write_text(how, encoding="utf-8")


@pytest.mark.parametrize("how", ["dangling symlink", "folder", "[]", '"0.5"', "null", "3"])
def test_a_thresholds_file_that_cannot_be_used_fails_the_gate_closed(run_with_thresholds, tmp_path, how):
    run = run_with_thresholds(1.0, 1.0)  # calibrated to escalate everything
    assert Gate.load(run).decide("What is the capital of France?").action.name == "ESCALATE"
    _broken(run, how, tmp_path)
    with pytest.raises(ValueError, match="thresholds.json"):
        load_thresholds(run)
    g = Gate.load(run)
    d = g.decide("What is the capital of France?")
    assert not g.ready and (d.action.name, d.status) == ("REFUSE", "error") and "thresholds.json" in d.reason
    g.close()


def test_a_run_never_calibrated_still_uses_argmax(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    assert not (run / "thresholds.json").exists() and load_thresholds(run) is None
    assert Gate.load(run).ready


def test_calibrate_reset_removes_a_dangling_thresholds_link(run_with_thresholds, tmp_path):
    from so8t.eval.thresholds import remove_thresholds

    run = run_with_thresholds(1.0, 1.0)
    _broken(run, "dangling symlink", tmp_path)
    assert remove_thresholds(run) == run / "thresholds.json"
    assert load_thresholds(run) is None and Gate.load(run).ready
