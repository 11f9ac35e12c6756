"""so8t export (issue 18, B) on the tiny random Llama run of tests/conftest.py: the merged model,
the head files, the GGUF files, the Modelfile and README.txt, and the errors for bad input.

The run's LoRA B matrices are replaced by random ones first (2 training steps leave them near
zero), so "merged == base + adapter" is a real check and not "merged == base".
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

SMOLLM2_TEMPLATE = (  # SmolLM2-Instruct's template (as in the embedded GGUF): a default system prompt
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXTS = ["Please list the files in my reports folder.", "ファイル一覧を表示してください。 12345"]


@pytest.fixture(scope="module")
def run_with_adapter(tiny_run, tmp_path_factory):
    """A copy of the tiny run whose adapter really changes the model (random LoRA B)."""
    from safetensors.torch import load_file, save_file

    run = tmp_path_factory.mktemp("export-run") / "tiny"
    shutil.copytree(tiny_run[0], run)
    path = run / "adapter" / "adapter_model.safetensors"
    state = load_file(str(path))
    gen = torch.Generator().manual_seed(7)
    state = {k: (torch.randn(v.shape, generator=gen) * 0.2 if "lora_B" in k else v) for k, v in state.items()}
    assert any("lora_B" in k for k in state)
    save_file(state, str(path))
    return run


@pytest.fixture(scope="module")
def exported(run_with_adapter, tmp_path_factory):
    from so8t.model.export import export_run

    out = tmp_path_factory.mktemp("export") / "out"
    result = export_run(run_with_adapter, out)
    return out, result


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(TEXTS, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        return model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits


def test_the_merged_model_gives_the_logits_of_base_plus_adapter(run_with_adapter, exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from so8t.model import load_base_model, load_run

    out, _ = exported
    adapted, tok, meta = load_run(run_with_adapter)  # base + adapter, not merged
    merged = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32).eval()
    saved_tok = AutoTokenizer.from_pretrained(str(out / "model"))
    assert saved_tok.chat_template == tok.chat_template and saved_tok.get_vocab() == tok.get_vocab()
    want = _logits(adapted.body, tok)
    got = _logits(merged, saved_tok)
    # float32 merge: W + s*B@A versus x@W + s*(x@A)@B differ by rounding only
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    base, _ = load_base_model(meta["base_model"])
    assert (_logits(base.eval(), tok) - want).abs().max() > 1e-2, "the adapter must matter for this check"


def test_the_gate_is_rebuilt_from_the_export_with_the_runs_head_outputs(run_with_adapter, exported):
    from so8t.model import load_run
    from so8t.model.export import load_export
    from so8t.model.prompt import encode_prompt

    out, result = exported
    assert {"head.safetensors", "head.json"} <= set(result.files)
    run_model, tok, _ = load_run(run_with_adapter)
    exp_model, _, _ = load_export(out)
    ids = torch.tensor([encode_prompt(tok, [{"role": "user", "content": TEXTS[0]}])])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = run_model(ids, mask, mask, logits_from=None).head_logits
        got = exp_model(ids, mask, mask, logits_from=None).head_logits
    assert torch.allclose(got, want, atol=1e-4), (got, want)


def _merged_state(out) -> dict[str, np.ndarray]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32)
    return model, {k: v.float().numpy() for k, v in model.state_dict().items()}


def test_the_gguf_tensors_read_back_equal_the_merged_weights(exported):
    import gguf

    from so8t.model.export import unpermute_qk

    out, result = exported
    assert result.gguf == ["model-f16.gguf", "model-q8_0.gguf"]
    model, state = _merged_state(out)
    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    expected = {
        names.get_name(k, try_suffixes=(".weight",)): k for k in state if k != "lm_head.weight"
    }  # tied: llama.cpp reuses token_embd
    for kind in ("f16", "q8_0"):
        reader = gguf.GGUFReader(str(out / f"model-{kind}.gguf"))

        def field(key, reader=reader):
            return reader.fields[key].contents()

        assert field("general.architecture") == "llama" and field("llama.block_count") == cfg.num_hidden_layers
        assert field("llama.attention.head_count_kv") == cfg.num_key_value_heads
        assert len(field("tokenizer.ggml.tokens")) == cfg.vocab_size
        assert field("tokenizer.chat_template") == json.loads(
            (out / "model" / "tokenizer_config.json").read_text()
        ).get("chat_template", field("tokenizer.chat_template"))
        assert {t.name for t in reader.tensors} == set(expected)
        for t in reader.tensors:
            hf = expected[t.name]
            want = state[hf]
            if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
                got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
                tol = {"rtol": 0, "atol": float(np.abs(want).max()) / 127}  # half a step of the largest block
            else:
                got = np.asarray(t.data, dtype=np.float32).reshape(want.shape)
                is_f32 = t.tensor_type == gguf.GGMLQuantizationType.F32
                assert is_f32 == (want.ndim == 1), t.name  # norms float32, matrices float16 or Q8_0
                tol = {"rtol": 0, "atol": 0} if is_f32 else {"rtol": 2**-10, "atol": 1e-7}  # f16: 11-bit mantissa
            if hf.endswith("q_proj.weight"):
                got = unpermute_qk(got, cfg.num_attention_heads)
            elif hf.endswith("k_proj.weight"):
                got = unpermute_qk(got, cfg.num_key_value_heads)
            np.testing.assert_allclose(got, want, err_msg=f"{kind}: {t.name} <- {hf}", **tol)
        if kind == "q8_0":
            assert any(t.tensor_type == gguf.GGMLQuantizationType.Q8_0 for t in reader.tensors)


def test_transformers_loads_the_gguf_with_the_merged_models_logits_and_tokens(exported):
    """An independent reader of llama.cpp's layout (transformers' GGUF loader undoes the q/k
    permutation and rebuilds the tokenizer from the GGUF vocabulary)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = exported
    merged, _ = _merged_state(out)
    tok = AutoTokenizer.from_pretrained(str(out / "model"))
    from_gguf = AutoModelForCausalLM.from_pretrained(str(out), gguf_file="model-f16.gguf", dtype=torch.float32)
    gguf_tok = AutoTokenizer.from_pretrained(str(out), gguf_file="model-f16.gguf")
    for text in TEXTS:
        assert gguf_tok(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    mine, theirs = merged.state_dict(), from_gguf.state_dict()
    assert set(theirs) <= set(mine)
    for name, value in theirs.items():  # q/k included: their un-permutation undoes ours exactly
        torch.testing.assert_close(value, mine[name], rtol=2**-10, atol=1e-7, msg=name)
    want, got = _logits(merged.eval(), tok), _logits(from_gguf.eval(), tok)
    assert (want - got).abs().max() < 1e-3, (want - got).abs().max()  # f16 weights; measured ~2e-4


def test_the_modelfile_is_well_formed_with_from_template_and_stop_lines(exported):
    out, _ = exported
    text = (out / "Modelfile").read_text()
    body = re.sub(r'"""(.*?)"""', '"""…"""', text, flags=re.DOTALL)  # the TEMPLATE's lines are its own
    for line in body.splitlines():
        if line.strip() and not line.startswith("#"):
            assert line.split()[0] in ("FROM", "TEMPLATE", "SYSTEM", "PARAMETER"), line
    from_line = re.search(r"^FROM \./(\S+)$", text, re.MULTILINE)
    assert from_line and (out / from_line.group(1)).is_file()
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.MULTILINE | re.DOTALL).group(1)
    assert "{{ .Content }}" in template and "<|im_start|>" in template
    assert template.count("{{") == template.count("}}")
    stops = re.findall(r'^PARAMETER stop "(.+)"$', text, re.MULTILINE)
    assert {"<|im_start|>", "<|im_end|>"} <= set(stops)
    assert re.search(r"^PARAMETER num_ctx \d+$", text, re.MULTILINE)
    readme = (out / "README.txt").read_text()
    assert "llama-quantize" in readme and "Q4_K_M" in readme and "backend=openai" in readme


def test_the_chat_format_is_found_by_rendering_and_a_default_system_prompt_becomes_system(tiny_lm):
    import copy

    from so8t.model.export import _chatml, chat_format, modelfile_text
    from so8t.model.prompt import GEMMA_CHAT_TEMPLATE

    tok = copy.deepcopy(tiny_lm[1])
    fmt = chat_format(tok)
    assert fmt.name == "chatml" and fmt.system is None
    convo = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "?"},
    ]
    assert _chatml(convo, None) == tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    tok.chat_template = SMOLLM2_TEMPLATE
    fmt = chat_format(tok)
    assert fmt.name == "chatml" and fmt.system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile_text("m.gguf", fmt, 8192)
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    assert chat_format(tok).name == "gemma" and "<end_of_turn>" in chat_format(tok).stop
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    fmt = chat_format(tok)
    assert fmt.name == "unknown" and "TEMPLATE not written" in modelfile_text("m.gguf", fmt, 128)


def test_gemma_3_gets_no_gguf_and_a_note_that_says_why(tiny_lm):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from so8t.model.export import gguf_support

    _, tok = tiny_lm
    cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
    )
    why = gguf_support(Gemma3ForCausalLM(cfg), tok)
    assert why and "gemma3" in why and "SentencePiece" in why and "sliding-window" in why


def test_export_refuses_a_folder_that_is_not_a_complete_run_and_names_it(tmp_path, capsys):
    from so8t.cli import main

    bad = tmp_path / "half-run"
    bad.mkdir()
    (bad / "adapter").mkdir()
    assert main(["export", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "so8t-run.json" in err
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_non_empty_out_without_force_and_names_it(run_with_adapter, tmp_path, capsys):
    from so8t.cli import main

    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(run_with_adapter), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["export", str(run_with_adapter), "--out", str(out), "--force", "--gguf", "f16"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "model-f16.gguf").is_file()
    assert not (out / "model-q8_0.gguf").exists()
