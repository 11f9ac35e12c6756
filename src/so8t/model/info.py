"""Describe a loaded model: what `so8t model info` prints."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ModelInfo:
    reference: str
    architecture: str
    model_type: str
    parameters: int
    hidden_size: int
    num_layers: int
    vocab_size: int
    has_chat_template: bool
    dtype: str

    def as_dict(self) -> dict:
        return asdict(self)


def describe(ref: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> ModelInfo:
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return ModelInfo(
        reference=ref,
        architecture=(cfg.architectures or [type(model).__name__])[0],
        model_type=cfg.model_type,
        parameters=sum(p.numel() for p in model.parameters()),
        hidden_size=text_cfg.hidden_size,
        num_layers=text_cfg.num_hidden_layers,
        vocab_size=text_cfg.vocab_size,
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        dtype=str(model.dtype).removeprefix("torch."),
    )
