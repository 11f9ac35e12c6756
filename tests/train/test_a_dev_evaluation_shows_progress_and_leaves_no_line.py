"""Training's dev evaluations show progress (issue 17, item 8): each one was minutes of silence.

Every scoring pass of training (each dev evaluation, the threshold choice on dev, the final dev
and test) shows a bar of prompts scored under the step bar, and the bar removes itself when the
pass ends, so the terminal keeps the step bar and the one-line results only. With progress off
(tests, --no-progress) and on the gate's path nothing is printed."""

import re

from so8t.config import TrainConfig
from so8t.model import load_run
from so8t.model.scoring import prompt_outputs
from so8t.train.recipe import train


def screen(stream: str) -> list[str]:
    """What a terminal shows after `stream`: \\r, \\n and cursor-up (ESC [A) move, text overwrites."""
    rows, r, c = [[]], 0, 0
    for token in re.findall(r"\x1b\[A|\r|\n|[^\r\n\x1b]", stream):
        if token == "\r":
            c = 0
        elif token == "\n":
            r, c = r + 1, 0
        elif token == "\x1b[A":
            r = max(0, r - 1)
        else:
            while len(rows) <= r:
                rows.append([])
            rows[r] += [" "] * (c + 1 - len(rows[r]))
            rows[r][c], c = token, c + 1
    return ["".join(x).rstrip() for x in rows]


def _cfg(model, data, **kw) -> TrainConfig:
    return TrainConfig(
        **{
            "model": str(model),
            "data": [str(data / "train.jsonl")],
            "dev_data": [str(data / "dev.jsonl")],
            "test_data": [str(data / "dev.jsonl")],
            "lora_r": 4,
            "lora_alpha": 8,
            "max_length": 64,
            "micro_batch": 4,
            "grad_accum": 1,
            "max_steps": 4,
            "eval_every": 2,
            **kw,
        }
    )


def test_every_scoring_pass_of_training_shows_a_bar_that_is_gone_when_it_ends(
    tiny_run, tiny_model_dir, tmp_path, capsys
):
    train(_cfg(tiny_model_dir, tiny_run[1], calibrate=True), tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    n = len((tiny_run[1] / "dev.jsonl").read_text().splitlines())
    for label in ("dev eval at step 2", "dev eval at step 4", "dev: choosing thresholds", "test: final"):
        assert re.search(rf"{label}: +\d+%.*\| *\d+/{n} ", err), label  # was: nothing at all
    shown = screen(err)
    assert not [row for row in shown if re.search("dev eval|dev:|test:", row)]  # no bar left behind
    assert any(row.startswith("so8t train: 100%") for row in shown)  # the step bar stays


def test_without_a_calibration_the_final_dev_pass_has_its_own_bar(tiny_run, tiny_model_dir, tmp_path, capsys):
    train(_cfg(tiny_model_dir, tiny_run[1], max_steps=2), tmp_path / "run", progress=True)
    assert "dev: final:" in capsys.readouterr().err


def test_with_progress_off_training_and_the_gate_path_print_nothing(tiny_run, tiny_model_dir, tmp_path, capsys):
    train(_cfg(tiny_model_dir, tiny_run[1], calibrate=True), tmp_path / "run", progress=False)
    model, tok, _ = load_run(tiny_run[0])
    prompt_outputs(model, tok, ["list my files", "delete the prod table"], 64)
    assert not re.search("dev eval|dev:|test:|prompt/s", capsys.readouterr().err)
