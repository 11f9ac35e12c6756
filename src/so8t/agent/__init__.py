"""Stage 6: the agent around the gate: router, LLM backends, approvals, audit, tools."""
