"""The class token's attention in the last block, averaged over heads (ViTs only).

For a Vision Transformer (a family with attention weights,
:meth:`ais.families.Family.attention_modules`), the map is row 0 (the class
token as query) of the last block's attention weights, averaged over the
heads, at the patch tokens (class and register tokens dropped), reshaped to
the patch grid and resized to the image. A model without a class token
(``T`` a square) uses the mean over all query tokens. Unsigned, on its own
[0, 1] scale. ``optional``: a run computes it when ``heatmaps.optional_methods``
lists it. For models without attention weights (CNNs) the method does not
apply: it writes no map and says so once in the log.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from ais.methods import register_method
from ais.methods.base import Capture, LayerMap, upsample


def patch_map(weights: Tensor) -> Tensor:
    """Attention weights ``(N, T, T)`` (rows: queries) as the class token's row on the patch grid ``(N, h, w)``.

    Prefix tokens (:func:`ais.families.vit.prefix_tokens`) are dropped as keys;
    without a class token the rows are averaged.
    """
    from ais.families.vit import prefix_tokens, units_to_grid

    n, t, _ = weights.shape
    row = weights[:, 0] if prefix_tokens(t) else weights.mean(dim=1)  # (N, T)
    return units_to_grid(row.unsqueeze(1))[:, 0]


class AttentionMethod(LayerMap):
    """Base of the attention-weight maps: they apply only where the family exposes attention weights."""

    signed = False
    needs = ("attention",)
    optional = True  # computed when listed in heatmaps.optional_methods (a ViT run lists attention, rollout)

    def not_applicable(self) -> str:
        if self.family.attention_modules(self.model):
            return ""
        return f"{type(self.model).__name__} has no attention weights (not a Vision Transformer)"


class ClassTokenAttention(AttentionMethod):
    """The last block's attention from the class token to each patch, averaged over heads."""

    name = "attention"
    title = "class-token attention"
    description = "the class token's attention to each patch in the last block, averaged over heads"

    def raw_maps(self, cap: Capture, size: tuple[int, int], inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        return {self.name: upsample(patch_map(cap.attention[-1].float().mean(dim=1)), size)}


register_method(ClassTokenAttention)
