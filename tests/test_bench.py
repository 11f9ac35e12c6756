"""The benchmark scripts run (on the tiny model) and print their tables; numbers are not checked."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_probe_layers_prints_a_row_per_state_and_pooling(tiny_model_dir):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "probe_layers.py"),
            "--model",
            str(tiny_model_dir),
            "--layers",
            "1",
            "2",
            "--amp",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if "|" in line and not line.lstrip().startswith("state")]
    assert [(r[0], r[1]) for r in rows] == [("1", "mean"), ("1", "last"), ("final", "mean"), ("final", "last")]
    assert all(0.0 <= float(x) <= 1.0 for r in rows for x in r[3:6] + r[7:11])


def test_probe_layers_rejects_a_layer_the_model_does_not_have(tiny_model_dir):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "probe_layers.py"), "--model", str(tiny_model_dir), "--layers", "7"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode != 0 and "hidden states 0..2" in out.stderr


def test_probe_heldout_prints_every_block_the_final_state_and_the_mix(tiny_model_dir, tmp_path):
    from so8t.data import load_builtin, write_jsonl

    recs = load_builtin("test")
    write_jsonl(tmp_path / "held.jsonl", recs[:30])
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "probe_heldout.py"),
            "--model",
            str(tiny_model_dir),
            "--train",
            "builtin:dev",
            "--test",
            str(tmp_path / "held.jsonl"),
            "--amp",
            "none",
            "--cache",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    names = [line.split("|")[0].strip() for line in out.stdout.splitlines() if "|" in line and "refuse" not in line]
    assert names[-2:] == ["final", "mix"] and all(n.startswith("block") for n in names[:-2])
    assert list((tmp_path / "cache").glob("*.pt"))  # features cached per data set


def test_gate_load_counts_every_request_and_none_fails_because_of_another():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gate_load.py"),
            "--model",
            "tiny",
            "--requests",
            "8",
            "--concurrency",
            "1",
            "16",
            "120",
            "--delay-ms",
            "5",
            "--gate-timeout-s",
            "5",
            "--queue-max",
            "8",
            "--time-limit-s",
            "240",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-2000:])
    rows = {
        int(r[0]): [int(x) for x in r[1:8]]
        for r in (line.split() for line in out.stdout.splitlines())
        if len(r) == 11 and r[0].isdigit()
    }
    assert sorted(rows) == [1, 16, 120]
    for clients, (sent, ok, busy, own, others, errors, skipped) in rows.items():
        assert sent == max(8, clients) and ok + busy + own + others + errors == sent and skipped == 0
        assert others == 0 and errors == 0
    assert rows[1][1] == 8 and rows[120][2] > 0  # alone: all decided; 120 at once: the queue of 8 turns some away
    assert "failed closed because of another request: 0" in out.stdout


def test_probe_heldout_dev_frac_scores_a_held_back_share_of_each_imported_source(tiny_model_dir, tmp_path):
    """Source weights are chosen on rows held out of the fit, never on a test split."""
    from so8t.data import load_builtin, write_jsonl

    imported = [r.model_copy(update={"source": "public-x"}) for r in load_builtin("dev")[:40]]
    write_jsonl(tmp_path / "public.jsonl", imported)
    write_jsonl(tmp_path / "held.jsonl", load_builtin("test")[:20])
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "probe_heldout.py"),
            "--model",
            str(tiny_model_dir),
            "--train",
            "builtin:dev",
            str(tmp_path / "public.jsonl"),
            "--test",
            str(tmp_path / "held.jsonl"),
            "--dev-frac",
            "0.25",
            "--features",
            "mix",
            "--amp",
            "none",
            "--cache",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "imported dev (0.25 of each imported source, not fitted) (n=10)" in out.stdout
    assert f"probe trained on {len(load_builtin('dev')) + 30} prompts" in out.stdout


def test_probe_heldout_calibrate_chooses_thresholds_on_the_dev_sets_only(tiny_model_dir, tmp_path):
    """--calibrate picks thresholds on the '<set>:dev' test sets, as training's calibrate does, and
    scores every set under them; without a dev set it says what it needs."""
    from so8t.data import load_builtin, write_jsonl

    write_jsonl(tmp_path / "held.jsonl", load_builtin("test")[:20])
    base = [
        sys.executable,
        str(ROOT / "bench" / "probe_heldout.py"),
        "--model",
        str(tiny_model_dir),
        "--train",
        "builtin:dev",
        "--features",
        "mix",
        "--head",
        "cpu-quick",
        "--head-set",
        "head_probe_steps=20",
        "--calibrate",
        "--amp",
        "none",
        "--cache",
        str(tmp_path / "cache"),
    ]
    out = subprocess.run(
        base + ["--test", "contrast:dev", str(tmp_path / "held.jsonl")], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("the head at thresholds chosen on the dev sets") == 2
    assert len([ln for ln in out.stdout.splitlines() if "dev thr |" in ln]) == 2
    out = subprocess.run(base + ["--test", str(tmp_path / "held.jsonl")], capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and "needs at least one '<set>:dev'" in out.stderr


def test_probe_heldout_fits_a_split_head_as_training_does_and_calibrates_both_its_thresholds(tiny_model_dir, tmp_path):
    """--head-set head_kind=split: the split head fitted on the cached features (training's step-0
    fit), and --calibrate choosing its refuse_at and escalate_at on the dev sets."""
    from so8t.data import load_builtin, write_jsonl

    write_jsonl(tmp_path / "held.jsonl", load_builtin("test")[:20])
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "probe_heldout.py"),
            "--model",
            str(tiny_model_dir),
            "--train",
            "builtin:dev",
            "--features",
            "mix",
            "--head",
            "cpu-quick",
            "--head-set",
            "head_probe_steps=20",
            "head_kind=split",
            "--calibrate",
            "--amp",
            "none",
            "--test",
            "contrast:dev",
            str(tmp_path / "held.jsonl"),
            "--cache",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("the split safety head fitted as cpu-quick fits it") == 2
    chosen = [ln for ln in out.stdout.splitlines() if "the head at thresholds chosen on the dev sets" in ln]
    assert len(chosen) == 2 and all("escalate_at=" in ln and "allow_at" not in ln for ln in chosen)


def test_load_runs_so8t_serve_with_batching_off_and_on_and_prints_every_level():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "load.py"),
            "--model",
            "tiny",
            "--requests",
            "8",
            "--concurrency",
            "1",
            "4",
            "16",
            "--time-limit-s",
            "240",
            "--startup-s",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-2000:])
    rows = [r.split() for r in out.stdout.splitlines() if r.split()[:1] in (["off"], ["on"]) and len(r.split()) == 12]
    assert [(r[0], int(r[1])) for r in rows] == [(s, c) for s in ("off", "on") for c in (1, 4, 16)]
    for r in rows:
        ok, errors, skipped = int(r[2]), int(r[3]), int(r[4])
        assert (ok, errors, skipped) == (8, 0, 0)
        assert float(r[9]) > 0 and float(r[10]) > 0  # the server's RSS, before and after
    assert all(float(r[11]) == 1.0 for r in rows if r[0] == "off")  # batching off: one request per pass
    assert out.stdout.count("target") == 8


def test_gate_latency_compares_fp32_int8_and_bf16_on_both_test_sets_and_times_the_overhead():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gate_latency.py"),
            "--model",
            "tiny",
            "--prompts",
            "4",
            "--repeats",
            "1",
            "--limit",
            "12",
            "--b1-prompts",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-2000:])
    assert "gate / bare forward (worst of batch 1 and 16)" in out.stdout and "time to first token" in out.stdout
    rows = [r.split() for r in out.stdout.splitlines() if r.split()[:1] in (["fp32"], ["int8"], ["bf16"])]
    assert [(r[0], r[1], int(r[2])) for r in rows] == [
        (p, s, 12) for p in ("fp32", "int8", "bf16") for s in ("builtin:test", "contrast:test")
    ]
    assert all(r[5] == "100.0%" and float(r[6]) == 0.0 for r in rows if r[0] == "fp32")  # the reference itself
    assert all(int(r[7]) == 0 for r in rows)  # no decision failed
    assert len([line for line in out.stdout.splitlines() if "default candidate:" in line]) == 2


def test_gpu_check_tiny_runs_both_parts_on_a_cpu_and_says_what_it_skipped(tmp_path):
    import json

    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_check.py"),
            "--tiny",
            "--steps",
            "3",
            "--json",
            str(tmp_path / "gpu.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    assert "random weights shaped like meta-llama/Llama-3.2-3B-Instruct (tiny)" in out.stdout
    assert "4-bit NF4 and paged 8-bit AdamW skipped (no CUDA GPU)" in out.stdout
    a, b = json.loads((tmp_path / "gpu.json").read_text())
    assert (a["part"], a["status"], a["steps_done"], a["max_length"]) == ("a", "ok", 3, 64)
    assert a["seconds_per_step"] > 0 and a["estimate_gib"] > 0 and (a["micro_batch"], a["grad_accum"]) == (2, 16)
    assert (b["part"], b["status"], b["steps"]) == ("b", "ok", 2)
    assert set(b["test"]) >= {"refuse_recall", "escalate_recall", "overcompliance", "safety_score"}
    assert "test KPIs: refuse_recall=" in out.stdout


def test_gpu_check_without_a_gpu_asks_for_tiny_instead_of_training_a_3b_model_on_the_cpu():
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("a GPU is here: the full-size check would run")
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--parts", "a"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "no CUDA GPU here" in out.stderr and "--tiny" in out.stderr
