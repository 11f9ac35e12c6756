"""Agent tools (files, SQL, browser, mail, calendar): each call is validated, gated, then run."""

from so8t.agent.tools.base import RISKS, Risk, ToolAction, ToolError, Toolset, ValidatedCall

__all__ = ["RISKS", "Risk", "ToolAction", "ToolError", "Toolset", "ValidatedCall"]
