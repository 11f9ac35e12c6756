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
