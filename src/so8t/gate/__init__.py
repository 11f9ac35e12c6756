"""Stage 5: the Safety Gate: one forward pass + the head + thresholds, fail-closed."""

from so8t.gate.decision import Decision
from so8t.gate.gate import ConversationError, Gate, Prefill, normalize_conversation, views_of

__all__ = ["ConversationError", "Decision", "Gate", "Prefill", "normalize_conversation", "views_of"]
