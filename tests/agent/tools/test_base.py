import pytest
from pydantic import BaseModel, ConfigDict, Field

from so8t.agent.tools import ToolAction, ToolError, Toolset


class EchoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=100)
    times: int = Field(default=1, ge=1, le=3)


def _toolset(ran):
    return Toolset(
        [
            ToolAction(
                "echo.say", "repeat text", EchoArgs, "read", lambda a: ran.append(a) or {"text": a.text * a.times}
            )
        ],
        max_args_bytes=300,
    )


def test_a_valid_call_is_canonical_and_runs_only_when_executed():
    ran = []
    ts = _toolset(ran)
    call = ts.validate("echo.say", {"times": 2, "text": "やあ"})
    assert call.canonical == '{"arguments":{"text":"やあ","times":2},"name":"echo.say"}' and not ran
    assert ts.execute(call) == {"text": "やあやあ"} and len(ran) == 1
    assert ts.schemas()[0]["function"]["parameters"]["properties"]["times"]["maximum"] == 3


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("echo.shout", {"text": "x"}, "unknown tool 'echo.shout'; available: echo.say"),
        ("echo.say", {"text": "x", "sudo": True}, "sudo: Extra inputs are not permitted"),
        ("echo.say", {"text": "x", "times": 9}, "times: Input should be less than or equal to 3"),
        ("echo.say", ["x"], "arguments must be a JSON object"),
        ("echo.say", {"text": "x" * 400}, "over the limit of 300"),
        ("echo.say", {"text": float("nan")}, "NaN"),
    ],
)
def test_bad_calls_are_refused_with_the_reason_and_nothing_runs(name, args, message):
    ran = []
    with pytest.raises(ToolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _toolset(ran).validate(name, args)
    assert not ran


def test_actions_are_unique_and_risks_known():
    ts = _toolset([])
    with pytest.raises(ValueError, match="defined twice"):
        ts.add(ts.actions["echo.say"])
    with pytest.raises(ValueError, match="risk 'scary'"):
        ts.add(ToolAction("echo.other", "", EchoArgs, "scary", lambda a: {}))
