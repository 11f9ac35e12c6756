from collections import Counter

import torch

from so8t.train.batching import class_weights, epoch_order


def test_sampler_balances_classes_and_is_reproducible():
    labels = [0] * 10 + [1] * 4 + [2] * 2
    order = epoch_order(labels, "sampler", seed=3, epoch=0)
    assert Counter(labels[i] for i in order) == {0: 10, 1: 10, 2: 10}
    assert order == epoch_order(labels, "sampler", seed=3, epoch=0)
    assert order != epoch_order(labels, "sampler", seed=3, epoch=1)
    plain = epoch_order(labels, "none", seed=3, epoch=0)
    assert sorted(plain) == list(range(16))


def test_class_weights_are_inverse_frequency_with_mean_one():
    w = class_weights([0, 0, 0, 1])
    assert torch.allclose(w, torch.tensor([4 / 9, 4 / 3, 4 / 3]) / torch.tensor([4 / 9, 4 / 3, 4 / 3]).mean())
    assert abs(w.mean().item() - 1.0) < 1e-6


def test_twins_are_kept_adjacent_and_counts_are_kept():
    from collections import Counter

    from so8t.train.batching import keep_twins_together

    pairs = ["a", None, "b", "a", "b", None]
    order = [3, 1, 4, 5, 0, 2, 3]
    out = keep_twins_together(order, pairs)
    assert out == [3, 0, 1, 4, 2, 5, 3, 0]
    assert Counter(out)[1] == 1 and Counter(out)[5] == 1
    for k, i in enumerate(out[:-1]):
        if pairs[i] is not None and (
            k == 0 or out[k - 1] != [j for j, p in enumerate(pairs) if p == pairs[i] and j != i][0]
        ):
            assert pairs[out[k + 1]] == pairs[i]


def test_sft_response_tokens_keeps_the_tag_and_the_start_and_leaves_the_prompt_alone(tiny_lm):
    from so8t.data import load_builtin
    from so8t.train.batching import encode_record

    _, tok = tiny_lm
    rec = load_builtin("train")[0]
    full, short = encode_record(rec, tok, 512), encode_record(rec, tok, 512, response_tokens=8)
    assert (
        short.prompt_len == full.prompt_len and short.input_ids[: short.prompt_len] == full.input_ids[: full.prompt_len]
    )
    assert len(short.input_ids) == short.prompt_len + 8 < len(full.input_ids)
    assert short.tag_pos == full.tag_pos and short.input_ids[short.tag_pos] == full.input_ids[full.tag_pos]
