"""The AIS map: the layer's post-ReLU activations weighted by the fused AIS scores, signed.

With the image's fused scores as weights (data-set-level scores for
unlabelled images), red (> 0) marks what helpful units see and blue (< 0)
what harmful ones see. It also writes ``helpful`` / ``harmful``: the same map
with only the positive / negative weights, divided by one shared scale, so
``helpful`` is in [0, 1] and ``harmful`` in [-1, 0].
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from ais.methods import register_method
from ais.methods.base import Capture, LayerMap, as_weights, max_abs


class AISMap(LayerMap):
    """``sum_c w_c * ReLU(A_c)`` with given channel weights ``(N, C)`` or ``(C,)``."""

    name = "ais"
    title = "AIS"
    signed = True
    needs = ("ablation",)
    outputs = ("ais", "helpful", "harmful")
    scale_column = True
    localization = {"ais_map_pos_auc": ("ais", "pos", "raise"), "ais_map_neg_auc": ("ais", "neg", "lower")}
    description = ("the layer's ReLU activations weighted by the image's AIS scores "
                   "(red: helpful channels, blue: harmful)")
    weights_key = "ais_weights"

    def channel_weights(self, cap: Capture, channel_weights: Tensor | None = None) -> Tensor:
        if channel_weights is None:
            raise TypeError(f"{type(self).__name__} needs channel_weights (N, C) or (C,)")
        return channel_weights

    def raw_maps(self, cap: Capture, size: tuple[int, int], inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        w = as_weights(inputs[self.weights_key], cap.activation)
        return {
            "ais": self.map_from(cap, size, w),
            "helpful": self.map_from(cap, size, w.clamp(min=0)),
            "harmful": self.map_from(cap, size, w.clamp(max=0)),
        }

    def scales(self, raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
        shared = torch.maximum(max_abs(raw["helpful"]), max_abs(raw["harmful"]))
        return {"ais": max_abs(raw["ais"]), "helpful": shared, "harmful": shared}


register_method(AISMap)
