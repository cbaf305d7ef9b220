"""The engine: :class:`ChannelAblation` ablates every output channel of one layer, exactly and fast."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ais.ablation.cuts import _cut_network, _Cuts, _module_names
from ais.ablation.residual import residual_plan
from ais.hooks import Hooks
from ais.layers import resolve_layer, unit_channels
from ais.targets import RegressionTarget, Target

logger = logging.getLogger(__name__)

PATHS = ("lowrank", "tail", "generic")  # any model: the traced cuts (fastest first), else the whole model
VIT_PATHS = ("residual", "generic")  # a ViT block's units (ais.ablation.residual), else the whole model
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of activations per ablated batch when channel_batch="auto"


def require_eval(model: nn.Module) -> None:
    """Refuse a model with any module in training mode (dropout and batch statistics make ablation meaningless)."""
    training = [name or "(model)" for name, m in model.named_modules() if m.training]
    if training:
        more = ", ..." if len(training) > 5 else ""
        raise ValueError(
            "the model must be in eval mode (dropout and batch statistics make ablation meaningless); "
            f"call model.eval() first (in training mode: {', '.join(training[:5])}{more})"
        )


def _as_index(channels: Sequence[int] | Tensor | None, n_channels: int, device: torch.device) -> Tensor:
    if channels is None:
        return torch.arange(n_channels, device=device)
    idx = torch.as_tensor(channels, dtype=torch.long).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_channels):
        raise ValueError(f"channels must lie in [0, {n_channels}); got {idx.min().item()}..{idx.max().item()}")
    return idx.to(device)


def _take(t: Tensor, dim: int, idx: Tensor) -> Tensor:
    """``t.index_select(dim, idx)``, but a view (no copy) when ``idx`` is a run ``a, a+1, ..., b``."""
    if len(idx) and int(idx[-1]) - int(idx[0]) == len(idx) - 1 and bool((idx.diff() == 1).all()):
        return t.narrow(dim, int(idx[0]), len(idx))
    return t.index_select(dim, idx)


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(total, start + size))


def _per_sample(t: object) -> int:
    return t[0].numel() if isinstance(t, Tensor) and t.ndim >= 1 and t.shape[0] else 0


def _rows(kept: Mapping[str, Tensor], names: Sequence[str], images: Tensor) -> dict[str, Tensor]:
    """The kept tensors ``names`` for rows ``images`` (copies: the suffix may write into them in place)."""
    return {k: kept[k][images] for k in names}


def _resolve(model: nn.Module, name: str, family: Any) -> str:
    """The layer to ablate: by ``family`` when given (a ViT's own family is found); else any module with
    known output channels (``auto``: the last conv)."""
    from ais.families.vit import token_family

    family = token_family(model) if family is None else family
    if family is not None:
        return family.resolve_layer(model, name)
    modules = dict(model.named_modules())
    if name != "auto" and name in modules and unit_channels(modules[name]) is not None:
        return name
    return resolve_layer(model, name)


@dataclass
class _Forward:
    """What one ordinary forward pass of ``N`` images leaves behind."""

    key: tuple[int, ...]  # the input's (3, H, W): activation sizes depend on it
    y_pred: Tensor  # (N,)
    activation: Tensor | None  # A, the layer output (N, C, H, W)
    linear_in: Tensor | None  # g (N, F), lowrank only
    linear_out: Tensor | None  # z (N, out), lowrank only
    sizes: dict[str, int]  # per-sample numel of each leaf module's output (when recorded)
    kept: dict[str, Tensor] = field(default_factory=dict)  # prefix values the suffix reads (skip connections)


class ChannelAblation:
    """Ablate every output channel of one layer (an ``nn.Conv2d``, a residual block, ...), exactly and fast.

    ``engine(x)`` with images ``x`` of shape ``(N, 3, H, W)`` returns
    ``(y_pred, y_ablated)`` of shapes ``(N,)`` and ``(N, K)`` (float32, on the
    CPU): the target of the unablated model and, for each of the ``K``
    channels (all ``C`` by default), of the model with that channel zeroed.

    Parameters
    ----------
    model:
        In eval mode. Its weights are never written; the engine registers
        forward hooks only while a call runs and removes them in ``finally``.
    target_layer:
        Module name of the layer (``"features.28"``, ``"layer4.2"``) or ``"auto"``
        (``family``'s default layer; without a family, the last Conv2d). Any
        module whose output is ``(N, C, ...)`` with ``C`` known from its last
        conv, norm or Linear (:func:`ais.layers.unit_channels`) can be named.
    target:
        Callable mapping the model output ``(N, ...)`` to ``(N,)``; default
        :class:`RegressionTarget`.
    channel_batch:
        Ablated copies (image x channel) evaluated per pass, or ``"auto"``:
        as many as keep the pass's activations under ``memory_budget`` bytes.
    device:
        Where to run; ``None``: where the model's parameters are. Otherwise
        the model is moved there (``model.to(device)``, values unchanged).
    path:
        ``"auto"`` (``lowrank``, else ``tail``, else ``generic``) or one of
        :data:`PATHS` or ``"residual"`` (a ViT block's units; ``ValueError``
        if it does not apply to the model).
    family:
        The model's :class:`ais.families.Family`: ``target_layer`` is resolved
        against its explainable layers.

    Use as a context manager (or call :meth:`close`) to release the engine's
    cached weight layout.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str = "auto",
        target: Target | None = None,
        channel_batch: int | str = "auto",
        device: str | torch.device | None = None,
        path: str = "auto",
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        family: Any = None,
    ) -> None:
        if channel_batch != "auto" and not (isinstance(channel_batch, int) and channel_batch >= 1):
            raise ValueError(f"channel_batch must be a positive integer or 'auto', got {channel_batch!r}")
        if path != "auto" and path not in PATHS + VIT_PATHS:
            raise ValueError(f"path must be 'auto' or one of {PATHS + VIT_PATHS[:1]}, got {path!r}")
        require_eval(model)
        self.model = model
        self.layer_name = _resolve(model, target_layer, family)
        self.layer: nn.Module = model.get_submodule(self.layer_name)
        self.n_channels: int = unit_channels(self.layer) or 0
        self.target: Target = RegressionTarget() if target is None else target
        self.channel_batch = channel_batch
        self.memory_budget = int(memory_budget)
        param = next(model.parameters())
        self.dtype = param.dtype if param.is_floating_point() else torch.float32  # images are cast to it
        self.device = param.device if device is None else torch.device(device)
        if param.device != self.device:
            model.to(self.device)
        self._hooks = Hooks()
        self._weight_cache: dict[int, tuple[int, int, Tensor]] = {}
        self._auto_batch: dict[tuple[int, ...], int] = {}

        self._choose_path(model, path)
        pieces = {"lowrank": (self._plan.between, self._plan.rest) if self._plan else (),
                  "tail": (self._tail.head, self._tail.rest) if self._tail else (), "residual": (),
                  "generic": ()}[self.path]
        # the suffix reads values kept from before the layer: hooks keep them in the model's own pass where
        # they can, else the traced prefix computes them (a second pass up to the layer)
        self._kept = any(p.extras for p in pieces)
        self._uses_prefix = self._kept and self._cuts.captures is None
        if self.path != self._order[0]:
            logger.info("%s: %s path (%s)", self.layer_name, self.path,
                        "; ".join(f"not {p}: {why}" for p, why in self.why_not_faster().items()))

    def _choose_path(self, model: nn.Module, path: str) -> None:
        """Cut the network after the layer (a ViT block's units: the residual stream) and pick the path."""
        self._residual, why_not_residual = residual_plan(model, self.layer_name)
        if self._residual is not None:  # a ViT block's units: the residual stream, not a traced cut
            why = "the units are a ViT block's MLP neurons or heads (the residual path applies)"
            cuts = _Cuts(None, None, None, (), None, {"lowrank": why, "tail": why}, self._residual)
        else:
            cuts = _cut_network(model, self.layer_name)
            cuts.reasons["residual"] = why_not_residual
        self._order = VIT_PATHS if self._residual is not None else PATHS  # fastest first
        self._cuts, self._plan, self._tail = cuts, cuts.lowrank, cuts.tail
        self.reasons = cuts.reasons  # path -> why it does not apply
        if path == "auto":
            self.path = cuts.available[0]
        elif path in cuts.available:
            self.path = path
        else:
            raise ValueError(f"path {path!r} does not apply to {type(model).__name__}: {self.reasons[path]}")

    # ----------------------------------------------------------------- public

    def __call__(self, x: Tensor, channels: Sequence[int] | Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Ablate ``channels`` (default: all) for images ``x`` ``(N, 3, H, W)``, cast to the model's dtype.

        Returns ``y_pred`` ``(N,)`` and ``y_ablated`` ``(N, K)``, float32 on the CPU.
        """
        x = x.to(self.device, self.dtype)
        idx = _as_index(channels, self.n_channels, self.device)
        try:
            with torch.no_grad():
                fwd = self._forward(x)
                if idx.numel() == 0:
                    y_abl = x.new_empty(len(x), 0)
                elif self.path == "lowrank":
                    y_abl = self._lowrank(fwd, idx)
                elif self.path == "tail":
                    y_abl = self._tail_path(fwd, idx)
                elif self.path == "residual":
                    y_abl = self._residual_path(fwd, idx)
                else:
                    y_abl = self._generic(x, fwd, idx)
            return fwd.y_pred.float().cpu(), y_abl.float().cpu()
        finally:
            self._hooks.remove()

    def close(self) -> None:
        """Remove any hook still registered and drop cached tensors."""
        self._hooks.remove()
        self._weight_cache.clear()

    def __enter__(self) -> "ChannelAblation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def why_not_faster(self) -> dict[str, str]:
        """For each path faster than the one taken, why it was not taken."""
        order = self._order
        return {p: self.reasons.get(p, f"path={self.path!r} was asked for") for p in order[:order.index(self.path)]}

    def describe(self) -> dict[str, object]:
        """The engine's settings, for provenance metadata."""
        return {
            "target_layer": self.layer_name,
            "n_channels": self.n_channels,
            "path": self.path,
            "why_not_faster": self.why_not_faster(),
            "kept_tensors": len(self._cuts.kept) if self._kept else 0,
            "kept_by": ("prefix pass" if self._uses_prefix else "hooks") if self._kept else None,
            "target": repr(self.target),
            "channel_batch": self.channel_batch,
        }

    # ----------------------------------------------------------------- passes

    def _forward(self, x: Tensor) -> _Forward:
        """One ordinary forward pass of the model, capturing what the chosen path needs.

        Values kept from before the layer (skip connections) are kept by
        hooks in the same pass; where the trace shows no place for a hook, the
        traced prefix also runs, and computes ``A`` and them.
        """
        captured: dict[str, Tensor] = {}
        sizes: dict[str, int] = {}
        kept: dict[str, Tensor] = {}
        key = tuple(x.shape[1:])
        if self.path == "residual":
            self._residual.keep(self._hooks, kept)
        elif self.path != "generic" and not self._uses_prefix:
            # clone: torchvision's ReLU(inplace=True) would overwrite the layer output
            self._hooks.add(self.layer, lambda m, i, o: captured.__setitem__("A", o.clone()))
            if self.path == "lowrank":
                self._hooks.add(self._plan.linear, lambda m, i, o: captured.update(g=i[0].clone(), z=o.clone()))
            if self._kept:
                self._keep_by_hooks(x, kept)
        if self.channel_batch == "auto" and key not in self._auto_batch and self.path != "residual":
            for name, m in self.model.named_modules():
                if not any(True for _ in m.children()):
                    self._hooks.add(m, lambda m, i, o, name=name: sizes.__setitem__(name, _per_sample(o)))
        try:
            output = self.model(x)
        finally:
            self._hooks.remove()
        y = self.target(output)
        if y.shape != (len(x),):
            raise ValueError(f"the target must map the model output to shape ({len(x)},), got {tuple(y.shape)}")
        if self._uses_prefix:
            captured["A"], *values = self._cuts.prefix(x)
            kept = dict(zip(self._cuts.kept, values))
            if self.path == "lowrank":
                captured["g"] = self._plan.between(captured["A"].clone(), _clones(kept))
                captured["z"] = self._plan.linear(captured["g"])
        A = captured.get("A", kept.get("A"))
        if A is not None and (A.ndim < 2 or A.shape[1] != self.n_channels):
            raise RuntimeError(f"{self.layer_name}'s output has shape {tuple(A.shape)}, expected "
                               f"{self.n_channels} channels in dimension 1")
        return _Forward(key, y, A, captured.get("g"), captured.get("z"), sizes, kept)

    def _keep_by_hooks(self, x: Tensor, kept: dict[str, Tensor]) -> None:
        """Register hooks that keep, during the model's pass, the values the suffix reads (cloned)."""
        for name, (module, where) in self._cuts.captures.items():
            if not module:
                kept[name] = x
            elif where == "output":
                self._hooks.add(self.model.get_submodule(module),
                                lambda m, i, o, name=name: kept.__setitem__(name, o.clone()))
            else:
                self._hooks.add(self.model.get_submodule(module),
                                lambda m, i, o, name=name: kept.__setitem__(name, i[0].clone()))

    def _batch_rows(self, fwd: _Forward, stage_modules: Sequence[str], width: int) -> int:
        """Ablated copies per pass: the integer setting, or sized from the stage's activations.

        ``width``: per-copy numel of the stage's input; ``stage_modules``: the
        modules it runs, whose per-copy output sizes the forward pass recorded.
        """
        if self.channel_batch != "auto":
            return int(self.channel_batch)
        if fwd.key not in self._auto_batch:
            per_copy = max([width] + [fwd.sizes.get(name, 0) for name in stage_modules])
            self._auto_batch[fwd.key] = max(1, self.memory_budget // (3 * 4 * per_copy))  # in, out, slack; float32
        return self._auto_batch[fwd.key]

    def _check(self, y_cut: Tensor, y_pred: Tensor, what: str) -> None:
        if not torch.allclose(y_cut, y_pred, rtol=1e-4, atol=1e-5):
            err = (y_cut - y_pred).abs().max().item()
            raise RuntimeError(
                f"the {what} cut out of the traced model does not reproduce the model's prediction "
                f"(max |difference| {err:.3g}); the model's forward differs from its trace: use path='generic'"
            )

    def _lowrank(self, fwd: _Forward, idx: Tensor) -> Tensor:
        """``z_c = z - W[:, block_c] @ (g_c - g0_c)``, then the layers after the first Linear."""
        plan, A, g, z, kept = self._plan, fwd.activation, fwd.linear_in, fwd.linear_out, fwd.kept
        n, c = A.shape[:2]
        if not self._uses_prefix:  # with the prefix, g was computed by the cut itself
            self._check(plan.between(A.clone(), _clones(kept)), g, "part between the layer and the first Linear")
        self._check(self.target(plan.rest(z.clone(), _clones(kept))), fwd.y_pred, "part after the first Linear")
        # each channel's block when it is zeroed: per image when a kept tensor enters between (N or 1, F)
        g0 = plan.between(torch.zeros_like(A if plan.between.extras else A[:1]), _clones(kept))
        block = g.shape[1] // c
        if g.ndim != 2 or g.shape[1] != c * block:
            raise RuntimeError(f"the first Linear's input {tuple(g.shape)} is not {c} channel blocks")
        d = (g - g0).view(n, c, block)  # (N, C, block)
        weight = self._block_weight(plan.linear, c, block)  # (C, block, out)
        rows = self._batch_rows(fwd, _module_names(plan.rest), plan.linear.out_features)
        per_chunk = max(1, rows // n)
        out = []
        for sl in _chunks(len(idx), per_chunk):
            ch = idx[sl]
            dz = torch.bmm(_take(d, 1, ch).transpose(0, 1), _take(weight, 0, ch))  # (K, N, out)
            zc = z.unsqueeze(0) - dz
            images = torch.arange(len(ch) * n, device=A.device) % n  # rows ordered channel, image
            y = self.target(plan.rest(zc.reshape(-1, zc.shape[-1]), _rows(kept, plan.rest.extras, images)))
            out.append(y.view(len(ch), n).T)
        return torch.cat(out, dim=1)

    def _block_weight(self, linear: nn.Linear, c: int, block: int) -> Tensor:
        """The first Linear's weight as ``(C, block, out)`` blocks, contiguous for ``bmm``.

        Cached (one copy of the weight) and rebuilt if the weight changes.
        """
        w = linear.weight
        cached = self._weight_cache.get(block)
        stamp = (w.data_ptr(), w._version)
        if cached is None or cached[:2] != stamp:
            blocks = w.detach().view(w.shape[0], c, block).permute(1, 2, 0).contiguous()
            self._weight_cache = {block: (*stamp, blocks)}
            cached = self._weight_cache[block]
        return cached[2]

    def _pairs(self, n: int, idx: Tensor, rows: int) -> Iterator[tuple[Tensor, Tensor]]:
        """(image, channel) index pairs, image-major, ``rows`` at a time."""
        k = len(idx)
        for sl in _chunks(n * k, rows):
            r = torch.arange(sl.start, sl.stop, device=idx.device)
            yield r // k, idx[r % k]

    def _tail_path(self, fwd: _Forward, idx: Tensor) -> Tensor:
        """The suffix on copies of ``B = head(A)``, copy ``k`` with channel ``c_k`` of ``head(0)``; the kept tensors.

        ``head``: the channel-wise operations right after the layer (none: ``B = A``,
        and an ablated channel is zero).
        """
        A, kept, plan = fwd.activation, fwd.kept, self._tail
        B = plan.head(A.clone(), _clones(kept))  # (N, C, h, w)
        self._check(self.target(plan.rest(B.clone(), _clones(kept))), fwd.y_pred, "tail after the layer")
        # each channel after head when it is zeroed: per image when a kept tensor enters head (N or 1, C, h, w)
        B0 = plan.head(torch.zeros_like(A if plan.head.extras else A[:1]), _clones(kept))
        width = B[0].numel() + sum(kept[k][0].numel() for k in plan.rest.extras)
        rows = self._batch_rows(fwd, _module_names(plan.rest), width)
        out = []
        for images, chans in self._pairs(len(A), idx, rows):
            copies = B[images]  # advanced indexing: a copy
            source = images if len(B0) > 1 else torch.zeros_like(images)
            copies[torch.arange(len(images), device=A.device), chans] = B0[source, chans]
            out.append(self.target(plan.rest(copies, _rows(kept, plan.rest.extras, images))))
        return torch.cat(out).view(len(A), len(idx))

    def _residual_path(self, fwd: _Forward, idx: Tensor) -> Tensor:
        """A ViT block's units on the residual stream (:mod:`ais.ablation.residual`): the later blocks on copies."""
        plan, n = self._residual, len(fwd.y_pred)
        if self.channel_batch != "auto":
            rows = int(self.channel_batch)
        else:
            rows = max(1, self.memory_budget // (3 * 4 * plan.per_copy(fwd.kept)))
        y = plan.ablate(fwd.kept, self._pairs(n, idx, rows), self.target,
                        lambda y, what: self._check(y, fwd.y_pred, what))
        return y.view(n, len(idx))

    def _generic(self, x: Tensor, fwd: _Forward, idx: Tensor) -> Tensor:
        """The whole model on copies of the images, the layer's output masked by a hook."""
        rows = self._batch_rows(fwd, [n for n, _ in self.model.named_modules()], x[0].numel())
        out = []
        for images, chans in self._pairs(len(x), idx, rows):

            def zero_channel(m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, chans: Tensor = chans) -> Tensor:
                mask = torch.zeros(output.shape[:2], dtype=torch.bool, device=output.device)
                mask[torch.arange(len(chans), device=output.device), chans] = True
                return output.masked_fill(mask.view(*mask.shape, *([1] * (output.ndim - 2))), 0.0)

            self._hooks.add(self.layer, zero_channel)
            try:
                out.append(self.target(self.model(x[images])))
            finally:
                self._hooks.remove()
        return torch.cat(out).view(len(x), len(idx))


def _clones(kept: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in kept.items()}
