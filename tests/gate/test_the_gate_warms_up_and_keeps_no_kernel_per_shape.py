"""Issue 14, item 1 (server RSS flat under load): `so8t serve` caps oneDNN's per-shape kernel
cache (ServerConfig.gate_kernel_cache, 0 by default; the environment variable wins) before the
first forward pass, and the gate warms up at its largest shape on its own worker, so memory
reaches its high-water mark before the first request. Whether RSS then stays flat is
bench/load.py's measurement (README, "Under load"); here: what is set, and that warming up
never decides, never counts and never stops a gate."""

from __future__ import annotations

import logging

import pytest

from so8t.agent import service
from so8t.config import ConfigError, ServerConfig, from_dict
from so8t.gate import Gate
from so8t.model.prompt import encode_prompt


def test_the_kernel_cache_is_capped_unless_the_environment_already_says(monkeypatch):
    monkeypatch.setenv(service.KERNEL_CACHE_ENV, "x")  # so the process's own value comes back afterwards
    monkeypatch.delenv(service.KERNEL_CACHE_ENV)
    service.limit_kernel_cache(0)
    assert service.os.environ[service.KERNEL_CACHE_ENV] == "0"
    monkeypatch.setenv(service.KERNEL_CACHE_ENV, "256")
    service.limit_kernel_cache(0)
    assert service.os.environ[service.KERNEL_CACHE_ENV] == "256"  # the user's setting wins


def test_minus_one_leaves_onednns_default(monkeypatch):
    monkeypatch.setenv(service.KERNEL_CACHE_ENV, "x")  # so the process's own value comes back afterwards
    monkeypatch.delenv(service.KERNEL_CACHE_ENV)
    service.limit_kernel_cache(-1)
    assert service.KERNEL_CACHE_ENV not in service.os.environ


def test_a_kernel_cache_below_minus_one_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="gate_kernel_cache"):
        from_dict(ServerConfig, {"run": "runs/x", "gate_kernel_cache": -2}).validate()


def test_warming_up_runs_full_rows_on_the_worker_and_decides_nothing(tiny_run, monkeypatch):
    gate = Gate.load(tiny_run[0], batch_max=4)
    seen: list[list] = []
    real = gate._score

    def spy(conversations):
        seen.append(conversations)
        return real(conversations)

    monkeypatch.setattr(gate, "_score", spy)
    try:
        assert gate.ready
        before, rounds = gate.stats(), dict(gate.batch_sizes)
        gate.warm_up()
        assert len(seen) == 1 and len(seen[0]) == 4  # one job of batch_max rows
        lengths = [len(encode_prompt(gate.tokenizer, c)) for c in seen[0]]
        assert all(gate.max_length - 8 <= n <= gate.max_length for n in lengths), lengths
        assert gate.stats() == before and dict(gate.batch_sizes) == rounds  # nothing decided, nothing counted
        assert gate.decide("Please list the files in my reports folder.").ok
    finally:
        gate.close()


def test_a_warm_up_that_fails_is_logged_and_the_gate_stays_ready(tiny_run, monkeypatch, caplog):
    gate = Gate.load(tiny_run[0])
    monkeypatch.setattr(gate, "_score", lambda conversations: (_ for _ in ()).throw(RuntimeError("boom")))
    try:
        with caplog.at_level(logging.WARNING):
            gate.warm_up()
        assert "warm-up failed" in caplog.text and "boom" in caplog.text
        assert gate.ready
    finally:
        gate.close()


def test_a_gate_that_is_not_ready_has_nothing_to_warm():
    gate = Gate(load_error="no run")
    gate.warm_up()  # no model: returns, does not raise
    assert not gate.ready
    gate.close()
