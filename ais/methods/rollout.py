"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"), ViTs only.

Each block's attention weights are averaged over heads, the identity is
added (the residual connection) and each row renormalised to sum to one:
``Â_l = (mean_h A_l + I) / 2`` (rows of ``A_l`` sum to one); the rollout is
the product through the blocks ``R = Â_L ... Â_1``. The map is the class
token's row of ``R`` at the patch tokens, on the patch grid, resized to the
image: how much of the class token's final state flows from each patch.
Unsigned, on its own [0, 1] scale; not applicable (no map) without attention
weights.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ais.methods import register_method
from ais.methods.attention import AttentionMethod, patch_map
from ais.methods.base import Capture, upsample


def attention_rollout(weights: Sequence[Tensor]) -> Tensor:
    """The rollout ``(N, T, T)`` of per-block attention weights ``(N, H, T, T)``, first block first."""
    rollout = None
    for w in weights:
        a = w.double().mean(dim=1)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    if rollout is None:
        raise ValueError("attention rollout needs the attention weights of at least one block")
    return rollout


class AttentionRollout(AttentionMethod):
    """The class token's row of the attention rollout through every block."""

    name = "rollout"
    title = "attention rollout"
    description = "attention rollout (heads averaged, identity added, rows renormalised, multiplied through the blocks)"

    def raw_maps(self, cap: Capture, size: tuple[int, int], inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        return {self.name: upsample(patch_map(attention_rollout(cap.attention)).float(), size)}


register_method(AttentionRollout)
