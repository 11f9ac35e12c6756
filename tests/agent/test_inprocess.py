import pytest

from so8t.agent.inprocess import InProcessBackend
from so8t.gate import Gate


@pytest.fixture(scope="module")
def gate(tiny_run):
    g = Gate.load(tiny_run[0])
    yield g
    g.close()


def _count_tokens(model):
    seen = []
    emb = model.body.get_input_embeddings()
    handle = emb.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    return seen, handle


def test_answer_reuses_the_gates_prefill_and_matches_a_fresh_generation(gate):
    backend = InProcessBackend(gate)
    convo = [{"role": "user", "content": "Please list the files in my reports folder."}]
    seen, handle = _count_tokens(gate.model)
    try:
        fresh = backend.complete(convo, max_tokens=8)
        n_prompt = seen[0]
        seen.clear()
        decision, prefill = gate.decide_with_prefill(convo)
        seen.clear()  # what generation itself encodes
        reused = backend.complete(convo, max_tokens=8, prefill=prefill)
    finally:
        handle.remove()
    assert reused == fresh
    assert seen[0] == 1 and n_prompt > 5  # the prompt was not encoded again
    assert backend.prefill_tokens_saved == n_prompt - 1


def test_needs_a_ready_gate(tmp_path):
    with pytest.raises(ValueError, match="needs a loaded gate"):
        InProcessBackend(Gate.load(tmp_path / "missing"))
