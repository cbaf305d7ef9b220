"""Channel ablation of one convolution: the exact and fast engine behind AIS.

For an image ``x`` and a target :class:`torch.nn.Conv2d`, the ablated
prediction for channel ``c`` is the model's output when that conv's output
channel ``c`` is exactly zero (its ``weight[c]`` and ``bias[c]`` set to zero),
before whatever follows it (ReLU, BatchNorm, pooling, ...). A *target*
callable maps the model's output ``(N, ...)`` to one scalar per image ``(N,)``.

:class:`ChannelAblation` computes all channels of a batch of images without
ever writing into the model's weights, by one of three paths (all equal to
:func:`naive_ablation` up to float32 rounding):

``lowrank``
    Everything between the conv and the first ``nn.Linear`` acts channel by
    channel (ReLU, eval BatchNorm2d, pooling, Flatten, eval Dropout, ...), so
    zeroing channel ``c`` changes only block ``c`` of the Linear's input
    ``g``. One ordinary forward pass captures ``A`` (the conv output), ``g``
    and ``z = W g + b``; then for every channel
    ``z_c = z - W[:, block_c] @ (g_c - g0_c)`` (``g0_c``: the block of an
    all-zero channel, e.g. ``relu(bn(0))`` pooled) and only the layers after
    the first Linear run, on ``(N * C, out)`` rows.
``tail``
    The rest of the network after the conv is a function of the conv output
    alone (no skip connection across it): the network runs once up to the
    conv, then only the tail runs on ``(N * K, C, H, W)`` copies of ``A``,
    copy ``k`` with channel ``c_k`` zeroed.
``generic``
    Any model (ResNets, ...): the whole model runs on ``N * K`` copies of the
    images with a forward hook on the conv that returns its output with
    channel ``c_k`` zeroed in copy ``k``. Slower, but needs nothing from the
    model's structure.

``lowrank`` and ``tail`` cut the network with :mod:`torch.fx`; a model that
cannot be traced falls back to ``generic``. Each call checks that the cut
network reproduces the model's own prediction, so a cut that does not match
the model's ``forward`` is an error, never a silently wrong table.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ais.tables import ABLATION_SCHEMA

__all__ = [
    "PATHS",
    "ChannelAblation",
    "ClassProbabilityTarget",
    "RegressionTarget",
    "Target",
    "ablate_images",
    "ablation_table",
    "conv_layer_names",
    "naive_ablation",
    "resolve_layer",
]

logger = logging.getLogger(__name__)

PATHS = ("lowrank", "tail", "generic")
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of activations per ablated batch when channel_batch="auto"


# --------------------------------------------------------------------------- targets


class Target(Protocol):
    """Maps a model output ``(N, ...)`` to one scalar per image ``(N,)``."""

    def __call__(self, output: Tensor) -> Tensor: ...


class RegressionTarget:
    """Output unit ``index`` of a regressor: ``output[:, index]`` -> ``(N,)``.

    A 1-D output ``(N,)`` is taken as it is.
    """

    def __init__(self, index: int = 0) -> None:
        self.index = index

    def __call__(self, output: Tensor) -> Tensor:
        if output.ndim == 1:
            return output
        return output.reshape(output.shape[0], -1)[:, self.index]

    def __repr__(self) -> str:
        return f"RegressionTarget({self.index})"


class ClassProbabilityTarget:
    """Softmax probability of class ``index`` for logits ``(N, n_classes)`` -> ``(N,)``."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output: Tensor) -> Tensor:
        return torch.softmax(output.reshape(output.shape[0], -1), dim=1)[:, self.index]

    def __repr__(self) -> str:
        return f"ClassProbabilityTarget({self.index})"


# --------------------------------------------------------------------------- layers


def conv_layer_names(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_modules()``) of every ``nn.Conv2d``, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def resolve_layer(model: nn.Module, name: str) -> str:
    """Return the module name of the target conv; ``"auto"`` is the last ``nn.Conv2d``.

    Raises ``ValueError`` listing the model's Conv2d names when ``name`` does
    not exist or is not a Conv2d.
    """
    convs = conv_layer_names(model)
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer to ablate")
    if name == "auto":
        return convs[-1]
    modules = dict(model.named_modules())
    if name not in modules:
        raise ValueError(
            f"target layer {name!r} not found in {type(model).__name__}; Conv2d layers: {', '.join(convs)}"
        )
    if not isinstance(modules[name], nn.Conv2d):
        raise ValueError(
            f"target layer {name!r} is a {type(modules[name]).__name__}, not an nn.Conv2d; "
            f"Conv2d layers: {', '.join(convs)}"
        )
    return name


def _require_eval(model: nn.Module) -> None:
    training = [name or "(model)" for name, m in model.named_modules() if m.training]
    if training:
        more = ", ..." if len(training) > 5 else ""
        raise ValueError(
            "the model must be in eval mode (dropout and batch statistics make ablation meaningless); "
            f"call model.eval() first (in training mode: {', '.join(training[:5])}{more})"
        )


# --------------------------------------------------------------------------- hooks


class _Hooks:
    """Forward hooks owned by the engine; :meth:`remove` runs in ``finally`` after each pass."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def forward(self, module: nn.Module, hook: Callable) -> None:
        self._handles.append(module.register_forward_hook(hook))

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


# --------------------------------------------------------------------------- graph cuts (torch.fx)

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
)  # fmt: skip
_SPATIAL_MODULES = (nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_ELEMENTWISE_FUNCTIONS = (torch.relu, F.relu, torch.sigmoid, torch.tanh, F.gelu, F.silu)
_SPATIAL_FUNCTIONS = (F.adaptive_avg_pool2d, F.max_pool2d, F.avg_pool2d)


def _trace(model: nn.Module) -> tuple[fx.GraphModule | None, str]:
    """Symbolically trace ``model`` (sharing its modules); ``(None, reason)`` when it cannot be traced."""
    try:
        return fx.symbolic_trace(model), ""
    except Exception as exc:  # any Python in forward may defeat tracing
        return None, f"the model cannot be traced by torch.fx ({type(exc).__name__}: {exc})"


def _cut_after(gm: fx.GraphModule, start: fx.Node) -> fx.GraphModule | None:
    """A module computing the model's output from the value of ``start`` alone.

    ``None`` when a value computed before ``start`` (the input, a skip
    connection) is used after it. Parameters and submodules are shared.
    """
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    i0 = pos[start]
    for n in nodes[:i0]:
        if n.op != "get_attr" and any(pos[u] > i0 for u in n.users):
            return None
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: graph.placeholder("activation")}
    for n in nodes[:i0]:
        if n.op == "get_attr":
            env[n] = graph.node_copy(n, env.__getitem__)
    for n in nodes[i0 + 1 :]:
        if n.op == "output":
            graph.output(fx.node.map_arg(n.args[0], env.__getitem__))
            break
        env[n] = graph.node_copy(n, env.__getitem__)
    return fx.GraphModule(gm, graph)


def _subgraph(gm: fx.GraphModule, start: fx.Node, end: fx.Node) -> fx.GraphModule:
    """A module mapping the value of ``start`` to the value of ``end`` (a chain that follows ``start``)."""
    nodes = list(gm.graph.nodes)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: graph.placeholder("activation")}
    for n in nodes[nodes.index(start) + 1 : nodes.index(end) + 1]:
        env[n] = graph.node_copy(n, env.__getitem__)
    graph.output(env[end])
    return fx.GraphModule(gm, graph)


def _flatten_dims(node: fx.Node) -> tuple[int, int] | None:
    """``(start_dim, end_dim)`` of a flatten node (module, function or method), else ``None``."""
    if (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    ):
        args = list(node.args[1:]) + [None, None]
        start = node.kwargs.get("start_dim", args[0] if args[0] is not None else 0)
        end = node.kwargs.get("end_dim", args[1] if args[1] is not None else -1)
        return int(start), int(end)
    return None


def _channelwise_kind(gm: fx.GraphModule, node: fx.Node, prev: fx.Node) -> str | None:
    """``"elementwise"``, ``"spatial"`` (per-channel on ``(N, C, H, W)``) or ``"flatten"``; ``None`` otherwise."""
    if node.all_input_nodes != [prev]:
        return None
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.Flatten):
            return "flatten" if (module.start_dim, module.end_dim) == (1, -1) else None
        if isinstance(module, _ELEMENTWISE_MODULES):
            return "elementwise"
        if isinstance(module, nn.BatchNorm2d):
            return "spatial" if module.running_mean is not None and not module.training else None
        if isinstance(module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
            return None if module.return_indices else "spatial"
        if isinstance(module, _SPATIAL_MODULES):
            return "spatial"
        return None
    dims = _flatten_dims(node)
    if dims is not None:
        return "flatten" if dims == (1, -1) else None
    if node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS:
        return "elementwise"
    if node.op == "call_function" and node.target in _SPATIAL_FUNCTIONS and not node.kwargs.get("return_indices"):
        return "spatial"
    if node.op == "call_method" and node.target in ("relu", "relu_", "sigmoid", "tanh"):
        return "elementwise"
    return None


@dataclass
class _LowRankPlan:
    """The network after the conv as ``rest(linear(between(A)))``, ``between`` acting channel by channel."""

    between: fx.GraphModule  # (N, C, H, W) -> (N, C * block)
    linear: nn.Linear
    linear_name: str
    rest: fx.GraphModule  # (M, out_features) -> model output (M, ...)


def _lowrank_plan(gm: fx.GraphModule, conv: fx.Node) -> _LowRankPlan | str:
    """The low-rank decomposition after ``conv``, or the reason why there is none."""
    node, flattened = conv, False
    while True:
        users = list(node.users)
        if len(users) != 1:
            return f"the output of {node.name} is used by {len(users)} operations"
        nxt = users[0]
        if nxt.op == "call_module" and isinstance(gm.get_submodule(nxt.target), nn.Linear):
            break
        kind = _channelwise_kind(gm, nxt, node)
        if kind is None:
            return f"{nxt.format_node()} between the conv and the first Linear is not a channel-wise operation"
        if flattened and kind == "spatial":
            return f"{nxt.name} acts on flattened features"
        if kind == "flatten":
            if flattened:
                return "two flattens before the first Linear"
            flattened = True
        node = nxt
    if not flattened:
        return "no flatten(start_dim=1) before the first Linear"
    if list(nxt.args) != [node] or nxt.kwargs:
        return f"unexpected arguments to {nxt.name}"
    rest = _cut_after(gm, nxt)
    if rest is None:
        return f"a value computed before {nxt.target} is used after it"
    return _LowRankPlan(_subgraph(gm, conv, node), gm.get_submodule(nxt.target), str(nxt.target), rest)


@dataclass
class _Cuts:
    """The network cut after the target conv, as far as its structure allows."""

    lowrank: _LowRankPlan | None
    tail: fx.GraphModule | None  # (M, C, H, W) conv output -> model output (M, ...)
    reasons: dict[str, str]  # path -> why it does not apply

    @property
    def available(self) -> list[str]:
        return [p for p, ok in (("lowrank", self.lowrank), ("tail", self.tail)) if ok is not None] + ["generic"]


def _cut_network(model: nn.Module, layer_name: str) -> _Cuts:
    gm, reason = _trace(model)
    convs = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == layer_name] if gm else []
    if gm is not None and len(convs) != 1:
        reason = f"{layer_name} is called {len(convs)} times in the traced forward"
    if reason:
        return _Cuts(None, None, {"lowrank": reason, "tail": reason})
    reasons = {}
    plan = _lowrank_plan(gm, convs[0])
    if isinstance(plan, str):
        reasons["lowrank"], plan = plan, None
    tail = _cut_after(gm, convs[0])
    if tail is None:
        reasons["tail"] = f"a value computed before {layer_name} is used after it (skip connection)"
    return _Cuts(plan, tail, reasons)


def _module_names(gm: fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_module"]


# --------------------------------------------------------------------------- engine


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


@dataclass
class _Forward:
    """What one ordinary forward pass of ``N`` images leaves behind."""

    key: tuple[int, ...]  # the input's (3, H, W): activation sizes depend on it
    y_pred: Tensor  # (N,)
    activation: Tensor | None  # A, the conv output (N, C, H, W)
    linear_in: Tensor | None  # g (N, F), lowrank only
    linear_out: Tensor | None  # z (N, out), lowrank only
    sizes: dict[str, int]  # per-sample numel of each leaf module's output (when recorded)


class ChannelAblation:
    """Ablate every output channel of one ``nn.Conv2d``, exactly and fast.

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
        Module name of the conv (``"features.28"``) or ``"auto"`` (the last Conv2d).
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
        :data:`PATHS` (``ValueError`` if it does not apply to the model).

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
    ) -> None:
        if channel_batch != "auto" and not (isinstance(channel_batch, int) and channel_batch >= 1):
            raise ValueError(f"channel_batch must be a positive integer or 'auto', got {channel_batch!r}")
        if path != "auto" and path not in PATHS:
            raise ValueError(f"path must be 'auto' or one of {PATHS}, got {path!r}")
        _require_eval(model)
        self.model = model
        self.layer_name = resolve_layer(model, target_layer)
        self.conv: nn.Conv2d = model.get_submodule(self.layer_name)
        self.n_channels: int = self.conv.out_channels
        self.target: Target = RegressionTarget() if target is None else target
        self.channel_batch = channel_batch
        self.memory_budget = int(memory_budget)
        param = next(model.parameters())
        self.device = param.device if device is None else torch.device(device)
        if param.device != self.device:
            model.to(self.device)
        self._hooks = _Hooks()
        self._weight_cache: dict[int, tuple[int, int, Tensor]] = {}
        self._auto_batch: dict[tuple[int, ...], int] = {}

        cuts = _cut_network(model, self.layer_name)
        self._plan, self._tail = cuts.lowrank, cuts.tail
        self.reasons = cuts.reasons  # path -> why it does not apply
        if path == "auto":
            self.path = cuts.available[0]
        elif path in cuts.available:
            self.path = path
        else:
            raise ValueError(f"path {path!r} does not apply to {type(model).__name__}: {self.reasons[path]}")

    # ----------------------------------------------------------------- public

    def __call__(self, x: Tensor, channels: Sequence[int] | Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Ablate ``channels`` (default: all) for images ``x`` ``(N, 3, H, W)``.

        Returns ``y_pred`` ``(N,)`` and ``y_ablated`` ``(N, K)``, float32 on the CPU.
        """
        x = x.to(self.device, torch.float32)
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

    def describe(self) -> dict[str, object]:
        """The engine's settings, for provenance metadata."""
        return {
            "target_layer": self.layer_name,
            "n_channels": self.n_channels,
            "path": self.path,
            "target": repr(self.target),
            "channel_batch": self.channel_batch,
        }

    # ----------------------------------------------------------------- passes

    def _forward(self, x: Tensor) -> _Forward:
        """One ordinary forward pass of the model, capturing what the chosen path needs."""
        captured: dict[str, Tensor] = {}
        sizes: dict[str, int] = {}
        key = tuple(x.shape[1:])
        if self.path != "generic":
            # clone: torchvision's ReLU(inplace=True) would overwrite the conv output
            self._hooks.forward(self.conv, lambda m, i, o: captured.__setitem__("A", o.clone()))
        if self.path == "lowrank":

            def keep_linear(m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
                captured["g"] = inputs[0].clone()
                captured["z"] = output.clone()

            self._hooks.forward(self._plan.linear, keep_linear)
        if self.channel_batch == "auto" and key not in self._auto_batch:
            for name, m in self.model.named_modules():
                if not any(True for _ in m.children()):
                    self._hooks.forward(m, lambda m, i, o, name=name: sizes.__setitem__(name, _per_sample(o)))
        try:
            output = self.model(x)
        finally:
            self._hooks.remove()
        y = self.target(output)
        if y.shape != (len(x),):
            raise ValueError(f"the target must map the model output to shape ({len(x)},), got {tuple(y.shape)}")
        return _Forward(key, y, captured.get("A"), captured.get("g"), captured.get("z"), sizes)

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
        plan, A, g, z = self._plan, fwd.activation, fwd.linear_in, fwd.linear_out
        n, c = A.shape[:2]
        self._check(plan.between(A.clone()), g, "part between the conv and the first Linear")
        self._check(self.target(plan.rest(z.clone())), fwd.y_pred, "part after the first Linear")
        g0 = plan.between(torch.zeros_like(A[:1]))  # (1, F): each channel's block when it is zeroed
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
            y = self.target(plan.rest(zc.reshape(-1, zc.shape[-1])))  # rows ordered channel, image
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
        """The tail after the conv on copies of ``A`` with one channel zeroed each."""
        A = fwd.activation
        self._check(self.target(self._tail(A.clone())), fwd.y_pred, "tail after the conv")
        rows = self._batch_rows(fwd, _module_names(self._tail), A[0].numel())
        out = []
        for images, chans in self._pairs(len(A), idx, rows):
            copies = A[images]  # advanced indexing: a copy
            copies[torch.arange(len(images), device=A.device), chans] = 0
            out.append(self.target(self._tail(copies)))
        return torch.cat(out).view(len(A), len(idx))

    def _generic(self, x: Tensor, fwd: _Forward, idx: Tensor) -> Tensor:
        """The whole model on copies of the images, the conv's output masked by a hook."""
        rows = self._batch_rows(fwd, [n for n, _ in self.model.named_modules()], x[0].numel())
        out = []
        for images, chans in self._pairs(len(x), idx, rows):
            mask = torch.zeros(len(images), self.n_channels, 1, 1, dtype=torch.bool, device=x.device)
            mask[torch.arange(len(images), device=x.device), chans] = True

            def zero_channel(m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, mask: Tensor = mask) -> Tensor:
                return output.masked_fill(mask, 0.0)

            self._hooks.forward(self.conv, zero_channel)
            try:
                out.append(self.target(self.model(x[images])))
            finally:
                self._hooks.remove()
        return torch.cat(out).view(len(x), len(idx))


# --------------------------------------------------------------------------- reference


def naive_ablation(
    model: nn.Module,
    target_layer: str,
    x: Tensor,
    target: Target | None = None,
    channels: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """The obvious reference: for each channel zero the conv's ``weight[c]`` and
    ``bias[c]``, run the full model, restore them (in ``finally``).

    Returns ``y_pred`` ``(N,)`` and ``y_ablated`` ``(N, K)`` on the CPU. Slow
    (``K + 1`` full forward passes); for tests and benchmarks.
    """
    _require_eval(model)
    target = RegressionTarget() if target is None else target
    conv: nn.Conv2d = model.get_submodule(resolve_layer(model, target_layer))
    chans = range(conv.out_channels) if channels is None else [int(c) for c in channels]
    x = x.to(conv.weight.device, torch.float32)
    with torch.no_grad():
        y_pred = target(model(x))
        cols = []
        for c in chans:
            saved_w = conv.weight[c].clone()
            saved_b = None if conv.bias is None else conv.bias[c].clone()
            try:
                conv.weight[c] = 0
                if conv.bias is not None:
                    conv.bias[c] = 0
                cols.append(target(model(x)))
            finally:
                conv.weight[c] = saved_w
                if saved_b is not None:
                    conv.bias[c] = saved_b
    y_abl = torch.stack(cols, dim=1) if cols else y_pred.new_empty(len(x), 0)
    return y_pred.float().cpu(), y_abl.float().cpu()


# --------------------------------------------------------------------------- tables


def ablation_table(
    image_ids: Sequence[str],
    y_true: Sequence[float | None] | np.ndarray,
    y_pred: Tensor | np.ndarray,
    y_ablated: Tensor | np.ndarray,
    channels: Sequence[int] | None = None,
) -> pa.Table:
    """One row per (image, channel), image-major, conforming to :data:`ABLATION_SCHEMA`.

    ``y_pred`` is ``(N,)``, ``y_ablated`` ``(N, K)`` (``channels`` names its
    columns; default ``0..K-1``). A ``y_true`` of ``None`` or NaN (unlabelled
    image) gives null ``y_true`` and residual columns. All values float32.
    """
    y_pred = np.asarray(y_pred, dtype=np.float32).reshape(-1)
    y_abl = np.asarray(y_ablated, dtype=np.float32)
    n = len(image_ids)
    if y_abl.ndim != 2 or y_abl.shape[0] != n or y_pred.shape != (n,):
        raise ValueError(f"expected y_pred ({n},) and y_ablated ({n}, K); got {y_pred.shape} and {y_abl.shape}")
    k = y_abl.shape[1]
    chans = np.arange(k, dtype=np.int32) if channels is None else np.asarray(channels, dtype=np.int32)
    if chans.shape != (k,):
        raise ValueError(f"channels must have {k} entries, got {chans.shape}")
    truth = np.array([np.nan if pd.isna(v) else float(v) for v in y_true], dtype=np.float64).astype(np.float32)
    if truth.shape != (n,):
        raise ValueError(f"y_true must have {n} entries, got {truth.shape}")

    yp = np.repeat(y_pred, k)
    ya = y_abl.reshape(-1)
    yt = np.repeat(truth, k)
    unlabelled = np.isnan(yt)
    residual = np.abs(yp - yt)
    residual_ablated = np.abs(ya - yt)

    def col(values: np.ndarray, nullable: bool = False) -> pa.Array:
        return pa.array(values, type=pa.float32(), mask=unlabelled if nullable else None)

    columns = {
        "image_id": pa.array(np.repeat(np.asarray(list(image_ids), dtype=object), k), type=pa.string()),
        "channel": pa.array(np.tile(chans, n), type=pa.int32()),
        "y_true": col(yt, nullable=True),
        "y_pred": col(yp),
        "y_pred_ablated": col(ya),
        "delta_prediction": col(ya - yp),
        "residual": col(residual, nullable=True),
        "residual_ablated": col(residual_ablated, nullable=True),
        "delta_residual": col(residual_ablated - residual, nullable=True),
    }
    return pa.Table.from_pydict(columns, schema=ABLATION_SCHEMA)


# --------------------------------------------------------------------------- images


def ablate_images(
    model: nn.Module,
    target_layer: str,
    paths: Sequence[str],
    image_ids: Sequence[str],
    y_true: Sequence[float | None] | np.ndarray,
    size: int,
    normalization: str = "imagenet",
    batch_size: int = 8,
    channel_batch: int | str = "auto",
    device: str | torch.device | None = None,
    target: Target | None = None,
    log: logging.Logger | Callable[[str], None] | None = None,
) -> pa.Table:
    """Ablate every channel of ``target_layer`` for each image file; the :data:`ABLATION_SCHEMA` table.

    Images are loaded with :func:`ais.images.load_batch` ``batch_size`` at a
    time. ``device=None`` uses CUDA when available (the model is moved there).
    Progress lines (``images 16/64, 3.1 img/s, ETA 15 s``) go to ``log``: a
    logger, a callable taking a string, or this module's logger. The
    returned table's schema metadata holds the engine's settings under
    ``ablation`` (JSON).
    """
    from ais.images import load_batch
    from ais.io import encode_metadata

    paths, image_ids, y_true = list(paths), list(image_ids), list(y_true)
    if not len(paths) == len(image_ids) == len(y_true):
        raise ValueError(f"paths, image_ids and y_true differ in length: {len(paths)}, {len(image_ids)}, {len(y_true)}")
    say = log.info if isinstance(log, logging.Logger) else (log or logger.info)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tables = []
    with ChannelAblation(model, target_layer, target, channel_batch=channel_batch, device=device) as engine:
        say(
            f"ablating {engine.n_channels} channels of {engine.layer_name} for {len(paths)} images "
            f"on {engine.device} ({engine.path} path)"
        )
        start, done = time.perf_counter(), 0
        for sl in _chunks(len(paths), batch_size):
            x = load_batch(paths[sl], size, normalization)
            y_pred, y_abl = engine(x)
            tables.append(ablation_table(image_ids[sl], y_true[sl], y_pred, y_abl))
            done = sl.stop
            elapsed = time.perf_counter() - start
            rate = done / elapsed if elapsed > 0 else math.inf
            eta = (len(paths) - done) / rate if rate > 0 else math.inf
            say(f"images {done}/{len(paths)}, {rate:.3g} img/s, ETA {eta:.0f} s")
        info = engine.describe()
    table = pa.concat_tables(tables) if tables else ABLATION_SCHEMA.empty_table()
    info.update(size=size, normalization=normalization, batch_size=batch_size)
    return table.replace_schema_metadata(encode_metadata({"ablation": info}))


def run_shard(
    manifest_path: str,
    model_dir: str,
    out_path: str,
    shard: int,
    n_shards: int,
    split: str,
    target_layer: str,
    batch_size: int = 8,
    channel_batch: int | str = "auto",
    config: dict | None = None,
    device: str | torch.device | None = None,
    log: logging.Logger | None = None,
) -> pa.Table:
    """The workflow's ablation stage for one shard: manifest and trained model in, Parquet shard out.

    The shard holds every channel of ``target_layer`` for the images of
    shard ``shard`` of ``n_shards`` of ``split`` (see
    :func:`ais.data.shard_rows`); an empty shard is written as an empty table
    with the same schema. The key-value metadata carries the model's weights
    hash, the resolved target layer, the engine's settings and provenance.
    """
    import json

    from ais import io
    from ais.data import read_manifest, shard_rows
    from ais.models import load_trained
    from ais.provenance import provenance

    log = log or logger
    rows = shard_rows(read_manifest(manifest_path), split, n_shards, shard)
    model, spec = load_trained(model_dir)
    layer = resolve_layer(model, target_layer)
    log.info("shard %d/%d: %d %s image(s), layer %s, model %s", shard, n_shards, len(rows), split, layer,
             spec.get("weights_sha256", "?")[:12])
    y_true = rows["y_true"].astype("float64").to_numpy()
    table = ablate_images(
        model, layer, rows["path"].tolist(), rows["image_id"].tolist(), y_true,
        size=spec["input_size"], normalization=spec["normalization"], batch_size=batch_size,
        channel_batch=channel_batch, device=device, log=log,
    )
    engine = json.loads((table.schema.metadata or {}).get(b"ablation", b"{}"))
    metadata = provenance(
        config,
        shard={"index": shard, "of": n_shards, "split": split, "images": len(rows)},
        model={"weights_sha256": spec.get("weights_sha256"), "arch": spec.get("arch"), "head": spec.get("head")},
        target_layer=layer,
        ablation=engine,
    )
    io.write_table(out_path, table, schema=ABLATION_SCHEMA, metadata=metadata)
    log.info("shard %d: wrote %d rows to %s", shard, table.num_rows, out_path)
    return table
