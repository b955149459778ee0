import pytest
import torch

from moses.adapter.masks import (
    compressed_size,
    num_kept,
    pack_bits,
    straight_through_mask,
    top_c_mask,
    unpack_bits,
)


def test_top_c_keeps_the_largest_magnitudes():
    scores = torch.tensor([[0.1, -0.9], [0.5, -0.2]])
    mask = top_c_mask(scores, 0.5)
    assert mask.tolist() == [[False, True], [True, False]]


@pytest.mark.parametrize("density", [0.05, 0.3, 0.51, 1.0])
def test_top_c_counts_per_tensor_and_per_subexpert(density):
    torch.manual_seed(0)
    scores = torch.randn(8, 4, 33)
    assert int(top_c_mask(scores, density).sum()) == num_kept(scores.numel(), density)
    per_sub = top_c_mask(scores, density, per_subexpert=True)
    for i in range(8):
        assert int(per_sub[i].sum()) == num_kept(4 * 33, density)
    assert num_kept(scores.numel(), density) <= density * scores.numel()


def test_straight_through_gradient_reaches_scores_unchanged():
    torch.manual_seed(0)
    scores = torch.randn(3, 5, requires_grad=True)
    upstream = torch.randn(3, 5)
    mask = straight_through_mask(scores, 0.4)
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    (mask * upstream).sum().backward()
    assert torch.equal(scores.grad, upstream)


@pytest.mark.parametrize("shape", [(8,), (3, 5), (2, 7, 3), (1,)])
def test_bit_packing_round_trip(shape):
    torch.manual_seed(1)
    mask = torch.rand(shape) > 0.6
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
    assert torch.equal(unpack_bits(packed, shape), mask)


def test_bit_packing_matches_numpy_packbits():
    np = pytest.importorskip("numpy")
    mask = torch.rand(21) > 0.5
    assert pack_bits(mask).tolist() == np.packbits(mask.numpy()).tolist()


def test_unpack_rejects_wrong_size():
    with pytest.raises(ValueError, match="needs 2 bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), (2, 8))


def test_sparse_masks_compress():
    mask = torch.zeros(4096, dtype=torch.bool)
    mask[::97] = True
    assert 0 < compressed_size([pack_bits(mask)]) < pack_bits(mask).numel()
    assert compressed_size([]) == 0
