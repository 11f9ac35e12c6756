"""so8t-run.json while a run trains: `step` is the step of the last checkpoint (issue 17, item 1).

The marker is what a user (or `so8t serve` refusing an unfinished run) reads to see how far a
run got; written once at the start, it said step 0 for the whole run."""

import json

from so8t.config import TrainConfig
from so8t.train import recipe


def test_the_marker_says_the_step_of_the_last_checkpoint_at_every_dev_evaluation(
    tiny_run, tiny_model_dir, tmp_path, monkeypatch
):
    data, out, seen = tiny_run[1], tmp_path / "run", []
    real = recipe.evaluate

    def spy(*args, **kwargs):  # the real evaluation; before it, what the folder says so far
        evals = out / "metrics" / "evals.jsonl"
        rows = [json.loads(r) for r in evals.read_text().splitlines()] if evals.is_file() else []
        seen.append((json.loads((out / "so8t-run.json").read_text()), rows[-1]["step"] if rows else 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(recipe, "evaluate", spy)
    cfg = TrainConfig(
        model=str(tiny_model_dir),
        data=[str(data / "train.jsonl")],
        dev_data=[str(data / "dev.jsonl")],
        lora_r=4,
        lora_alpha=8,
        max_length=64,
        micro_batch=4,
        grad_accum=1,
        max_steps=6,
        eval_every=2,
        patience=10,
    )
    recipe.train(cfg, out, progress=False)
    assert [checkpointed for _, checkpointed in seen[:3]] == [0, 2, 4]  # the evaluations at steps 2, 4, 6
    for marker, checkpointed in seen:
        assert (marker["status"], marker["step"], marker["total_steps"]) == ("running", checkpointed, 6)
    assert json.loads((out / "so8t-run.json").read_text())["step"] == 6
