"""Stage 2: load a base model by reference, the safety head, and a run on disk (adapter + head)."""

from so8t.model.head import SafetyHead, load_head, pool, resolve_head_layers, save_head
from so8t.model.info import ModelInfo, describe
from so8t.model.loading import EMBEDDED, ModelLoadError, cache_dir, load_base_model, load_tokenizer, resolve_reference
from so8t.model.prompt import encode_prompt, ensure_chat_template, render_prompt, tag_token_ids
from so8t.model.run import (
    RUN_MARKER,
    LoadedRun,
    Run,
    RunError,
    fingerprint,
    load_adapter_and_head,
    load_run,
    load_run_config,
    save_artifacts,
)
from so8t.model.safety_model import SafetyModel, SafetyOutput
from so8t.model.scoring import predict_probs, prompt_outputs

__all__ = [
    "EMBEDDED",
    "ModelInfo",
    "ModelLoadError",
    "cache_dir",
    "describe",
    "encode_prompt",
    "ensure_chat_template",
    "load_base_model",
    "render_prompt",
    "tag_token_ids",
    "load_tokenizer",
    "resolve_reference",
    "RUN_MARKER",
    "LoadedRun",
    "Run",
    "RunError",
    "SafetyHead",
    "SafetyModel",
    "SafetyOutput",
    "fingerprint",
    "load_adapter_and_head",
    "load_head",
    "load_run",
    "load_run_config",
    "pool",
    "resolve_head_layers",
    "save_artifacts",
    "save_head",
    "predict_probs",
    "prompt_outputs",
]
