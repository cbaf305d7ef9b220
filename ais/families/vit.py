"""Vision Transformers: what the ViT families share, and torchvision's ViT family (``vit_b_16``, ...).

**Units.** A ViT's explainable layers are two *unit sites* per block, small
tap modules inserted when the model is built (they hold no parameters, so
state dicts and pretrained weights are unchanged). A site's output has its
units on axis 1, as a CNN layer's channels (:class:`UnitsFirst`), so every
consumer that zeroes or masks channel ``c`` of a layer's output works as is:

``mlp``
    the block's MLP hidden activation after the GELU, seen as ``(N, C, T)``
    (C hidden neurons, T tokens; the ``neurons`` child of :class:`TokenUnits`).
    Zeroing neuron ``j`` zeroes its value at every token, so the block's
    output changes by ``-h_j(t) * W2[:, j]`` at token ``t``: a rank-1 change
    of the residual stream (``W2``: the second MLP Linear, times the layer
    scale where there is one).
``heads``
    the attention heads' outputs before the out-projection, seen as
    ``(N, H, T, d)`` (the ``heads`` child of :class:`HeadProjection`). Zeroing head ``k`` removes its
    ``d`` features from the out-projection's input at every token (its
    contribution ``W_o[:, k] o_k(t)`` to the residual stream), as
    pytorch-grad-cam and head-pruning work do; the block's MLP then sees the
    changed stream.

torchvision (``need_weights=False``) and Hugging Face (``sdpa``) hide the
attention weights, so their attention modules are replaced by an eager
computation with the same parameters (:class:`EagerAttention`), whose
softmax weights ``(N, H, T, T)`` pass through an :class:`AttentionProbs`
tap (the attention-map methods read it).

**Maps.** :func:`units_to_grid` drops the class and register tokens and
reshapes the patch tokens to ``(N, C, h, w)`` (pytorch-grad-cam's
``reshape_transform``), so AIS, the direction map, Grad-CAM and Grad-CAM++
work on the patch grid; for heads, a head's per-token activation is the
norm of its output, and its gradient the derivative along that output.

**Ablation.** :class:`TokenStack` describes the residual stream to the
ablation engine's ``residual`` path (:mod:`ais.ablation.residual`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ais.families import Family, register_family
from ais.families._torchvision import TorchvisionWeights

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- taps


class UnitsFirst(nn.Module):
    """Identity on a unit site's values, units on axis 1: MLP neurons ``(N, C, T)``, heads ``(N, H, T, d)``."""

    def __init__(self, units: int) -> None:
        super().__init__()
        self.units = int(units)  # read by ais.layers.unit_channels

    def forward(self, x: Tensor) -> Tensor:
        return x


class TokenUnits(nn.Module):
    """``act(x)`` for tokens ``(N, T, C)``, passed through the unit site ``neurons`` as ``(N, C, T)``."""

    def __init__(self, act: nn.Module, units: int) -> None:
        super().__init__()
        self.act = act
        self.neurons = UnitsFirst(units)

    def forward(self, x: Tensor) -> Tensor:
        return self.neurons(self.act(x).transpose(1, 2)).transpose(1, 2)


class AttentionProbs(nn.Module):
    """Identity on the attention weights ``(N, H, T, T)`` (rows: queries, softmax over keys)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class HeadProjection(nn.Linear):
    """An out-projection Linear whose input ``(N, T, H * d)`` passes the unit site ``heads`` as ``(N, H, T, d)``."""

    heads: UnitsFirst

    def forward(self, x: Tensor) -> Tensor:
        heads = self.heads(x.unflatten(-1, (self.heads.units, -1)).transpose(1, 2))
        return F.linear(heads.transpose(1, 2).flatten(-2), self.weight, self.bias)


def split_heads(linear: nn.Linear, n_heads: int) -> None:
    """Make ``linear`` (parameters and state-dict keys unchanged) a :class:`HeadProjection` of ``n_heads`` heads."""
    if linear.in_features % n_heads:
        raise ValueError(f"{linear.in_features} features do not split into {n_heads} heads")
    linear.__class__ = HeadProjection
    linear.add_module("heads", UnitsFirst(n_heads))


def eager_attention(q: Tensor, k: Tensor, v: Tensor, probs: nn.Module, dropout: float, training: bool,
                    mask: Tensor | None = None) -> Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` for ``(N, H, T, d)`` inputs, the weights through ``probs``; ``(N, T, H, d)``.

    ``mask``: ``None``, additive (float, broadcast to ``(N, H, T, T)``) or boolean (True: attend).
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    attn = torch.softmax(scores, dim=-1)
    attn = F.dropout(probs(attn), p=dropout, training=training)
    return (attn @ v).transpose(1, 2)


class EagerAttention(nn.MultiheadAttention):
    """torchvision's self-attention (``batch_first``, packed q/k/v), computed eagerly with an ``AttentionProbs`` tap."""

    probs: AttentionProbs

    def forward(self, query: Tensor, key: Tensor, value: Tensor, need_weights: bool = False,
                **kwargs: object) -> tuple[Tensor, None]:
        """Self-attention of ``query`` ``(N, T, E)`` (``key`` and ``value`` must be the same tensor)."""
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias).unflatten(-1, (3, self.num_heads, -1))
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, H, T, d)
        out = eager_attention(q, k, v, self.probs, self.dropout, self.training)
        return self.out_proj(out.flatten(-2)), None


def eager_mha(mha: nn.MultiheadAttention) -> None:
    """Turn torchvision's ``nn.MultiheadAttention`` into :class:`EagerAttention` (same parameters) with taps."""
    if not (mha.batch_first and mha._qkv_same_embed_dim and mha.in_proj_bias is not None):
        raise ValueError("only batch-first self-attention with packed q/k/v projections can be made eager")
    mha.__class__ = EagerAttention
    mha.add_module("probs", AttentionProbs())
    split_heads(mha.out_proj, mha.num_heads)


# --------------------------------------------------------------------------- grid


def prefix_tokens(n_tokens: int) -> int:
    """Class and register tokens ahead of a square patch grid: ``T - floor(sqrt(T))**2`` (fewer than ``2 sqrt(T)``)."""
    return n_tokens - math.isqrt(n_tokens) ** 2


def units_to_grid(units: Tensor) -> Tensor:
    """``(N, C, T)`` as ``(N, C, h, w)``: prefix tokens dropped, the ``h * w`` patch tokens row by row."""
    n, c, t = units.shape
    side = math.isqrt(t)
    return units[:, :, t - side * side:].reshape(n, c, side, side)


def tokens_to_grid(tokens: Tensor) -> Tensor:
    """Tokens ``(N, T, C)`` as ``(N, C, h, w)`` (pytorch-grad-cam's ``reshape_transform``)."""
    return units_to_grid(tokens.transpose(1, 2))


def heads_to_grid(heads: Tensor) -> Tensor:
    """Heads' outputs ``(N, H, T, d)`` as ``(N, H, h, w)``: the norm of each head's output at each patch."""
    return units_to_grid(heads.norm(dim=-1))


# --------------------------------------------------------------------------- the residual stream


@dataclass
class TokenStack:
    """A ViT's residual stream as the ablation engine's ``residual`` path reads it (all in eval mode).

    ``blocks[i]`` maps the stream ``(M, T, D)`` to the next; ``sites``: unit
    site module name -> ``(block index, "mlp" | "heads")``. For block ``i``:
    ``mlp_dirs(i)`` ``(C, D)``: the change of the block output per unit of
    hidden neuron ``j`` (``W2[:, j]`` times any layer scale);
    ``attn_out(i, z)``: the attention branch's contribution ``(M, T, D)``
    from the out-projection's input ``z`` ``(M, T, H * d)``; ``after_attn(i, x)``: the block
    output from the stream after the attention branch. ``finish(x)``: the
    model output from the last block's output; ``first_token``: whether it
    reads token 0 only (a class-token head). ``probs``: the attention taps.
    """

    blocks: list[nn.Module]
    sites: dict[str, tuple[int, str]]
    mlp_dirs: Callable[[int], Tensor]
    attn_out: Callable[[int, Tensor], Tensor]
    after_attn: Callable[[int, Tensor], Tensor]
    finish: Callable[[Tensor], Tensor]
    first_token: bool
    probs: list[nn.Module] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)

    def run_block(self, i: int, x: Tensor) -> Tensor:
        out = self.blocks[i](x)
        return out[0] if isinstance(out, tuple) else out


class TokenFamily(Family):
    """What every ViT family shares: unit sites as explainable layers, the token grid, attention taps.

    A subclass builds its model with the taps (:func:`split_heads`,
    :class:`TokenUnits`, :class:`AttentionProbs`) and says where they are
    (:meth:`stack`).
    """

    heads = ("token",)
    layer_kind = "MLP hidden activation (mlp) or attention heads of a block"

    def stack(self, model: nn.Module) -> TokenStack:
        """The model's residual stream and unit sites."""
        raise NotImplementedError

    def matches(self, model: nn.Module) -> bool:
        """Whether ``model`` is one this family builds (the engine finds a model's stack by this)."""
        raise NotImplementedError

    def explainable_layers(self, model: nn.Module) -> list[str]:
        """Each block's ``heads`` site, then its ``mlp`` site, block by block (``auto``: the last block's MLP)."""
        return list(self.stack(model).sites)

    def resolve_layer(self, model: nn.Module, name: str) -> str:
        """``name`` or its alias (a block's MLP or attention module: ``...mlp``, ``...self_attention``) resolved."""
        return super().resolve_layer(model, self.stack(model).aliases.get(name, name))

    def n_units(self, model: nn.Module, layer: str) -> int:
        """Units of a unit site (or its alias): the MLP's hidden neurons, or the heads."""
        return super().n_units(model, self.stack(model).aliases.get(layer, layer))

    def activation_module(self, model: nn.Module, layer: str | nn.Module) -> nn.Module:
        """The unit site itself (the MLP's GELU output; the heads' outputs)."""
        return model.get_submodule(self.stack(model).aliases.get(layer, layer)) if isinstance(layer, str) else layer

    def to_grid(self, output: Tensor) -> Tensor:
        """A unit site's output on the patch grid: MLP ``(N, C, T)`` -> ``(N, C, h, w)``; heads -> per-patch norms."""
        return heads_to_grid(output) if output.ndim == 4 else units_to_grid(output)

    def grid_gradient(self, output: Tensor, grad: Tensor) -> Tensor:
        """d target / d (the grid of :meth:`to_grid`): reshaped, or for heads along each head's output."""
        if output.ndim != 4:
            return units_to_grid(grad)
        norm = output.norm(dim=-1, keepdim=True)
        return units_to_grid(((grad * output) / norm.clamp_min(1e-12)).sum(-1))

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """The attention-weight taps ``(N, H, T, T)``, block by block."""
        return self.stack(model).probs


_TOKEN_FAMILIES: list[TokenFamily] = []


def register_token_family(family: TokenFamily) -> TokenFamily:
    """Register ``family`` (:func:`ais.families.register_family`) and let :func:`token_stack` find its models."""
    register_family(family)
    _TOKEN_FAMILIES.append(family)
    return family


def token_family(model: nn.Module) -> TokenFamily | None:
    """The ViT family that builds models like ``model``, else ``None``."""
    return next((family for family in _TOKEN_FAMILIES if family.matches(model)), None)


def token_stack(model: nn.Module) -> TokenStack | None:
    """The :class:`TokenStack` of a model a ViT family built, else ``None``."""
    family = token_family(model)
    return None if family is None else family.stack(model)


def site_names(prefix: str, mlp: str, heads: str, n_blocks: int) -> dict[str, tuple[int, str]]:
    """``{site name: (block, kind)}``: for each block ``prefix{i}``, its heads site then its MLP site."""
    sites: dict[str, tuple[int, str]] = {}
    for i in range(n_blocks):
        sites[f"{prefix}{i}.{heads}"] = (i, "heads")
        sites[f"{prefix}{i}.{mlp}"] = (i, "mlp")
    return sites


# --------------------------------------------------------------------------- torchvision


class VisionTransformerFamily(TokenFamily, TorchvisionWeights):
    """torchvision's ``VisionTransformer``: class token, ``heads.head`` Linear with ``n_outputs``.

    ``vit_micro_8`` is a 2-block, 32-wide ViT on 32-pixel images with 8-pixel
    patches (for tests and CPU demos; no pretrained weights). torchvision's
    ViT reads images of exactly its ``image_size`` (224 for the others).
    """

    name = "vit"
    archs = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_micro_8")
    backbone_prefix = "encoder."
    micro = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)

    def build(self, arch: str, head: str, n_outputs: int = 1) -> nn.Module:
        """A randomly initialised ``arch`` with eager attention and unit taps, CPU, training mode."""
        if head not in self.heads:
            raise ValueError(f"model.head={head!r}: unknown head for {arch}; choose one of {', '.join(self.heads)}")
        if arch == "vit_micro_8":
            from torchvision.models.vision_transformer import VisionTransformer

            model = VisionTransformer(num_classes=n_outputs, **self.micro)
        elif arch in self.archs:
            model = torchvision.models.get_model(arch, weights=None, num_classes=n_outputs)
        else:
            raise ValueError(f"model.arch={arch!r} is not a {self.name} architecture ({', '.join(self.archs)})")
        for block in model.encoder.layers:
            eager_mha(block.self_attention)
            block.mlp[1] = TokenUnits(block.mlp[1], block.mlp[0].out_features)
        return model

    def fetch_weights(self, arch: str, weights: str, progress: bool = False) -> tuple[dict[str, Tensor], str]:
        """torchvision's weights names (``IMAGENET1K_V1``, ...) or a local state-dict file; ``vit_micro_8``: files only."""
        if arch == "vit_micro_8":
            return Family.fetch_weights(self, arch, weights, progress)
        return super().fetch_weights(arch, weights, progress)

    def weight_names(self, arch: str) -> list[str]:
        return [] if arch == "vit_micro_8" else super().weight_names(arch)

    def matches(self, model: nn.Module) -> bool:
        from torchvision.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer)

    def stack(self, model: nn.Module) -> TokenStack:
        blocks = list(model.encoder.layers)
        prefix = "encoder.layers.encoder_layer_"
        sites = site_names(prefix, "mlp.1.neurons", "self_attention.out_proj.heads", len(blocks))
        aliases = {}
        for i in range(len(blocks)):
            aliases[f"{prefix}{i}.mlp"] = f"{prefix}{i}.mlp.1.neurons"
            aliases[f"{prefix}{i}.self_attention"] = f"{prefix}{i}.self_attention.out_proj.heads"

        def attn_out(i: int, z: Tensor) -> Tensor:
            return blocks[i].dropout(blocks[i].self_attention.out_proj(z))

        def after_attn(i: int, x: Tensor) -> Tensor:
            return x + blocks[i].mlp(blocks[i].ln_2(x))

        def finish(x: Tensor) -> Tensor:
            return model.heads(model.encoder.ln(x)[:, 0])

        return TokenStack(blocks, sites, lambda i: blocks[i].mlp[3].weight.T, attn_out, after_attn, finish,
                          first_token=True, probs=[b.self_attention.probs for b in blocks], aliases=aliases)


register_token_family(VisionTransformerFamily())
