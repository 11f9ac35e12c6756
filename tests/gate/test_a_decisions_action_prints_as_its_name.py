"""`print(Gate.load(run).decide(...).action)` shows ALLOW / ESCALATE / REFUSE, not 0 / 1 / 2,
while comparisons and the decision's JSON are unchanged (issue 17, item 12).

A run folder that does not exist gives a gate that comes up not ready and refuses every request:
a real Gate.load and decide without training a model.
"""

from __future__ import annotations

import json

from so8t.gate import Gate
from so8t.labels import Action


def test_a_decisions_action_prints_as_its_name_and_serialises_unchanged(tmp_path, capsys):
    decision = Gate.load(tmp_path / "no-run").decide("List my files")
    assert decision.action == Action.REFUSE == 2
    print(decision.action)
    assert capsys.readouterr().out == "REFUSE\n"
    assert f"action={decision.action}" == "action=REFUSE"
    assert json.loads(json.dumps(decision.to_dict()))["action"] == "REFUSE"
