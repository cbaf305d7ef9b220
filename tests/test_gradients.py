"""Gradient importance: Captum's ``Saliency``, ``InputXGradient`` and ``NoiseTunnel`` as oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_cnn
from torch import nn

from ais.methods import compute_maps, get_method
from ais.methods.gradients import GradientImportance, smoothgrad_noise

captum_attr = pytest.importorskip("captum.attr")


X = torch.randn(3, 3, 9, 10, generator=torch.Generator().manual_seed(1))


def raw(model: nn.Module, x: torch.Tensor, options: dict | None = None) -> dict[str, torch.Tensor]:
    method = GradientImportance(model, "3")
    cap = method.capture(x)
    return method.raw_maps(cap, tuple(x.shape[-2:]), {"options": {"gradients": options or {}}})


def test_saliency_and_input_x_gradient_equal_captum():
    model = small_cnn()
    ours = raw(model, X)
    saliency = captum_attr.Saliency(model).attribute(X, target=0, abs=True)  # (N, 3, H, W)
    ixg = captum_attr.InputXGradient(model).attribute(X, target=0)
    assert saliency.abs().max() > 0
    torch.testing.assert_close(ours["saliency"], saliency.amax(dim=1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours["input_x_gradient"], ixg.sum(dim=1).detach(), rtol=1e-5, atol=1e-7)
    assert (ours["input_x_gradient"] < 0).any() and (ours["input_x_gradient"] > 0).any()  # signed


def test_linear_model_by_hand():
    """y = sum_c w_c * sum_ij x_cij: the gradient is w_c everywhere; saliency = max |w_c|."""
    conv = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -3.0, 2.0]).view(1, 3, 1, 1))
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(16, 1, bias=False)).eval()
    with torch.no_grad():
        model[2].weight.fill_(1.0)
    x = torch.ones(2, 3, 4, 4)
    method = GradientImportance(model, "0")
    out = method.raw_maps(method.capture(x), (4, 4), {})
    torch.testing.assert_close(out["saliency"], torch.full((2, 4, 4), 3.0))
    torch.testing.assert_close(out["input_x_gradient"], torch.full((2, 4, 4), 0.0))  # 1 - 3 + 2


def test_smoothgrad_equals_captum_saliency_averaged_over_the_same_noise():
    model = small_cnn()
    noisy = smoothgrad_noise(X, 5, 0.2, seed=3)  # (S, N, 3, H, W)
    span = X.amax(dim=(1, 2, 3)) - X.amin(dim=(1, 2, 3))
    assert noisy.shape == (5, *X.shape)
    np.testing.assert_allclose((noisy - X[None]).std(dim=(0, 2, 3, 4)).numpy(), (0.2 * span).numpy(), rtol=0.15)
    sal = torch.stack([captum_attr.Saliency(model).attribute(n, target=0, abs=True) for n in noisy]).mean(0)
    ixg = torch.stack([captum_attr.InputXGradient(model).attribute(n.clone(), target=0).detach()
                       for n in noisy]).mean(0)
    ours = raw(model, X, {"smoothgrad_samples": 5, "noise": 0.2, "seed": 3})
    torch.testing.assert_close(ours["saliency"], sal.amax(dim=1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours["input_x_gradient"], ixg.sum(dim=1), rtol=1e-5, atol=1e-7)
    plain = raw(model, X)
    assert not torch.allclose(ours["saliency"], plain["saliency"])


def test_registered_model_untouched_and_options_checked():
    model = small_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert get_method("saliency").map_names() == ("saliency", "input_x_gradient")
    maps = compute_maps(model, "3", X, {}, methods=["saliency"], with_scales=True)
    assert maps["saliency"].min() >= 0 and np.allclose(maps["saliency"].max(axis=(1, 2)), 1.0)
    assert np.allclose(np.abs(maps["input_x_gradient"]).max(axis=(1, 2)), 1.0)
    assert all(p.grad is None for p in model.parameters())
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"heatmaps\.gradients"):
        compute_maps(model, "3", X, {"options": {"gradients": {"samples": 3}}}, methods=["saliency"])
