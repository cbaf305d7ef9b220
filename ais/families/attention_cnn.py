"""The seed's spatial-attention CNN (a deepfake detector built for Grad-CAM++ and attention metrics).

:class:`SpatialAttentionCNN`, with the seed's module names:

- ``attention_conv``: ``Conv2d(C, max(1, C // 4), 1)``, ``BatchNorm2d``,
  ``ReLU``, ``Conv2d(., 1, 1)``, ``Sigmoid``: one attention weight in [0, 1]
  per input pixel, ``(N, 1, H, W)`` (:meth:`SpatialAttentionCNN.attention_map`),
  which multiplies the input (broadcast over its channels);
- ``feature_extractor``: three ``Conv2d(3x3, padding 1)``, ``BatchNorm2d``,
  ``ReLU`` stages of 64, 128 and 256 channels at the input's resolution,
  then ``AdaptiveAvgPool2d(1)``;
- ``fusion``: ``Linear(256, feature_dim)``, ``ReLU``, ``Dropout(0.3)``
  (``feature_dim`` 512, the seed's);
- ``classifier``: ``Sequential(Linear(feature_dim, n_outputs))``.

Head ``gap`` is this pooled head (fusion and classifier); ``mlp``
(:func:`ais.models.build_net`) replaces ``classifier`` by the MLP head on
the fusion's 512-d output. ``model.head_dropout`` sets the fusion's dropout
(Monte-Carlo dropout samples it). Explainable layers: the three feature
convs ``feature_extractor.0``, ``.3``, ``.6`` (units: their output channels,
shown after their BatchNorm and ReLU); ``auto`` is ``feature_extractor.6``.
The attention branch is explained by its own map, the ``spatial_attention``
method (:mod:`ais.methods.attention_map`), not by ablation. No pretrained
weights exist: ``model.weights`` is ``none`` or a local state dict (tensors
under ``feature_extractor.`` must all match; the others are loaded where
they fit and reported otherwise). PyTorch's default initialisation, from
torch's global generator.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ais.errors import UserError
from ais.families import Family, register_family


class SpatialAttentionCNN(nn.Module):
    """Input ``(N, C, H, W)``, output ``(N, n_outputs)``; see the module docstring."""

    def __init__(self, n_outputs: int = 1, input_channels: int = 3, feature_dim: int = 512,
                 dropout: float = 0.3) -> None:
        super().__init__()
        attn = max(1, input_channels // 4)
        self.attention_conv = nn.Sequential(
            nn.Conv2d(input_channels, attn, kernel_size=1), nn.BatchNorm2d(attn), nn.ReLU(),
            nn.Conv2d(attn, 1, kernel_size=1), nn.Sigmoid(),
        )
        layers: list[nn.Module] = []
        width = input_channels
        for out in (64, 128, 256):
            layers += [nn.Conv2d(width, out, kernel_size=3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        self.feature_extractor = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.fusion = nn.Sequential(nn.Linear(256, feature_dim), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Sequential(nn.Linear(feature_dim, n_outputs))

    def attention_map(self, x: Tensor) -> Tensor:
        """The attention weights ``(N, 1, H, W)`` in [0, 1] of the input ``x`` ``(N, C, H, W)``."""
        return self.attention_conv(x)

    def forward(self, x: Tensor) -> Tensor:
        attended = x * self.attention_conv(x)
        features = torch.flatten(self.feature_extractor(attended), 1)
        return self.classifier(self.fusion(features))


class AttentionCNNFamily(Family):
    name = "attention_cnn"
    archs = ("attention_cnn",)
    heads = ("gap",)
    backbone_prefix = "feature_extractor."

    def build(self, arch: str, head: str, n_outputs: int = 1) -> nn.Module:
        """A randomly initialised :class:`SpatialAttentionCNN` (torch's global generator), CPU, training mode."""
        if arch not in self.archs:
            raise ValueError(f"model.arch={arch!r} is not an {self.name} architecture ({', '.join(self.archs)})")
        if head not in self.heads:
            raise ValueError(f"model.head={head!r}: unknown head for {arch}; choose gap (the seed's fusion and "
                             "classifier) or mlp")
        return SpatialAttentionCNN(n_outputs)

    def explainable_layers(self, model: nn.Module) -> list[str]:
        """The feature extractor's convs (the attention branch's 1x1 convs are not units to ablate)."""
        return [f"feature_extractor.{i}" for i, m in enumerate(model.feature_extractor) if isinstance(m, nn.Conv2d)]

    def set_head_dropout(self, model: nn.Module, p: float | None) -> nn.Module:
        """``model.head_dropout``: the fusion's dropout probability (the seed's 0.3 when ``None``)."""
        if p is None:
            return model
        if not 0 <= p < 1:
            raise UserError(f"model.head_dropout={p}: must be in [0, 1)")
        for m in model.fusion:
            if isinstance(m, nn.Dropout):
                m.p = float(p)
        return model


register_family(AttentionCNNFamily())
