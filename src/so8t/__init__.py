"""so8t: a trained ALLOW / ESCALATE / REFUSE safety gate on an unmodified LLM."""

__version__ = "0.1.0"
