"""timm Vision Transformers (``vit_small_patch16_224`` = DINO ViT-S/16's shape, ``vit_base_patch16_224``).

Needs the ``timm`` extra (``pip install -e '.[timm]'``); without it the
architectures stay registered and building one says how to install it.

Built with ``timm.create_model(arch, pretrained=False, num_classes=n_outputs)``
(nothing is downloaded). Heads: ``token`` (timm's class-token head: final
norm, token 0, ``head``) and ``avg`` (``global_pool='avg', fc_norm=False``:
the final norm on every token, then the mean of the patch tokens, then
``head``; the DINO seed's averaged output tokens, and a DINO checkpoint's
``norm`` loads). Weights: a local ``.safetensors`` file of the timm model's
state dict (``model.safetensors`` of a timm checkpoint folder); any other
file type is refused, so nothing is ever unpickled. ``timm_vit_micro_8`` is
a 2-block, 32-wide timm ViT on 32-pixel images with 8-pixel patches (tests).

Attention is computed eagerly (``fused_attn = False``), so its weights pass
``attn.attn_drop`` (the attention taps); units as in :mod:`ais.families.vit`:
``blocks.{i}.mlp.act.neurons`` (MLP hidden neurons after the GELU, aliased
``blocks.{i}.mlp``) and ``blocks.{i}.attn.proj.heads`` (heads before
``proj``, aliased ``blocks.{i}.attn``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from torch import Tensor, nn

from ais.families.vit import TokenFamily, TokenStack, TokenUnits, register_token_family, site_names, split_heads

logger = logging.getLogger(__name__)

MICRO = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)


def require_timm():
    """The ``timm`` module, or an ImportError that says how to install it."""
    try:
        import timm
    except ImportError as exc:
        raise ImportError("timm ViTs need the timm extra: pip install -e '.[timm]'") from exc
    return timm


class TimmViTFamily(TokenFamily):
    name = "timm_vit"
    archs = ("vit_small_patch16_224", "vit_base_patch16_224", "timm_vit_micro_8")
    heads = ("avg", "token")  # avg first: head mlp pools as the DINO seed does
    backbone_prefix = "blocks."

    def build(self, arch: str, head: str, n_outputs: int = 1) -> nn.Module:
        """A randomly initialised timm ``arch`` (``pretrained=False``) with eager attention and unit taps."""
        if head not in self.heads:
            raise ValueError(f"model.head={head!r}: unknown head for {arch}; choose one of {', '.join(self.heads)}")
        if arch not in self.archs:
            raise ValueError(f"model.arch={arch!r} is not a {self.name} architecture ({', '.join(self.archs)})")
        timm = require_timm()
        pool = dict(global_pool="avg", fc_norm=False) if head == "avg" else dict(global_pool="token")
        extra = dict(MICRO) if arch == "timm_vit_micro_8" else {}
        name = "vit_small_patch16_224" if arch == "timm_vit_micro_8" else arch
        model = timm.create_model(name, pretrained=False, num_classes=n_outputs, **pool, **extra)
        for i, block in enumerate(model.blocks):
            if not isinstance(block.mlp.norm, nn.Identity):
                raise ValueError(f"blocks.{i}.mlp has a norm between its activation and fc2: not supported")
            block.attn.fused_attn = False
            split_heads(block.attn.proj, block.attn.num_heads)
            block.mlp.act = TokenUnits(block.mlp.act, block.mlp.fc1.out_features)
        return model

    def fetch_weights(self, arch: str, weights: str, progress: bool = False) -> tuple[dict[str, Tensor], str]:
        """A local ``.safetensors`` state dict of the timm model (no other file type: nothing is unpickled)."""
        path = Path(weights).expanduser()
        if path.is_dir():
            path = path / "model.safetensors"
        if path.suffix.lower() != ".safetensors":
            raise ValueError(f"model.weights={weights!r}: timm ViT weights must be a local .safetensors file "
                             "(or a folder holding model.safetensors); pickled checkpoints are refused")
        return super().fetch_weights(arch, str(path), progress)

    def matches(self, model: nn.Module) -> bool:
        module = sys.modules.get("timm.models.vision_transformer")  # not imported: no timm model exists
        return module is not None and isinstance(model, module.VisionTransformer)

    def stack(self, model: nn.Module) -> TokenStack:
        blocks = list(model.blocks)
        aliases = {}
        for i in range(len(blocks)):
            aliases[f"blocks.{i}.mlp"] = f"blocks.{i}.mlp.act.neurons"
            aliases[f"blocks.{i}.attn"] = f"blocks.{i}.attn.proj.heads"

        def mlp_dirs(i: int) -> Tensor:
            return blocks[i].ls2(blocks[i].mlp.fc2.weight.T.clone())  # a copy: LayerScale may be in place

        def attn_out(i: int, z: Tensor) -> Tensor:
            b = blocks[i]
            return b.drop_path1(b.ls1(b.attn.proj_drop(b.attn.proj(z))))

        def after_attn(i: int, x: Tensor) -> Tensor:
            b = blocks[i]
            return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))

        def finish(x: Tensor) -> Tensor:
            return model.forward_head(model.norm(x))

        first = model.global_pool == "token" and getattr(model, "attn_pool", None) is None
        return TokenStack(blocks, site_names("blocks.", "mlp.act.neurons", "attn.proj.heads", len(blocks)), mlp_dirs,
                          attn_out, after_attn, finish, first_token=first,
                          probs=[b.attn.attn_drop for b in blocks], aliases=aliases)


register_token_family(TimmViTFamily())
