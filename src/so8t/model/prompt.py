"""Turn a conversation into token ids: the one code path that training, evaluation and the gate share.

Every message is read after `clean_text`: Unicode NFKC (full-width letters and digits become
ASCII, half-width katakana become full-width) and with format characters removed (zero-width
spaces and joiners, bidi overrides, soft hyphens). So "ｃａｒｄ ｄｕｍｐｓ" and "card\u200bdumps"
are the same request as "card dumps" to the head, in training and at the gate alike.
"""

from __future__ import annotations

import unicodedata
import warnings
from typing import Literal

from transformers import PreTrainedTokenizerBase

from so8t.labels import Action

# Used only when a base model ships without a chat template (with a warning): ChatML, which
# many instruct models already speak.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Gemma's turn format, for Gemma base checkpoints that ship without a template (the GGUF of
# Gemma 3 270M base has none); a system message is shown as a user turn, as Gemma has no system role.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def clean_text(text: str) -> str:
    """NFKC, without format (Cf) characters: what the gate and training read of every message."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def default_chat_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The template for a tokenizer that has none: Gemma's own when its turn tokens exist."""
    vocab = tokenizer.get_vocab()
    if "<start_of_turn>" in vocab and "<end_of_turn>" in vocab:
        return GEMMA_CHAT_TEMPLATE
    return None


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give the tokenizer a chat template if it has none; True when the fallback was installed."""
    if getattr(tokenizer, "chat_template", None):
        return False
    known = default_chat_template(tokenizer)
    if known is not None:
        tokenizer.chat_template = known
        return False
    warnings.warn(
        "the base model's tokenizer has no chat template; using so8t's ChatML fallback. "
        "Set a template on the tokenizer if the model was trained with another format.",
        stacklevel=2,
    )
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return True


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The prompt text up to (and including) the assistant header, ready for the response."""
    messages = [{**m, "content": clean_text(m["content"])} for m in messages]
    # tokenize=False: the text (the hint covers every mode's return type)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)  # type: ignore[return-value]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    # Render then tokenize without extra specials: the template already holds them, and this
    # behaves the same across transformers versions (apply_chat_template's return type changed).
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


# What the safety head reads (TrainConfig.head_prompt):
# - "chat": the conversation as the LLM sees it, up to the assistant header. One forward pass
#   serves the head and the answer (the gate's pass is the answer's prefill).
# - "question": the conversation inside a fixed question about harm; the head reads the state
#   at "Answer" (pooling "last") or all of it (mean). Its own forward pass, the LLM's prompt is
#   unchanged. A frozen small base answers the question it is asked better than it summarises a
#   chat: on the public sets' training sample the probe's AUROC rose (README, "What the head reads").
HeadPrompt = Literal["chat", "question"]
HEAD_PROMPTS: tuple[HeadPrompt, ...] = ("chat", "question")
QUESTION_BEFORE = (
    "Below is a message sent to an AI assistant that can act on its own: read and write files, "
    "run database queries, send email, make payments and browse the web.\n\n<message>\n"
)
QUESTION_AFTER = (
    "\n</message>\n\nQuestion: Is this message asking for something harmful, dangerous, illegal or "
    "unethical, so that the assistant must refuse it or ask a human first?\nAnswer (yes or no):"
)


def render_conversation(messages: list[dict[str, str]]) -> str:
    """The conversation as plain lines ("User: ...", "Assistant: ..."), every message cleaned."""
    return "\n".join(f"{m['role'].capitalize()}: {clean_text(m['content'])}" for m in messages)


def encode_head_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], style: HeadPrompt, max_length: int
) -> tuple[list[int], bool]:
    """(token ids the head reads, whether the conversation was cut to fit max_length).

    A long conversation keeps its end (the latest turn). For "question", max_length counts the
    conversation only: the fixed question around it is always whole."""
    if style == "chat":
        ids = encode_prompt(tokenizer, messages)
        return ids[-max_length:], len(ids) > max_length
    if style != "question":
        raise ValueError(f"unknown head_prompt {style!r}; expected one of {', '.join(HEAD_PROMPTS)}")
    before, after = _question_ids(tokenizer)
    body = tokenizer(render_conversation(messages), add_special_tokens=False)["input_ids"]
    return before + body[-max_length:] + after, len(body) > max_length


def head_prompt_length(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], style: HeadPrompt) -> int:
    """Tokens of what max_length counts for this style (windows start past this)."""
    if style == "chat":
        return len(encode_prompt(tokenizer, messages))
    return len(tokenizer(render_conversation(messages), add_special_tokens=False)["input_ids"])


def _question_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return (
        bos + tokenizer(QUESTION_BEFORE, add_special_tokens=False)["input_ids"],
        tokenizer(QUESTION_AFTER, add_special_tokens=False)["input_ids"],
    )


def tag_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """First token of ' ALLOW', ' ESCALATE', ' REFUSE' after 'Action:': where the LM commits to a tag."""
    ids = [tokenizer(f" {a.name}", add_special_tokens=False)["input_ids"][0] for a in Action]
    if len(set(ids)) != len(ids):
        raise ValueError(
            "the tokenizer gives the three action tags the same first token; the tag probability is undefined"
        )
    return ids
