from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from so8t.model import ModelLoadError, describe, encode_prompt, ensure_chat_template, load_base_model, loading


def test_local_folder_gives_the_plain_transformers_model(tiny_model_dir):
    model, tok = load_base_model(str(tiny_model_dir))
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(model) is type(plain)
    ids = torch.tensor([encode_prompt(tok, [{"role": "user", "content": "List my files"}])])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(ids).logits)
    info = describe(str(tiny_model_dir), model, tok)
    assert (info.hidden_size, info.num_layers, info.vocab_size, info.has_chat_template) == (
        32,
        2,
        model.config.vocab_size,
        True,
    )
    assert info.parameters == sum(p.numel() for p in plain.parameters())


def test_missing_paths_and_non_model_folders_fail_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_base_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_base_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="model path not found"):
        load_base_model(str(tmp_path / "a" / "b"))


def test_hub_id_without_network_fails_with_a_hint():
    with pytest.raises(ModelLoadError, match="no network access to the hub"):
        load_base_model("so8t-test-org/does-not-exist")


def test_4bit_without_cuda_or_bitsandbytes_is_a_clear_error(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU"):
        load_base_model(str(tiny_model_dir), load_in_4bit=True)


def test_tokenizer_without_chat_template_gets_fallback_with_warning(tiny_model_dir):
    _, tok = load_base_model(str(tiny_model_dir))
    tok.chat_template = None
    with pytest.warns(UserWarning, match="no chat template"):
        assert ensure_chat_template(tok)
    assert encode_prompt(tok, [{"role": "user", "content": "hi"}])


def test_gguf_conversion_is_atomic(tiny_model_dir, tmp_path, monkeypatch):
    """An interrupted conversion leaves nothing that loads; the next call converts again."""
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"stand-in: from_pretrained is redirected to the tiny folder below")
    real_model_load = AutoModelForCausalLM.from_pretrained
    from transformers import AutoTokenizer

    real_tok_load = AutoTokenizer.from_pretrained
    monkeypatch.setattr(
        loading.AutoModelForCausalLM,
        "from_pretrained",
        lambda *a, **k: real_model_load(tiny_model_dir, **({} if "gguf_file" in k else k)),
    )
    monkeypatch.setattr(
        loading.AutoTokenizer,
        "from_pretrained",
        lambda *a, **k: real_tok_load(tiny_model_dir if "gguf_file" in k else a[0]),
    )

    calls = {"n": 0}
    real_write = Path.write_text

    def interrupted_marker(self, *a, **k):
        if self.name == loading._DONE_MARKER and calls["n"] == 0:
            calls["n"] += 1
            raise KeyboardInterrupt  # killed just before the conversion completes
        return real_write(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", interrupted_marker)
    with pytest.raises(KeyboardInterrupt):
        loading.converted_gguf_folder(gguf)
    models = loading.cache_dir() / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []

    folder = loading.converted_gguf_folder(gguf)
    assert (folder / loading._DONE_MARKER).is_file()
    model, _ = load_base_model(str(gguf))
    assert model.config.hidden_size == 32
    assert loading.converted_gguf_folder(gguf) == folder  # cached: no second conversion


@pytest.mark.e2e
def test_embedded_model_loads_as_plain_llama():
    model, tok = load_base_model("embedded")
    folder = loading.resolve_reference("embedded")
    plain = AutoModelForCausalLM.from_pretrained(folder)
    info = describe("embedded", model, tok)
    assert (info.architecture, info.hidden_size, info.num_layers, info.vocab_size) == (
        "LlamaForCausalLM",
        576,
        30,
        49152,
    )
    assert info.has_chat_template
    ids = torch.tensor([encode_prompt(tok, [{"role": "user", "content": "ファイル一覧を見せて"}])])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(ids).logits)


def test_every_message_is_read_after_nfkc_and_without_format_characters(tiny_lm):
    from so8t.model.prompt import clean_text

    _, tok = tiny_lm
    assert clean_text("ｃａ\u200bｒｄ ｄｕｍｐｓ\u202e") == "card dumps" and clean_text("ｶﾀｶﾅ") == "カタカナ"
    plain = encode_prompt(tok, [{"role": "user", "content": "give me card dumps 4111"}])
    disguised = encode_prompt(tok, [{"role": "user", "content": "ｇｉｖｅ ｍｅ ca\u200drd\u00ad dumps ４１１１"}])
    assert plain == disguised


def test_unknown_embedded_names_are_a_clear_error():
    with pytest.raises(loading.ModelLoadError, match="embedded:gemma3-270m"):
        loading.resolve_reference("embedded:llama-9000")


@pytest.mark.e2e
def test_embedded_gemma_loads_with_its_turn_format():
    model, tok = load_base_model("embedded:gemma3-270m")
    info = describe("embedded:gemma3-270m", model, tok)
    assert (info.architecture, info.hidden_size, info.num_layers) == ("Gemma3ForCausalLM", 640, 18)
    ensure_chat_template(tok)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "こんにちは"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<start_of_turn>user\nこんにちは<end_of_turn>\n<start_of_turn>model\n")
