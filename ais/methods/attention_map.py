"""The spatial-attention CNN's own attention map, its entropy and its localisation AUCs.

For a model with a spatial-attention branch (``model.attention_map(x)``:
``(N, 1, H, W)`` weights in [0, 1] that multiply the input, the
``attention_cnn`` family), the map is that weight per pixel (resized to the
input size when the branch works at another resolution), divided by its
maximum like every map. It needs no gradients and no ablation: the branch
runs once more on the batch (two 1x1 convolutions).

**Entropy** (column ``spatial_attention_entropy`` of the heatmap figures):
the attention read as a distribution over the ``P = H x W`` pixels,
``p = a / sum(a)``, and ``-sum p log p / log P``: 1 when it is spread evenly,
0 when it sits on one pixel (the seed's "focus vs dispersion"); NaN for an
all-zero map. Dividing the map by its maximum does not change it.

**Localisation** (``spatial_attention_auc`` against the raise-realism masks,
``spatial_attention_lower_auc`` against the lower masks, as Grad-CAM's):
ROC AUCs of the map's values ranking the masked pixels first (demo masks).

For a model without the branch (every other family) the method does not
apply (:meth:`SpatialAttentionMap.not_applicable`): it writes no map, and its
figures are NaN.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from ais.methods import register_method
from ais.methods.base import Capture, LayerMap, eval_mode, upsample


def attention_entropy(attention: np.ndarray) -> float:
    """Normalised entropy in [0, 1] of a non-negative map ``(H, W)`` read as a distribution over its pixels."""
    a = np.clip(np.asarray(attention, dtype=np.float64), 0.0, None).ravel()
    total = a.sum()
    if a.size < 2 or not np.isfinite(total) or total <= 0:
        return float("nan")
    p = a[a > 0] / total
    return float(np.clip(-(p * np.log(p)).sum() / np.log(a.size), 0.0, 1.0))  # rounding may pass 1


class SpatialAttentionMap(LayerMap):
    """The attention weights ``(N, H, W)`` of the model's spatial-attention branch."""

    name = "spatial_attention"
    title = "spatial attention"
    signed = False
    localization = {"spatial_attention_auc": ("spatial_attention", "all", "raise"),
                    "spatial_attention_lower_auc": ("spatial_attention", "all", "lower")}
    #: per-image statistics of the map, columns of the heatmap figures: {column: (map, function (H, W) -> float)}
    image_stats = {"spatial_attention_entropy": ("spatial_attention", attention_entropy)}
    description = "the model's own spatial attention weights (sigmoid, in [0, 1]) on its own scale"

    def not_applicable(self) -> str:
        if callable(getattr(self.model, "attention_map", None)):
            return ""
        return f"{type(self.model).__name__} has no spatial-attention branch (model.arch attention_cnn has one)"

    def raw_maps(self, cap: Capture, size: tuple[int, int], inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        with eval_mode(self.model), torch.no_grad():
            weights = self.model.attention_map(cap.x)
        return {self.name: upsample(weights[:, 0].to(cap.output.dtype), size)}


register_method(SpatialAttentionMap)
