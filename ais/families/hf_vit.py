"""Hugging Face ViTs (``transformers``' ``ViTModel``) from a local model folder, with a pooled n-output head.

Needs the ``hf`` extra (``pip install -e '.[hf]'``); without it the
architectures stay registered and building one says how to install it.

Architectures are ``ViTConfig`` shapes: ``hf_vit_base_patch16_224``
(google/vit-base-patch16-224's), ``hf_vit_small_patch16_224``
(facebook/dino-vits16's: DINO ViT-S/16) and ``hf_vit_micro_8`` (2 blocks,
32 wide, 32-pixel images, 8-pixel patches: tests). The model is
:class:`HFViT`: ``vit`` (a ``ViTModel`` without pooler, built from the
config with ``attn_implementation="eager"``) and ``classifier``
(``Linear(hidden, n_outputs)``) on the class token (head ``token``, as
``ViTForImageClassification``) or on the mean of the patch tokens of
``last_hidden_state`` (head ``avg``: the DINO seed's averaged features).

Weights: ``model.weights`` is a local model folder (``config.json`` and
``model.safetensors``, as ``save_pretrained`` writes), loaded with
``AutoModelForImageClassification.from_pretrained`` (when the config's
``architectures`` says ``ViTForImageClassification``) or ``AutoModel``,
``local_files_only=True, use_safetensors=True`` (never the hub, never a
pickle). The folder's shape must be the architecture's; a classifier whose
size fits ``n_outputs`` loads too.

Attention: ``ViTAttention`` is computed eagerly by this package (same
parameters) so its weights pass an ``AttentionProbs`` tap. Units:
``vit.layers.{i}.mlp.activation_fn.neurons`` (MLP hidden neurons after the GELU,
aliased ``vit.layers.{i}.mlp``) and ``vit.layers.{i}.attention.o_proj.heads``
(heads before ``o_proj``, aliased ``vit.layers.{i}.attention``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor, nn

from ais.families.vit import (
    AttentionProbs, TokenFamily, TokenStack, TokenUnits, eager_attention, register_token_family, site_names,
    split_heads,
)

logger = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, int]] = {
    "hf_vit_base_patch16_224": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    intermediate_size=3072, image_size=224, patch_size=16),
    "hf_vit_small_patch16_224": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                     intermediate_size=1536, image_size=224, patch_size=16),
    "hf_vit_micro_8": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=8),
}


def require_transformers():
    """The ``transformers`` module, or an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError as exc:
        raise ImportError("Hugging Face ViTs need the hf extra: pip install -e '.[hf]'") from exc
    return transformers


class HFViT(nn.Module):
    """``ViTModel`` + ``classifier`` on the class token (``pool="token"``) or the patch tokens' mean (``"avg"``)."""

    def __init__(self, vit: nn.Module, n_outputs: int, pool: str) -> None:
        super().__init__()
        self.vit = vit
        self.classifier = nn.Linear(vit.config.hidden_size, n_outputs)
        self.pool = pool

    def head(self, tokens: Tensor) -> Tensor:
        """The output ``(N, n_outputs)`` from ``last_hidden_state`` ``(N, T, D)`` (after the final layernorm)."""
        return self.classifier(tokens[:, 0] if self.pool == "token" else tokens[:, 1:].mean(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.vit(pixel_values=x).last_hidden_state)


class EagerViTAttention(nn.Module):
    """``transformers``' ``ViTAttention`` forward, eager, its weights through ``probs`` (class swapped in)."""

    probs: AttentionProbs

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None,
                **kwargs: object) -> tuple[Tensor, None]:
        q, k, v = (proj(hidden_states).unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        dropout = self.attention_dropout if self.training else 0.0
        out = eager_attention(q, k, v, self.probs, dropout, self.training, attention_mask)
        return self.o_proj(out.flatten(-2)), None


_EAGER: dict[type, type] = {}


def _eager(attention: nn.Module) -> None:
    """Swap in :class:`EagerViTAttention` (as a subclass of the module's own class) with the taps."""
    base = type(attention)
    if base not in _EAGER:
        _EAGER[base] = type("EagerViTAttention", (EagerViTAttention, base), {"__module__": __name__})
    attention.__class__ = _EAGER[base]
    attention.add_module("probs", AttentionProbs())
    split_heads(attention.o_proj, attention.num_attention_heads)


class HFViTFamily(TokenFamily):
    name = "hf_vit"
    archs = tuple(PRESETS)
    heads = ("avg", "token")  # avg first: head mlp pools as the DINO seed does
    backbone_prefix = "vit."

    def build(self, arch: str, head: str, n_outputs: int = 1) -> nn.Module:
        """A randomly initialised :class:`HFViT` of ``arch``'s config, eager attention, unit taps; CPU, training."""
        if head not in self.heads:
            raise ValueError(f"model.head={head!r}: unknown head for {arch}; choose one of {', '.join(self.heads)}")
        if arch not in PRESETS:
            raise ValueError(f"model.arch={arch!r} is not a {self.name} architecture ({', '.join(self.archs)})")
        transformers = require_transformers()
        config = transformers.ViTConfig(**PRESETS[arch], attn_implementation="eager")
        return self._with_taps(HFViT(transformers.ViTModel(config, add_pooling_layer=False), n_outputs, head))

    @staticmethod
    def _with_taps(model: HFViT) -> HFViT:
        layers = model.vit.layers if hasattr(model.vit, "layers") else None
        if layers is None or not all(hasattr(b, "mlp") and hasattr(b.attention, "o_proj") for b in layers):
            raise ValueError("this transformers version lays ViT out differently; install transformers>=5.24")
        for layer in layers:
            _eager(layer.attention)
            layer.mlp.activation_fn = TokenUnits(layer.mlp.activation_fn, layer.mlp.fc1.out_features)
        model.train()
        return model

    def fetch_weights(self, arch: str, weights: str, progress: bool = False) -> tuple[dict[str, Tensor], str]:
        """The state dict of a local model folder (``from_pretrained``, local files and safetensors only)."""
        folder = Path(weights).expanduser()
        if not (folder / "config.json").is_file():
            raise ValueError(f"model.weights={weights!r}: a Hugging Face ViT needs a local model folder with "
                             "config.json and model.safetensors (save_pretrained writes one)")
        transformers = require_transformers()
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        wrong = {k: (getattr(config, k, None), v) for k, v in PRESETS[arch].items() if getattr(config, k, None) != v}
        if getattr(config, "model_type", None) != "vit" or wrong:
            raise ValueError(f"{folder}/config.json: not a {arch} (model_type {config.model_type!r}; "
                             f"field: (folder, {arch}) = {wrong})")
        classifier = "ViTForImageClassification" in (getattr(config, "architectures", None) or [])
        auto = transformers.AutoModelForImageClassification if classifier else transformers.AutoModel
        loaded = auto.from_pretrained(folder, local_files_only=True, use_safetensors=True, attn_implementation="eager")
        state = loaded.state_dict()
        if not classifier:  # a ViTModel's pooler (dense + tanh on the class token) is not used by HFViT
            pooler = [k for k in state if k.startswith("pooler.")]
            if pooler:
                logger.info("%s: its pooler (%s) is not used (head: token or avg of last_hidden_state)",
                            folder, ", ".join(pooler))
            state = {f"vit.{k}": v for k, v in state.items() if k not in pooler}
        return state, f"{auto.__name__}.from_pretrained({str(folder)!r})"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, HFViT)

    def stack(self, model: nn.Module) -> TokenStack:
        blocks = list(model.vit.layers)
        prefix = "vit.layers."
        aliases = {}
        for i in range(len(blocks)):
            aliases[f"{prefix}{i}.mlp"] = f"{prefix}{i}.mlp.activation_fn.neurons"
            aliases[f"{prefix}{i}.attention"] = f"{prefix}{i}.attention.o_proj.heads"

        def attn_out(i: int, z: Tensor) -> Tensor:
            return blocks[i].dropout(blocks[i].attention.o_proj(z))

        def after_attn(i: int, x: Tensor) -> Tensor:
            return x + blocks[i].dropout(blocks[i].mlp(blocks[i].layernorm_after(x)))

        def finish(x: Tensor) -> Tensor:
            return model.head(model.vit.layernorm(x))

        return TokenStack(blocks, site_names(prefix, "mlp.activation_fn.neurons", "attention.o_proj.heads", len(blocks)),
                          lambda i: blocks[i].mlp.fc2.weight.T, attn_out, after_attn, finish,
                          first_token=model.pool == "token", probs=[b.attention.probs for b in blocks],
                          aliases=aliases)


register_token_family(HFViTFamily())
