"""The README's Python API blocks (English and Japanese) run as written (issue 17, item 12).

Each ```python block of README.md that calls Gate.load is executed with its run folder
(runs/quick) swapped for the tiny test run; it must print the action by name, an ok status and
three probabilities, then the decision's JSON. A missing run must give a gate that is not ready
and refuses, as the block's comment says."""

import ast
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = [
    b for b in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL) if "Gate.load" in b
]


def _code(block: str) -> list[str]:
    return [line.split("#")[0].rstrip() for line in block.splitlines()]


def test_both_parts_of_the_readme_show_the_same_python_api():
    assert len(BLOCKS) == 2 and _code(BLOCKS[0]) == _code(BLOCKS[1])  # the comments are translated


@pytest.mark.parametrize("block", BLOCKS, ids=["english", "japanese"])
def test_the_readme_python_block_runs_and_prints_the_action_by_name(block, tiny_run, capsys):
    exec(compile(block.replace('"runs/quick"', repr(str(tiny_run[0]))), "README.md", "exec"), {})
    first, second = capsys.readouterr().out.splitlines()[:2]
    action, status, probs = first.split(" ", 2)
    assert action in ("ALLOW", "ESCALATE", "REFUSE") and status == "ok" and len(ast.literal_eval(probs)) == 3
    assert ast.literal_eval(second)["action"] == action


def test_the_readme_python_block_on_a_missing_run_refuses_and_says_why(tmp_path, capsys):
    exec(compile(BLOCKS[0].replace('"runs/quick"', repr(str(tmp_path / "none"))), "README.md", "exec"), {})
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("REFUSE ") and not first.startswith("REFUSE ok")
