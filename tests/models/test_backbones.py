"""The backbones' average pooling: the slice formulation that GPUs use under deterministic algorithms."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from plkit.models.backbones import GridAvgPool2d, SmallCNN, SmallResNet, grid_mean


@pytest.mark.parametrize(("shape", "grid"), [((7, 7), 3), ((8, 8), 3), ((5, 9), 2), ((4, 4), 1), ((3, 3), 3)])
def test_grid_mean_equals_adaptive_pooling_forward_and_backward(shape: tuple[int, int], grid: int) -> None:
    # Overlapping (7 -> 3) and uneven (8 -> 3: windows of 3, 4, 3) windows alike.
    x = torch.randn(2, 5, *shape, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 5, grid, grid, dtype=torch.float64)
    adaptive = F.adaptive_avg_pool2d(x, grid)
    (expected_grad,) = torch.autograd.grad((adaptive * weights).sum(), x)
    sliced = grid_mean(x, grid)
    (grad,) = torch.autograd.grad((sliced * weights).sum(), x)
    torch.testing.assert_close(sliced, adaptive, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)


def test_the_backbones_pool_with_grid_avg_pool_and_keep_their_state_dict_keys() -> None:
    cnn, resnet = SmallCNN(widths=(4, 8)), SmallResNet(width=4)
    assert [m.grid for m in cnn.modules() if isinstance(m, GridAvgPool2d)] == [3]
    assert [m.grid for m in resnet.modules() if isinstance(m, GridAvgPool2d)] == [1]
    assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in [*cnn.modules(), *resnet.modules()])
    assert cnn(torch.zeros(2, 1, 28, 28)).shape == (2, 8 * 9)


def test_on_a_cpu_deterministic_mode_keeps_the_adaptive_pooling() -> None:
    # The CPU backward is deterministic already: the slice formulation is for CUDA only.
    x = torch.randn(2, 3, 7, 7)
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.equal(GridAvgPool2d(3)(x), F.adaptive_avg_pool2d(x, 3))
    finally:
        torch.use_deterministic_algorithms(False)
