"""Stage 2: load a base model by reference, describe it (later: the safety head and run save/load)."""
from so8t.model.info import ModelInfo, describe
from so8t.model.prompt import encode_prompt, ensure_chat_template, render_prompt
from so8t.model.loading import EMBEDDED, ModelLoadError, cache_dir, load_base_model, load_tokenizer, resolve_reference

__all__ = ["EMBEDDED", "ModelInfo", "ModelLoadError", "cache_dir", "describe", "encode_prompt", "ensure_chat_template", "load_base_model",
           "render_prompt",
           "load_tokenizer", "resolve_reference"]
