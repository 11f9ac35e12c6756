import pytest
import torch

from so8t.model import SafetyHead, load_head, pool, save_head


def test_pooling_hand_computed():
    h = torch.tensor([[[1.0], [3.0], [5.0], [7.0]], [[2.0], [4.0], [6.0], [8.0]]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    assert pool(h, mask, "mean").squeeze(-1).tolist() == [2.0, 4.0]
    assert pool(h, mask, "last").squeeze(-1).tolist() == [3.0, 6.0]
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])  # left padding: found from the mask
    assert pool(h, left, "last").squeeze(-1).tolist() == [7.0, 8.0]
    with pytest.raises(ValueError):
        pool(h, mask, "max")


def test_head_shape_and_round_trip(tmp_path):
    head = SafetyHead(64)
    assert [m.__class__.__name__ for m in head.net] == ["Linear", "GELU", "Linear"]
    assert head.net[0].out_features == 32 and head.net[2].out_features == 3
    save_head(head, tmp_path, {"pooling": "last"})
    again, meta = load_head(tmp_path)
    x = torch.randn(5, 64)
    assert torch.equal(head(x), again(x)) and meta["pooling"] == "last"
    assert head(x.to(torch.bfloat16)).dtype == torch.float32  # fp32 whatever the body's dtype


def test_head_layers_resolve_to_upper_blocks_or_the_final_state():
    from so8t.model import resolve_head_layers

    assert resolve_head_layers("last", 30) == (-1,)
    assert resolve_head_layers("mix", 30) == (10, 13, 17, 20, 23, 27, 30)
    assert resolve_head_layers("mix", 18)[-1] == 18 and len(resolve_head_layers("mix", 2)) >= 1
    assert resolve_head_layers([4, -1], 8) == (4, -1)
    for bad in ("middle", [], [99]):
        with pytest.raises(ValueError, match="head_layers"):
            resolve_head_layers(bad, 8)


def test_layer_mix_reads_every_chosen_block_and_round_trips(tmp_path):
    head = SafetyHead(8, layers=(1, 3), combine="mix")
    hidden = [torch.randn(2, 5, 8) for _ in range(4)]  # embeddings + 3 blocks
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        head.mix.copy_(torch.tensor([0.0, 50.0]))  # all weight on block 3
    normed = torch.nn.functional.layer_norm(pool(hidden[3], mask, "mean"), (8,))
    assert torch.allclose(head.read(hidden, mask, "mean"), normed, atol=1e-5)
    hidden[1] = hidden[1] * 1000  # a block of another scale does not swamp the mix
    with torch.no_grad():
        head.mix.zero_()
    mixed = head.read(hidden, mask, "mean")
    assert mixed.abs().max() < 5
    save_head(head, tmp_path, {"pooling": "mean"})
    again, meta = load_head(tmp_path)
    assert again.layers == (1, 3) and meta["layers"] == [1, 3]
    assert torch.equal(again.read(hidden, mask, "mean"), mixed)


def test_concatenation_keeps_each_block_apart_and_round_trips(tmp_path):
    head = SafetyHead(8, layers=(1, 3))  # concat is the default
    hidden = [torch.randn(2, 5, 8) for _ in range(4)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    read = head.read(hidden, mask, "mean")
    assert read.shape == (2, 16) and not hasattr(head, "mix")
    for k, block in enumerate((1, 3)):  # each block's layer-normalised pool, in order, unmixed
        normed = torch.nn.functional.layer_norm(pool(hidden[block], mask, "mean"), (8,))
        assert torch.allclose(read[:, 8 * k : 8 * (k + 1)], normed, atol=1e-5)
    assert head.net[0].in_features == 16
    save_head(head, tmp_path, {"pooling": "mean"})
    again, meta = load_head(tmp_path)
    assert meta["combine"] == "concat" and again.combine_mode == "concat"
    assert torch.equal(again(again.read(hidden, mask, "mean")), head(read))


def test_a_multi_block_head_saved_before_combine_existed_loads_as_the_mix_it_was(tmp_path):
    import json

    head = SafetyHead(8, layers=(1, 3), combine="mix")
    save_head(head, tmp_path, {"pooling": "mean"})
    cfg = json.loads((tmp_path / "head.json").read_text())
    del cfg["combine"]
    (tmp_path / "head.json").write_text(json.dumps(cfg))
    again, _ = load_head(tmp_path)
    assert again.combine_mode == "mix" and again.net[0].in_features == 8


def test_an_unknown_combine_is_an_error_that_names_the_choices():
    with pytest.raises(ValueError, match="concat, mix"):
        SafetyHead(8, layers=(1, 3), combine="sum")


def test_a_head_saved_before_layer_mixes_existed_still_loads(tmp_path):
    import json

    save_head(SafetyHead(16), tmp_path, {"pooling": "mean"})
    cfg = json.loads((tmp_path / "head.json").read_text())
    del cfg["layers"]
    (tmp_path / "head.json").write_text(json.dumps(cfg))
    head, _ = load_head(tmp_path)
    assert head.layers == (-1,) and not hasattr(head, "mix")


def test_scoring_sorts_by_length_for_speed_but_returns_results_in_input_order(tiny_lm):
    from so8t.model import SafetyModel
    from so8t.model.scoring import length_order, prompt_outputs

    model, tok = tiny_lm
    sm = SafetyModel(model, SafetyHead(model.config.hidden_size)).eval()
    items = ["a much longer prompt about the quarterly report and its many tables " * 3, "hi", "list my files"]
    assert length_order(tok, items) == [1, 2, 0]
    pooled, probs = prompt_outputs(sm, tok, items, 64, batch_size=2)
    for i, item in enumerate(items):
        p1, q1 = prompt_outputs(sm, tok, [item], 64)
        assert torch.allclose(pooled[i], p1[0], atol=1e-5) and torch.allclose(probs[i], q1[0], atol=1e-5)
