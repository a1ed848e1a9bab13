"""Top-k magnitude masks (per layer, global), 2:4 masks and the cubic schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.sparsity.masks import (
    apply_masks,
    cubic_sparsity,
    global_masks,
    is_nm_sparse,
    magnitude_mask,
    nm_mask,
    prunable,
    sparsity_report,
)


def test_magnitude_mask_removes_the_smallest():
    w = torch.tensor([[0.1, -3.0], [2.0, -0.05]])
    assert magnitude_mask(w, 0.5).tolist() == [[False, True], [True, False]]
    assert magnitude_mask(w, 0.0).all() and not magnitude_mask(w, 1.0).any()


def test_global_masks_share_one_threshold():
    masks = global_masks({"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([5.0, 6.0, 0.05])}, 0.5)
    assert masks["a"].tolist() == [False, False, True] and masks["b"].tolist() == [True, True, False]


def test_two_four_pattern_along_input_channels():
    w = torch.tensor([[1.0, -4.0, 3.0, 0.5, 0.1, 0.2, 0.3, 0.4]]).view(1, 8, 1, 1)
    mask = nm_mask(w, 2, 4)
    assert mask.view(-1).tolist() == [False, True, True, False, False, False, True, True]
    assert is_nm_sparse(w * mask) and not is_nm_sparse(w)
    conv = torch.randn(16, 8, 3, 3)
    sparse = conv * nm_mask(conv)
    assert is_nm_sparse(sparse) and (sparse == 0).float().mean().item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="multiple of 4"):
        nm_mask(torch.randn(4, 6, 1, 1))


@pytest.mark.parametrize("step,expected", [(0, 0.0), (50, 0.5 * (1 - 0.5**3)), (100, 0.5), (150, 0.5)])
def test_cubic_ramp(step, expected):
    assert cubic_sparsity(step, 100, 0.5) == pytest.approx(expected)


def test_masks_give_exact_zeros_and_the_report_counts_them():
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4))
    layers = prunable(model)
    apply_masks(layers, {n: magnitude_mask(m.weight, 0.5) for n, m in layers.items()})
    report = sparsity_report(model)
    assert set(report) == {"0", "3"} and all(v == pytest.approx(0.5) for v in report.values())
