"""`so8t export RUN --out DIR`: a trained run as files other runtimes load.

DIR receives:

- ``model/``: the base model with the run's LoRA adapter merged in (peft ``merge_and_unload``),
  as safetensors, with the run's tokenizer and its chat template. Its logits equal base+adapter
  (float32 rounding only).
- ``head.safetensors``, ``head.json`` (and ``thresholds.json`` when the run is calibrated): the
  safety head, so the gate can be rebuilt on the merged model (``load_export``); the head reads
  hidden states, which merging does not change.
- ``model-f16.gguf`` and ``model-q8_0.gguf``, written with the ``gguf`` package, for the
  architectures in ``GGUF_ARCHITECTURES`` (Llama-family models with a byte-level BPE tokenizer,
  such as SmolLM2). The tensors and metadata follow llama.cpp's own converter (q_proj/k_proj rows
  permuted for its rotary layout, norms kept in float32). Anything else (Gemma 3 included) gets
  no GGUF and a note that says why, with the llama.cpp command that converts ``model/``.
- ``Modelfile`` for Ollama: FROM the GGUF, a TEMPLATE in Ollama's Go-template syntax for the
  chat formats so8t can translate (ChatML, Gemma), stop tokens, a few PARAMETERs; a default
  system prompt of the template becomes SYSTEM.
- ``README.txt``: how to quantize to Q4_K_M with llama.cpp and serve the model behind
  ``so8t serve --set backend=openai`` (Ollama or llama-server); ``export.json``: what was written.

Guarantees: RUN must be a complete run and DIR absent or empty (or ``force``), checked before
any weight is loaded, else ExportError / RunError naming the path. With ``force`` only the
names above are replaced in DIR; other files there are left alone.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from so8t.model.head import HEAD_CONFIG, HEAD_WEIGHTS
from so8t.model.run import RunError, check_run, fingerprint

MODEL_DIR = "model"
EXPORT_MANIFEST = "export.json"
GGUF_ARCHITECTURES = ("llama",)  # HF model_type values written as GGUF
GGUF_TYPES = ("f16", "q8_0")
OWNED = (
    MODEL_DIR,
    HEAD_WEIGHTS,
    HEAD_CONFIG,
    "thresholds.json",
    "Modelfile",
    "README.txt",
    EXPORT_MANIFEST,
    *(f"model-{t}.gguf" for t in GGUF_TYPES),
)
PROBE = [
    {"role": "system", "content": "SYS"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]


class ExportError(RuntimeError):
    """The export cannot be done as asked; the message names the path or the setting."""


class GGUFUnsupported(ExportError):
    """This model cannot be written as GGUF by so8t; the message says why and what to run instead."""


@dataclass
class ExportResult:
    out: Path
    files: list[str] = field(default_factory=list)  # relative to out
    gguf: list[str] = field(default_factory=list)  # the GGUF files written
    notes: list[str] = field(default_factory=list)  # what was not written, and why

    def summary(self) -> str:
        lines = [f"exported to {self.out}:"] + [f"  {f}" for f in self.files]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- checks


def check_out(out: Path, force: bool) -> None:
    """DIR must be absent, an empty folder, or (with force) a folder."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(
            f"--out {out} exists and is not empty; choose a new folder, or pass --force to replace "
            f"the export's files in it ({', '.join(OWNED[:3])}, ...)"
        )


# ----------------------------------------------------------------------------- chat template -> Ollama


def _render(tokenizer, messages: list[dict]) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that cannot render the probe is simply not recognised
        return None


def _chatml(messages: list[dict], system: str | None) -> str:
    """What the ChatML TEMPLATE below renders (Ollama passes the system text as .System)."""
    out = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    for m in messages:
        if m["role"] != "system":
            out += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return out + ("<|im_start|>assistant\n" if messages[-1]["role"] != "assistant" else "")


CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""

# Ollama's own Gemma 3 template: a system message is a user turn of its own (HF's Gemma template
# puts it before the first user message instead).
GEMMA_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""


@dataclass
class ChatFormat:
    name: str  # "chatml", "gemma", or "unknown"
    template: str | None  # Ollama TEMPLATE
    stop: list[str]
    system: str | None = None  # a default system prompt the template inserts


def chat_format(tokenizer) -> ChatFormat:
    """Which chat format the tokenizer's template renders, found by rendering probe conversations
    (not by reading the Jinja source): ChatML (with its default system prompt, if any), Gemma."""
    eos = [tokenizer.eos_token] if getattr(tokenizer, "eos_token", None) else []
    full = _render(tokenizer, PROBE)
    if full is not None and full == _chatml(PROBE, "SYS"):
        only_user = _render(tokenizer, PROBE[1:2]) or ""
        system = None
        if only_user != _chatml(PROBE[1:2], None):
            m = (
                re.fullmatch(
                    r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n",
                    only_user[: -len(_chatml(PROBE[1:2], None))],
                    flags=re.DOTALL,
                )
                if only_user.endswith(_chatml(PROBE[1:2], None))
                else None
            )
            if m is None:
                return ChatFormat("unknown", None, eos)
            system = m.group(1)
        return ChatFormat("chatml", CHATML_TEMPLATE, _unique(["<|im_start|>", "<|im_end|>", *eos]), system)
    turns = _render(tokenizer, PROBE[1:])
    gemma = (
        "<start_of_turn>user\nU1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
        "<start_of_turn>user\nU2<end_of_turn>\n<start_of_turn>model\n"
    )
    if (
        turns is not None
        and turns.endswith(gemma)
        and turns[: -len(gemma)] in ("", getattr(tokenizer, "bos_token", ""))
    ):
        return ChatFormat("gemma", GEMMA_TEMPLATE, _unique(["<end_of_turn>", *eos]))
    return ChatFormat("unknown", None, eos)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _quote(text: str) -> str:
    if '"""' in text:
        raise ExportError(f'cannot write {text[:40]!r}... into the Modelfile: it contains """')
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, fmt: ChatFormat, context_length: int) -> str:
    lines = [
        "# Ollama Modelfile written by so8t export. Create the model with:",
        "#   ollama create so8t-llm -f Modelfile",
        f"FROM ./{gguf_name}",
        "",
    ]
    if fmt.template is not None:
        lines += [
            f"# chat format: {fmt.name} (the tokenizer's chat template, in Ollama's Go-template syntax)",
            f"TEMPLATE {_quote(fmt.template)}",
            "",
        ]
    else:
        lines += [
            "# TEMPLATE not written: the chat template is not one so8t translates (ChatML, Gemma);",
            "# Ollama then uses the GGUF's tokenizer.chat_template if it recognises it, else write one here.",
            "",
        ]
    if fmt.system:
        lines += ["# the template's default system prompt", f"SYSTEM {_quote(fmt.system)}", ""]
    lines += [f'PARAMETER stop "{s}"' for s in fmt.stop]
    lines += [
        "PARAMETER temperature 0.2",
        "PARAMETER top_p 0.9",
        "PARAMETER repeat_penalty 1.1",
        f"PARAMETER num_ctx {min(int(context_length), 8192)}",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- GGUF


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _rope_theta(cfg) -> tuple[float, str]:
    params = getattr(cfg, "rope_parameters", None) or {}
    scaling = getattr(cfg, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return float(theta), str(kind)


def _pre_tokenizer(pre: dict | None) -> str | None:
    """llama.cpp's pre-tokenizer name for a tokenizer.json pre_tokenizer, or None if not known."""

    def byte_level(p: dict) -> bool:
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space", False)

    if pre is None:
        return None
    if byte_level(pre):
        return "gpt2"
    items = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if (
        items
        and len(items) == 2
        and items[0].get("type") == "Digits"
        and items[0].get("individual_digits")
        and byte_level(items[1])
    ):
        return "smollm"
    return None


def gguf_support(model, tokenizer) -> str | None:
    """None when so8t can write this model as GGUF, else why not (the reason names the part)."""
    cfg = _text_config(model.config)
    kind = cfg.model_type
    if kind not in GGUF_ARCHITECTURES:
        why = (
            f"the architecture is {kind!r}; so8t writes GGUF for {', '.join(GGUF_ARCHITECTURES)} "
            "(Llama-family, e.g. SmolLM2)"
        )
        if kind.startswith("gemma"):
            why += (
                "; Gemma 3 needs its SentencePiece vocabulary with scores, its RMSNorm weights shifted by one "
                "(Gemma computes with 1+w), and its sliding-window attention and local RoPE settings, which "
                "llama.cpp's own converter knows and so8t does not re-implement"
            )
        return why
    theta_kind = _rope_theta(cfg)[1]
    if theta_kind != "default":
        return f"RoPE scaling {theta_kind!r} is not written by so8t (only plain RoPE)"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "attention or MLP biases are not written by so8t"
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if head_dim * cfg.num_attention_heads != cfg.hidden_size:
        return "head_dim x heads differs from hidden_size, which so8t does not write"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "the tokenizer is not a fast (tokenizer.json) tokenizer"
    tj = json.loads(backend.to_str())
    if tj["model"].get("type") != "BPE" or tj["model"].get("byte_fallback"):
        return (
            f"the tokenizer is {tj['model'].get('type')} (byte_fallback={tj['model'].get('byte_fallback')}); "
            "so8t writes byte-level BPE (GPT-2 style) vocabularies only"
        )
    if tj.get("normalizer") is not None:
        return "the tokenizer has a normalizer, which a GPT-2 style GGUF vocabulary cannot express"
    if _pre_tokenizer(tj.get("pre_tokenizer")) is None:
        return (
            f"the tokenizer's pre-tokenizer {json.dumps(tj.get('pre_tokenizer'))[:120]} is not one so8t maps "
            "to llama.cpp (byte-level GPT-2 regex, or SmolLM's digits + byte-level)"
        )
    return None


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout (halves) -> llama.cpp's (interleaved pairs), as convert_hf_to_gguf.py does."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of permute_qk."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model) -> list[tuple[str, str, np.ndarray]]:
    """(GGUF name, HF name, float32 array as stored) for every weight, q/k permuted."""
    import gguf

    cfg = _text_config(model.config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    out = []
    for hf_name, t in model.state_dict().items():
        if "rotary_emb" in hf_name:
            continue
        if hf_name == "lm_head.weight" and getattr(cfg, "tie_word_embeddings", False):
            continue  # llama.cpp reuses token_embd
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFUnsupported(f"no GGUF name for tensor {hf_name!r}")
        data = t.detach().float().cpu().numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = permute_qk(data, heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = permute_qk(data, kv_heads)
        out.append((name, hf_name, data))
    return out


def _vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    import gguf

    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    by_id = {i: tok for tok, i in tj["model"]["vocab"].items()}
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(int(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED))
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(int(gguf.TokenType.NORMAL))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    return tokens, types, merges


def write_gguf(model, tokenizer, path: Path, kind: str, name: str) -> None:
    """One GGUF file: 'f16' (matrices float16) or 'q8_0' (matrices Q8_0 where a row is a multiple
    of 32 values, else float16); 1-D tensors (norms) stay float32, as in llama.cpp's converter."""
    import gguf

    if kind not in GGUF_TYPES:
        raise ExportError(f"GGUF type {kind!r}: expected one of {', '.join(GGUF_TYPES)}")
    cfg = _text_config(model.config)
    theta, _ = _rope_theta(cfg)
    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    partial = path.with_name(path.name + ".partial")  # a failed write leaves no file that looks whole
    w = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_name(name)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(int(cfg.num_attention_heads))
    w.add_head_count_kv(int(cfg.num_key_value_heads or cfg.num_attention_heads))
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if kind == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_vocab_size(int(cfg.vocab_size))
    w.add_rope_dimension_count(int(cfg.hidden_size // cfg.num_attention_heads))
    tokens, types, merges = _vocab(tokenizer, int(cfg.vocab_size))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_tokenizer(tj.get("pre_tokenizer")) or "default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for token, add in (
        ("bos", w.add_bos_token_id),
        ("eos", w.add_eos_token_id),
        ("unk", w.add_unk_token_id),
        ("pad", w.add_pad_token_id),
    ):
        tid = getattr(tokenizer, f"{token}_token_id", None)
        if tid is not None:
            add(int(tid))
    probe = tokenizer("a")["input_ids"]
    w.add_add_bos_token(bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id)
    if getattr(tokenizer, "chat_template", None):
        w.add_chat_template(tokenizer.chat_template)
    if kind == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for gname, _, data in gguf_tensors(model):
        if data.ndim == 1:
            w.add_tensor(gname, data.astype(np.float32))
        elif kind == "q8_0" and data.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gname, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            half = data.astype(np.float16)
            if not np.isfinite(half).all():
                raise ExportError(f"{path.name}: tensor {gname} has values beyond float16's range (|x| > 65504)")
            w.add_tensor(gname, half)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    partial.replace(path)


# ----------------------------------------------------------------------------- README.txt


def readme_text(out: Path, result: ExportResult, fmt: ChatFormat, gguf_note: str | None) -> str:
    gguf_main = "model-q8_0.gguf" if "model-q8_0.gguf" in result.gguf else "model-f16.gguf"
    parts = [
        "so8t export",
        "===========",
        "",
        "model/            the base model with the LoRA adapter merged (safetensors), its tokenizer and chat template",
        "head.safetensors  the safety head (with head.json, and thresholds.json when the run was calibrated):",
        "head.json         the gate can be rebuilt on model/ with so8t.model.export.load_export(DIR)",
        "Modelfile         for Ollama: FROM the GGUF, the chat TEMPLATE, stop tokens, parameters",
        "export.json       what was exported, from which run",
    ]
    if result.gguf:
        parts += [f"{g:<18}GGUF for llama.cpp and Ollama" for g in result.gguf]
    parts += [""]
    if gguf_note:
        parts += [
            "No GGUF was written: " + gguf_note + ".",
            "Convert model/ with llama.cpp's converter instead:",
            f"  python convert_hf_to_gguf.py {out}/model --outtype f16 --outfile {out}/model-f16.gguf",
            "(the Modelfile's FROM then finds it; edit FROM if you name it otherwise).",
            "For Gemma, llama.cpp's converter reads the SentencePiece file tokenizer.model; model/ holds",
            "tokenizer.json only when the base was loaded from a GGUF, so if it asks for tokenizer.model,",
            "copy that file from the original checkpoint (e.g. google/gemma-3-270m) into model/ first.",
            "",
        ]
        gguf_main = "model-f16.gguf"
    parts += [
        "Quantize to Q4_K_M (llama.cpp's llama-quantize; start from the f16 file):",
        f"  llama-quantize {out}/model-f16.gguf {out}/model-Q4_K_M.gguf Q4_K_M",
        "  then set FROM ./model-Q4_K_M.gguf in the Modelfile to use it.",
        "",
        "Serve it behind the gate (so8t serve decides; the LLM only answers what the gate allows):",
        "",
        "  Ollama:",
        f"    cd {out} && ollama create so8t-llm -f Modelfile",
        "    so8t serve RUN --set backend=openai --set backend_url=http://localhost:11434/v1 \\",
        "                   --set backend_model=so8t-llm",
        "",
        "  llama-server (llama.cpp):",
        f"    llama-server -m {out}/{gguf_main} --port 8080 --jinja",
        "    so8t serve RUN --set backend=openai --set backend_url=http://localhost:8080/v1 \\",
        "                   --set backend_model=so8t-llm",
        "",
        "RUN is the trained run folder (the gate still loads it). A backend that is down, times out or",
        "answers garbage makes so8t serve answer 502/504 with an OpenAI-style error, never a fake answer.",
        "",
        f"Chat format: {fmt.name}" + ("" if fmt.template else " (no Ollama TEMPLATE written; see the Modelfile)"),
        "",
    ]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- export / load


def _remove_owned(out: Path) -> None:
    for name in OWNED:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def export_run(
    run: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    gguf_types: tuple[str, ...] = GGUF_TYPES,
    progress: Callable[[str], Any] | None = None,
) -> ExportResult:
    """Export a complete run to ``out`` (see the module docstring). RunError: not a complete run;
    ExportError: ``out`` exists and is not empty (without force), or cannot be written."""
    from so8t.model.run import load_run

    say = progress or (lambda _msg: None)
    run, out = Path(run), Path(out)
    for kind in gguf_types:
        if kind not in GGUF_TYPES:
            raise ExportError(f"GGUF type {kind!r}: expected one of {', '.join(GGUF_TYPES)}")
    check_run(run)
    check_out(out, force)
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        raise ExportError(f"--out {out} is inside the run {run}; choose a folder outside it")
    say(f"loading {run} (base model + adapter)")
    model, tokenizer, meta = load_run(run, merge=True)
    merged = model.body
    if isinstance(merged, torch.nn.Module) and hasattr(merged, "peft_config"):
        raise ExportError(f"{run}: the adapter did not merge into the base model")
    out.mkdir(parents=True, exist_ok=True)
    if force:
        _remove_owned(out)
    result = ExportResult(out)

    say(f"writing {out / MODEL_DIR} (merged weights, tokenizer)")
    # nn.Module.__getattr__ types an attribute as Tensor | Module: mypy sees no method here
    merged.save_pretrained(str(out / MODEL_DIR), safe_serialization=True)  # type: ignore[operator]
    tokenizer.save_pretrained(str(out / MODEL_DIR))
    result.files.append(f"{MODEL_DIR}/")
    for name in (HEAD_WEIGHTS, HEAD_CONFIG, "thresholds.json"):
        if (run / name).is_file():
            shutil.copy2(run / name, out / name)
            result.files.append(name)

    note = gguf_support(merged, tokenizer)
    if note is None:
        stem = run.name or "so8t"
        for kind in gguf_types:
            say(f"writing model-{kind}.gguf")
            write_gguf(merged, tokenizer, out / f"model-{kind}.gguf", kind, name=stem)
            result.gguf.append(f"model-{kind}.gguf")
        result.files += result.gguf
    else:
        result.notes.append(f"no GGUF written: {note}; README.txt has the llama.cpp command that converts model/")

    fmt = chat_format(tokenizer)
    if fmt.template is None:
        result.notes.append(
            "the chat template is not one so8t translates to Ollama's syntax (ChatML, Gemma): the "
            "Modelfile has no TEMPLATE"
        )
    cfg = _text_config(merged.config)
    gguf_main = "model-q8_0.gguf" if "model-q8_0.gguf" in result.gguf else "model-f16.gguf"
    (out / "Modelfile").write_text(modelfile_text(gguf_main, fmt, cfg.max_position_embeddings), encoding="utf-8")
    result.files.append("Modelfile")
    (out / "README.txt").write_text(readme_text(out, result, fmt, note), encoding="utf-8")
    result.files.append("README.txt")
    merged_fingerprint = fingerprint(merged)  # type: ignore[arg-type]  # load_run(merge=True): a PreTrainedModel
    manifest = {
        "run": str(run.resolve()),
        "base_model": meta.get("base_model"),
        "base_fingerprint": meta.get("base_fingerprint"),
        "merged_fingerprint": merged_fingerprint,
        "architecture": cfg.model_type,
        "dtype": str(next(merged.parameters()).dtype).removeprefix("torch."),
        "gguf": result.gguf,
        "gguf_note": note,
        "chat_format": fmt.name,
        "files": result.files,
    }
    (out / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    result.files.append(EXPORT_MANIFEST)
    return result


def load_export(folder: str | Path):
    """(SafetyModel, tokenizer, head meta) from an export: the merged model with the run's head,
    the same head outputs as the run (the gate rebuilt without the adapter)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from so8t.model.head import load_head
    from so8t.model.safety_model import SafetyModel

    folder = Path(folder)
    missing = [n for n in (MODEL_DIR, HEAD_WEIGHTS, HEAD_CONFIG) if not (folder / n).exists()]
    if missing:
        raise RunError(
            f"{folder} is not a complete so8t export: {', '.join(missing)} missing "
            f"(make one with: so8t export RUN --out {folder})"
        )
    head, meta = load_head(folder)
    body = AutoModelForCausalLM.from_pretrained(str(folder / MODEL_DIR), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder / MODEL_DIR))
    model = SafetyModel(body, head, meta.get("pooling", "mean"), meta.get("head_prompt", "chat"))
    return model.eval(), tokenizer, meta
