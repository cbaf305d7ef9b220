"""The direction map: post-ReLU activations weighted by -Δy, how much each unit's presence raised the output.

Red raises the explained output (realism), blue lowers it. Its localisation
AUCs against the demo's raise/lower masks keep their historical names
(``ais_pos_auc`` ...; see ARCHITECTURE.md and the README).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from ais.methods import register_method
from ais.methods.ais_map import AISMap
from ais.methods.base import Capture, LayerMap


class DirectionMap(AISMap):
    """``sum_c (-Δy_c) * ReLU(A_c)``: the AIS map's activations, weighted by direction."""

    name = "direction"
    title = "direction"
    outputs = ()
    localization = {
        "ais_pos_auc": ("direction", "pos", "raise"),
        "ais_neg_auc": ("direction", "neg", "lower"),
        "ais_pos_clipped_auc": ("direction", "pos_clipped", "raise"),
        "ais_neg_clipped_auc": ("direction", "neg_clipped", "lower"),
    }
    description = "weighted by −Δy (red: raises the output, blue: lowers it)"
    weights_key = "direction_weights"

    def raw_maps(self, cap: Capture, size: tuple[int, int], inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"direction": self.map_from(cap, size, inputs[self.weights_key])}

    scales = LayerMap.scales  # its own max |value|, not the AIS map's shared helpful/harmful scale


register_method(DirectionMap)
