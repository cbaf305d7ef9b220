"""The seed's primary map: only the helpful units, coloured by the direction of their effect.

The interpretation seed's primary map highlights *only important, helpful*
units (Δerror > 0: removing them worsens the prediction; fused ``ais_score``
> 0) and colours them by direction: red where they raise the realism (the
explained output), blue where they lower it. Its channel weights are
``-Δy_c`` for the helpful channels and 0 for the others:
``sum_c [ais_c > 0] * (-Δy_c) * ReLU(A_c)``, divided by its own max |value|.
Harmful units (the secondary layer) are drawn by the ``primary`` view as a
grey outline of the AIS method's ``harmful`` map.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from ais.methods import register_method
from ais.methods.ais_map import AISMap
from ais.methods.base import Capture, LayerMap, as_weights


class PrimaryMap(AISMap):
    """``sum_c [ais_c > 0] (-Δy_c) ReLU(A_c)``: helpful channels only, signed by direction."""

    name = "primary"
    title = "primary"
    outputs = ()
    scale_column = False
    localization = {"primary_pos_auc": ("primary", "pos", "raise"), "primary_neg_auc": ("primary", "neg", "lower")}
    description = ("helpful channels only (Δerror > 0), weighted by −Δy "
                   "(red: raises the output, blue: lowers it), harmful regions outlined in grey")

    def raw_maps(self, cap: Capture, size: tuple[int, int], inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        helpful = as_weights(inputs["ais_weights"], cap.activation) > 0
        direction = as_weights(inputs["direction_weights"], cap.activation)
        return {"primary": self.map_from(cap, size, direction * helpful.to(direction.dtype))}

    scales = LayerMap.scales  # its own max |value|


register_method(PrimaryMap)
