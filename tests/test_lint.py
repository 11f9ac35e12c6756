"""The lint floor: `ruff check` (rules in pyproject.toml's [tool.ruff]) and `ruff format --check`
pass on src, tests, bench and scripts, so the ordinary test run (and .ci/run) covers lint. Skipped,
saying why, only where ruff is not installed (it comes with the dev extra: pip install -e '.[dev]')."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["src", "tests", "bench", "scripts"]


def test_ruff_finds_nothing_in_src_tests_bench_and_scripts():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed in this interpreter (pip install -e '.[dev]' brings the pinned one)")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", *CHECKED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"ruff check {' '.join(CHECKED)} flagged:\n{proc.stdout}{proc.stderr}"


def test_ruff_format_leaves_src_tests_bench_and_scripts_as_they_are():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed in this interpreter (pip install -e '.[dev]' brings the pinned one)")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", *CHECKED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"ruff format would change these (run `ruff format {' '.join(CHECKED)}`):\n{proc.stdout}"
    )
