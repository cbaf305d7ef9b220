"""Occlusion sensitivity: Captum's ``Occlusion`` as oracle, a hand-made case, batching, the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_cnn
from torch import nn

from ais.methods import compute_maps, get_method
from ais.methods.occlusion import (
    Occlusion,
    baseline,
    occlusion,
    window_masks,
    window_starts,
)

captum_attr = pytest.importorskip("captum.attr")


X = torch.randn(3, 3, 11, 13, generator=torch.Generator().manual_seed(1))


def test_positions_are_captums():
    assert window_starts(11, 4, 3) == [0, 3, 6, 9]  # ceil(7 / 3) + 1 = 4; the last clipped at the border
    assert window_starts(8, 4, 4) == [0, 4]
    assert window_starts(3, 16, 8) == [0]  # wider than the axis: one position
    masks = window_masks(11, 13, 4, 3)
    assert masks.shape == (4 * 4, 11, 13)
    assert (masks.sum(dim=0) > 0).all()  # every pixel covered
    with pytest.raises(ValueError, match="window"):
        window_starts(8, 0, 1)


@pytest.mark.parametrize("fill", ["zero", "mean", "blur"])
@pytest.mark.parametrize("window,stride", [(4, 3), (5, 5), (3, 1)])
def test_equals_captum_occlusion(fill, window, stride):
    model = small_cnn()
    base = baseline(X, fill, sigma=1.5)
    ref = captum_attr.Occlusion(model).attribute(
        X, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=base, target=0,
        perturbations_per_eval=7)
    assert torch.allclose(ref[:, 0], ref[:, 2])  # the window spans the colour channels
    masks = window_masks(11, 13, window, stride)
    ours = occlusion(lambda t: model(t)[:, 0], X, masks, base, max_batch=40)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref[:, 0], rtol=1e-5, atol=1e-6)


def test_batching_does_not_change_the_map():
    model = small_cnn()
    masks = window_masks(11, 13, 4, 3)
    base = baseline(X, "mean")
    one = occlusion(lambda t: model(t)[:, 0], X, masks, base, max_batch=1)  # one position per pass
    calls = []

    def forward(t: torch.Tensor) -> torch.Tensor:
        calls.append(len(t))
        return model(t)[:, 0]

    many = occlusion(forward, X, masks, base, max_batch=10_000)
    assert calls == [3, 16 * 3]  # the unoccluded batch, then every position in one pass
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-7)


def test_sign_by_hand():
    """y = sum of the top-left 2 x 2 pixels of channel 0; zero fill: covering them lowers y -> positive."""

    class TopLeft(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0, :2, :2].sum(dim=(1, 2))[:, None] + 0 * self.conv(x).mean()

    x = torch.ones(1, 3, 4, 4)
    masks = window_masks(4, 4, 2, 2)  # four disjoint 2 x 2 patches
    model = TopLeft()
    heat = occlusion(lambda t: model(t)[:, 0], x, masks, torch.zeros_like(x), 100)
    expected = torch.zeros(1, 4, 4)
    expected[0, :2, :2] = 4.0  # covering the top-left patch drops y from 4 to 0
    torch.testing.assert_close(heat, expected)


def test_registered_method_options_and_model_left_as_it_was():
    model = small_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert get_method("occlusion") is Occlusion and Occlusion.signed
    options = {"occlusion": {"window": 4, "stride": 3, "fill": "zero"}}
    maps = compute_maps(model, "3", X, {"options": options}, methods=["occlusion"], with_scales=True)
    with torch.no_grad():
        model.eval()
        ref = captum_attr.Occlusion(model).attribute(X, sliding_window_shapes=(3, 4, 4), strides=(3, 3, 3),
                                                     baselines=0.0, target=0)[:, 0]
        model.train()
    scale = ref.abs().amax(dim=(1, 2))
    np.testing.assert_allclose(maps["occlusion"], (ref / scale[:, None, None]).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps["occlusion_scale"], scale.numpy(), rtol=1e-5)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched
    with pytest.raises(ValueError, match=r"heatmaps\.occlusion.*patch"):
        compute_maps(model, "3", X, {"options": {"occlusion": {"patch": 4}}}, methods=["occlusion"])
    with pytest.raises(ValueError, match="fill"):
        compute_maps(model, "3", X, {"options": {"occlusion": {"fill": "noise"}}}, methods=["occlusion"])
