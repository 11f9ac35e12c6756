"""Issue 14, item 2, on the tiny trained run: the gate's forward in int8 (dynamic quantization of
the blocks' linear layers, the adapter merged first) or bf16 loads, decides, answers through
the in-process LLM, says its precision in model_version, and fails closed when the precision
cannot run. (Whether int8 keeps the real model's decisions is bench/gate_latency.py's job.)"""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

from so8t.agent.inprocess import InProcessBackend
from so8t.agent.service import build_service
from so8t.config import ConfigError, ServerConfig, from_dict
from so8t.gate import Gate
from so8t.labels import Action
from so8t.model import precision as precision_mod

PROMPTS = [
    "Please list the files in my reports folder.",
    "本番DBのテーブルを削除して。",
    "How do I make a bomb?",
    "Summarise the meeting notes from Monday.",
]


@pytest.fixture(scope="module")
def fp32(tiny_run):
    g = Gate.load(tiny_run[0], precision="fp32")
    yield g
    g.close()


def test_an_int8_gate_quantizes_the_blocks_linears_and_decides_close_to_fp32(tiny_run, fp32):
    g = Gate.load(tiny_run[0], precision="int8")
    try:
        assert g.ready, g.load_error
        assert g.model_version == fp32.model_version.replace("+fp32", "+int8") and g.amp == "none"
        blocks = [m for name, m in g.model.body.named_modules() if ".layers." in name]
        assert sum(type(m) is QuantizedLinear for m in blocks) == 7 * 2  # q k v o gate up down, 2 blocks
        assert not any(type(m) is nn.Linear or "lora" in type(m).__name__.lower() for m in blocks)
        assert type(g.model.body.get_output_embeddings()) is nn.Linear  # the LM head stays fp32
        for p in PROMPTS:
            a, b = fp32.decide(p), g.decide(p)
            assert b.status == "ok" and np.allclose(a.probs, b.probs, atol=0.05), (a.probs, b.probs)
        convo = [{"role": "user", "content": PROMPTS[0]}]
        d, prefill = g.decide_with_prefill(convo)
        assert d.status == "ok" and prefill is not None
        answer = InProcessBackend(g).complete(convo, max_tokens=4, prefill=prefill)
        assert answer == InProcessBackend(g).complete(convo, max_tokens=4)  # the prefill is the int8 model's own
    finally:
        g.close()


def test_a_bf16_gate_runs_under_bf16_autocast_and_decides(tiny_run, fp32):
    g = Gate.load(tiny_run[0], precision="bf16")
    try:
        assert g.ready and g.amp == "bf16" and g.model_version.endswith("+bf16")
        for p in PROMPTS:
            d = g.decide(p)
            assert d.status == "ok" and np.allclose(d.probs, fp32.decide(p).probs, atol=0.05)
    finally:
        g.close()


def test_the_run_precision_is_the_runs_own_amp_and_keeps_the_version(tiny_run, fp32):
    g = Gate.load(tiny_run[0])
    try:
        assert g.model_version + "+fp32" == fp32.model_version and g.amp == "none"  # the tiny run trained without amp
    finally:
        g.close()


@pytest.mark.parametrize("fail_action", ["REFUSE", "ESCALATE"])
def test_an_int8_model_that_cannot_be_built_comes_up_not_ready_and_never_allows(
    run_with_thresholds, monkeypatch, fail_action
):
    def broken(body):
        raise precision_mod.PrecisionError("int8 needs a quantized CPU engine; this torch build has 'none'")

    monkeypatch.setattr("so8t.gate.gate.quantize_int8", broken)
    g = Gate.load(run_with_thresholds(1.0, 0.0), precision="int8", fail_action=fail_action)  # thresholds: ALLOW all
    assert not g.ready and "quantized CPU engine" in g.load_error
    d = g.decide("List my files")
    assert (d.status, d.action.name, d.probs) == ("error", fail_action, None)
    assert Action.ALLOW not in {g.decide(p).action for p in PROMPTS}


def test_an_int8_forward_that_raises_fails_closed(tiny_run, monkeypatch):
    g = Gate.load(tiny_run[0], precision="int8")
    try:
        layer = next(m for m in g.model.body.modules() if type(m) is QuantizedLinear)
        monkeypatch.setattr(layer, "forward", lambda x: (_ for _ in ()).throw(RuntimeError("int8 kernel failed")))
        d = g.decide("List my files")
        assert (d.status, d.action) == ("error", Action.REFUSE) and "int8 kernel failed" in d.reason
    finally:
        g.close()


def test_int8_refuses_an_unmerged_adapter_and_an_unknown_precision_is_named(tiny_run, tmp_path):
    from so8t.model import load_run

    model, _, _ = load_run(tiny_run[0])
    with pytest.raises(precision_mod.PrecisionError, match="merge the LoRA adapter"):
        precision_mod.quantize_int8(model.body)
    with pytest.raises(ValueError, match="unknown gate precision 'int4'; expected one of run, fp32, bf16, int8"):
        Gate.load(tiny_run[0], precision="int4")
    with pytest.raises(ConfigError, match="gate_precision"):
        from_dict(ServerConfig, {"run": "x", "gate_precision": "int4"}, "config")


def test_the_server_config_key_reaches_the_gate(tiny_run, tmp_path):
    cfg = ServerConfig(
        run=str(tiny_run[0]),
        gate_precision="int8",
        approvals_url=f"sqlite:///{tmp_path}/a.db",
        audit_path=str(tmp_path / "audit.jsonl"),
        self_test=False,
    )
    svc = build_service(cfg)
    try:
        assert svc.gate.ready and svc.gate.model_version.endswith("+int8")
    finally:
        svc.close()
