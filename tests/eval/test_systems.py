"""The systems `so8t eval` compares share one interface: N x 3 probabilities for the records, the
thresholds that decide them, and a logged phase only for a pass worth announcing."""

import numpy as np
import pytest

from so8t.data import load_builtin
from so8t.eval import baselines as bl
from so8t.eval.phases import Phases
from so8t.eval.systems import Keywords, Scored, balanced_sample, score


def test_a_quick_system_is_scored_through_the_interface_without_a_phase_line():
    recs = load_builtin("test")[:5]
    logged: list[str] = []
    probs = score(Keywords(), "set", recs, Phases(logged.append, progress=False))
    assert probs.shape == (5, 3) and np.array_equal(probs, bl.keyword_probs(recs))
    assert logged == []


def test_a_scored_system_gives_its_probabilities_and_refuses_other_records():
    recs = load_builtin("test")[:3]
    held = np.full((3, 3), 1 / 3)
    system = Scored("run:other", held, None)
    assert score(system, "set", recs, Phases(lambda _: None, progress=False)) is held
    with pytest.raises(ValueError, match="run:other was scored on 3 prompts, asked for 2"):
        system.probs(recs[:2])


def test_the_probe_sample_takes_the_same_number_from_each_label():
    recs = load_builtin("train")
    sample = balanced_sample(recs, 30, seed=0)
    counts = np.bincount([int(r.required_label()) for r in sample], minlength=3)
    assert counts.tolist() == [10, 10, 10]
    assert [r.id for r in sample] == [r.id for r in balanced_sample(recs, 30, seed=0)]
