"""The ``residual`` path: a Vision Transformer block's units ablated on the residual stream, exactly.

A ViT block ``b`` adds two branches to the residual stream ``x``:
``x_mid = x + attn(x)`` and ``out = x_mid + mlp(x_mid)``. With its units
(:mod:`ais.families.vit`):

- zeroing MLP hidden neuron ``j`` changes the block output at token ``t`` by
  ``-h_j(t) * u_j`` (``u_j``: column ``j`` of the second MLP Linear, times
  any layer scale; :attr:`ais.families.vit.TokenStack.mlp_dirs`), a rank-1
  change, so the ablated copies of ``out`` are formed directly;
- zeroing head ``k`` changes the attention branch; ``x_mid`` is formed from
  the kept block input and the heads' outputs with head ``k`` zeroed, and
  the block's MLP runs on it.

Only the blocks after ``b``, the final norm and the head then run on the
copies (the prefix up to ``b`` ran once, in the ordinary pass, whose hooks
keep the block's input and output and the units' activations). For the last
block, when the head reads the class token only (``first_token``), only that
token's stream is formed: every block operation after the attention is per
token, so ~all units cost a fraction of one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from ais.families.vit import TokenStack, token_stack
from ais.hooks import Hooks


@dataclass
class ResidualPlan:
    """Where the unit site sits in the residual stream: block ``block`` of ``stack``, ``kind`` mlp or heads."""

    stack: TokenStack
    block: int
    kind: str
    site: nn.Module

    @property
    def tokens(self) -> slice:
        """The tokens the copies need: the class token alone after the last block of a class-token head."""
        last = self.block == len(self.stack.blocks) - 1
        return slice(0, 1) if last and self.stack.first_token else slice(None)

    def keep(self, hooks: Hooks, store: dict[str, Tensor]) -> None:
        """Hooks that keep the units' activations ``A``, the block's input ``x_in`` and output ``out`` (clones)."""
        hooks.add(self.site, lambda m, i, o: store.__setitem__("A", o.clone()))
        block = self.stack.blocks[self.block]
        hooks.add(block, lambda m, i, o: store.update(x_in=i[0].clone(), out=_first(o).clone()))

    def per_copy(self, store: dict[str, Tensor]) -> int:
        """Elements one ablated copy holds at most while the later blocks run (stream, MLP hidden, attention)."""
        out = store["out"][:, self.tokens]
        t, d = out.shape[1:]
        later = len(self.stack.blocks) - 1 - self.block
        return t * 6 * d + (t * t * 16 if later or self.kind == "heads" else 0)

    def ablate(self, store: dict[str, Tensor], pairs: Iterator[tuple[Tensor, Tensor]],
               target: Callable[[Tensor], Tensor], check: Callable[[Tensor, str], None]) -> Tensor:
        """The target for each ``(image, unit)`` pair of ``pairs`` (chunks of index tensors), concatenated ``(P,)``.

        ``check(y, what)`` compares a target of the unablated stream with the model's prediction.
        """
        tok = self.tokens
        A = store["A"][:, :, tok]  # the units on axis 1: neurons (N, C, T), heads (N, H, T, d)
        x_in, out = store["x_in"][:, tok], store["out"][:, tok]  # the stream (N, T, D)
        check(target(self.finish(out.clone())), "the blocks after the unit's block")
        if self.kind == "heads":
            check(target(self.finish(self._block_from_heads(x_in, A))), "the block from its heads' outputs")
        else:
            dirs = self.stack.mlp_dirs(self.block).to(out.dtype)  # (C, D)
        ys = []
        for images, units in pairs:
            if self.kind == "mlp":
                coef = A[images, units]  # (M, T): each copy's unit at each token
                copies = out.index_select(0, images).addcmul_(coef.unsqueeze(-1), dirs[units].unsqueeze(1), value=-1)
            else:
                heads = A[images]  # advanced indexing: a copy, (M, H, T, d)
                heads[torch.arange(len(units), device=heads.device), units] = 0
                copies = self._block_from_heads(x_in[images], heads)
            ys.append(target(self.finish(copies)))
        return torch.cat(ys) if ys else out.new_empty(0)

    def _block_from_heads(self, x_in: Tensor, heads: Tensor) -> Tensor:
        """The block's output from its input ``(M, T, D)`` and its heads' outputs ``(M, H, T, d)``."""
        z = heads.transpose(1, 2).flatten(-2)  # the out-projection's input (M, T, H * d)
        return self.stack.after_attn(self.block, x_in + self.stack.attn_out(self.block, z))

    def finish(self, x: Tensor) -> Tensor:
        """The model output from the unit block's output: the later blocks, the final norm and the head."""
        for j in range(self.block + 1, len(self.stack.blocks)):
            x = self.stack.run_block(j, x)
        return self.stack.finish(x)


def residual_plan(model: nn.Module, layer_name: str) -> tuple[ResidualPlan | None, str]:
    """The plan for unit site ``layer_name`` of a ViT built by a ViT family, or ``(None, why not)``."""
    stack = token_stack(model)
    if stack is None:
        return None, "the model is not a Vision Transformer of a ViT family"
    if layer_name not in stack.sites:
        return None, f"{layer_name} is not a unit site (MLP hidden activation or heads) of a ViT block"
    block, kind = stack.sites[layer_name]
    return ResidualPlan(stack, block, kind, model.get_submodule(layer_name)), ""


def _first(out: object) -> Tensor:
    return out[0] if isinstance(out, tuple) else out
