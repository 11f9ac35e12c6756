"""SafetyModel.lm_logits: training projects only the positions it scores through it, so it must
give exactly the logits the body's own forward gives (output projection, then Gemma's logit
soft-cap), on a Llama-style and a Gemma 3 body (random, tiny)."""

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from so8t.model import SafetyHead
from so8t.model.safety_model import SafetyModel


def _gemma():
    return Gemma3ForCausalLM(
        Gemma3TextConfig(
            vocab_size=300,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            final_logit_softcapping=30.0,
        )
    )


def _llama():
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=300,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )


@pytest.mark.parametrize("build", [_gemma, _llama], ids=["gemma3-softcap", "llama"])
def test_lm_logits_of_the_final_state_equal_the_forwards_logits(build):
    torch.manual_seed(0)
    model = SafetyModel(build().eval(), SafetyHead(32))
    ids = torch.randint(0, 300, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = model(ids, mask, mask, logits_from=0)
        mine = model.lm_logits(out.hidden_states[-1])
    assert torch.allclose(mine, out.logits, atol=1e-5)
