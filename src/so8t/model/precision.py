"""How the gate's forward pass runs: the run's own setting, fp32, bf16 autocast, or int8.

- "run":  the run's `amp`, as it was trained and evaluated (the default);
- "fp32": no autocast;
- "bf16": bf16 autocast for the body's matmuls (the head stays fp32); fast where the CPU has
  native bf16 (AVX512-BF16 / AMX, `cpu_has_native_bf16`), correct but slow elsewhere;
- "int8": dynamic int8 quantization (torch.ao.quantization.quantize_dynamic) of every linear
  layer in the body's blocks, on the CPU: weights stored as int8, activations quantized per
  batch, the adapter merged into the base weights first. The embeddings, the LM head and the
  safety head stay fp32, so only the blocks' matmuls change.

A precision changes the scorer, so it is part of the gate's model_version ("...+int8"). Whether
int8 or bf16 keeps the decisions is measured, not assumed: bench/gate_latency.py prints the
decision agreement with fp32 and the safety KPIs of each on the test splits.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

PRECISIONS = ("run", "fp32", "bf16", "int8")


class PrecisionError(ValueError):
    """A precision this machine or this model cannot run; the message says why."""


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown gate precision {precision!r}; expected one of {', '.join(PRECISIONS)}")


def amp_for(precision: str, run_amp: str) -> str:
    """The autocast setting (scoring.autocast) a precision runs under."""
    check_precision(precision)
    return {"run": run_amp, "fp32": "none", "bf16": "bf16", "int8": "none"}[precision]


def quantize_int8(body: nn.Module) -> int:
    """Replace, in place, every nn.Linear of `body` except its LM head with a dynamically
    quantized int8 linear; returns how many were replaced. `body` must be a plain (merged)
    transformers model on the CPU."""
    params = list(body.parameters())
    if params and params[0].device.type != "cpu":
        raise PrecisionError(
            f"int8 runs the gate's forward on the CPU; this model is on {params[0].device} "
            "(on a GPU, train and serve with load_in_4bit instead)"
        )
    engine = torch.backends.quantized.engine
    if engine not in torch.backends.quantized.supported_engines or engine == "none":
        raise PrecisionError(
            f"int8 needs a quantized CPU engine; this torch build has {engine!r} "
            f"(supported: {', '.join(torch.backends.quantized.supported_engines)})"
        )
    if any("lora_" in name for name, _ in body.named_modules()):
        raise PrecisionError("int8: merge the LoRA adapter into the base weights first (load_run(merge=True))")
    # nn.Module.__getattr__ types an attribute as Tensor | Module: mypy sees no method here
    head = body.get_output_embeddings() if hasattr(body, "get_output_embeddings") else None  # type: ignore[operator]
    names = {name for name, m in body.named_modules() if type(m) is nn.Linear and m is not head}
    if not names:
        raise PrecisionError("int8: the model has no linear layers to quantize (is the adapter merged?)")
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch announces the move of its quantization to torchao; it still works
        warnings.filterwarnings("ignore", message=".*quantiz", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz", category=UserWarning)
        quantize_dynamic(body, {name: default_dynamic_qconfig for name in names}, dtype=torch.qint8, inplace=True)
    return len(names)


def cpu_has_native_bf16() -> bool | None:
    """True when the CPU advertises bf16 instructions (avx512_bf16 or amx_bf16), False when it
    does not, None where /proc/cpuinfo cannot say (not Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags
