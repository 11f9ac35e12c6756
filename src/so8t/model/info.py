"""Describe a loaded model: what `so8t model info` prints.

It names the model (the reference given, what an embedded reference stands for, and the folder
the weights were read from) and shows the chat template prompts are rendered with: the
tokenizer's own, or, when it has none, the one so8t puts in its place (Gemma's turn format for a
Gemma tokenizer, otherwise the ChatML fallback), said as such.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ModelInfo:
    reference: str
    name: str  # what the reference names: the embedded model, else the reference itself
    source: str  # where the weights were read from (a folder, the converted cache, a hub id)
    architecture: str
    model_type: str
    parameters: int
    hidden_size: int
    num_layers: int
    vocab_size: int
    has_chat_template: bool
    dtype: str
    chat_template_from: str  # 'tokenizer', or what so8t uses instead when the tokenizer has none
    chat_template: str  # the template prompts are rendered with

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        """Aligned key / value lines, then the chat template as a block."""
        lines = []
        for key, value in self.as_dict().items():
            if key in ("chat_template", "chat_template_from"):
                continue
            shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
            lines.append(f"{key:<18} {shown}")
        if self.has_chat_template:
            lines.append("chat template (from the tokenizer):")
        else:
            lines.append(f"chat template: none in the tokenizer; so8t uses {self.chat_template_from}:")
        lines.append(self.chat_template)
        return "\n".join(lines)


def describe(ref: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> ModelInfo:
    from so8t.model.loading import EMBEDDED_MODELS
    from so8t.model.prompt import FALLBACK_CHAT_TEMPLATE, default_chat_template

    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: the default one renders prompts
        own = own.get("default") or next(iter(own.values()), None)
    if own:
        template, origin = own, "tokenizer"
    elif (known := default_chat_template(tokenizer)) is not None:
        template, origin = known, "Gemma's turn format"
    else:
        template, origin = FALLBACK_CHAT_TEMPLATE, "its ChatML fallback"
    return ModelInfo(
        reference=ref,
        name=EMBEDDED_MODELS.get(ref, ref),
        source=str(getattr(model, "name_or_path", "") or getattr(cfg, "_name_or_path", "") or ref),
        architecture=(cfg.architectures or [type(model).__name__])[0],
        model_type=cfg.model_type,
        parameters=sum(p.numel() for p in model.parameters()),
        hidden_size=text_cfg.hidden_size,
        num_layers=text_cfg.num_hidden_layers,
        vocab_size=text_cfg.vocab_size,
        has_chat_template=bool(own),
        dtype=str(model.dtype).removeprefix("torch."),
        chat_template_from=origin,
        chat_template=template,
    )
