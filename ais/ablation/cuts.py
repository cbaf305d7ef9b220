"""Graph cuts with :mod:`torch.fx`: the network after the target layer, skip connections included.

The model is traced with the target layer as one leaf (a block such as
ResNet's ``layer4.2`` appears as one call), and its graph is split in two:
the *prefix* (every value that does not depend on the layer's output) and the
*suffix* (every value that does). The values of the prefix that the suffix
reads (the input of a residual block, a downsampled identity, the features a
DenseNet concatenates) are *kept*: computed once, in the one ordinary pass,
and handed to the suffix beside the layer's output.

``lowrank``: everything between the layer and the first ``nn.Linear`` acts
channel by channel (including the addition or product of a kept tensor, as
ResNet's ``bn3 -> + identity -> relu -> pool -> fc``), so the network after
the layer is ``rest(linear(between(A, kept)), kept)``; ``tail``: the suffix
runs on copies of the layer output (after the channel-wise operations that
follow it, run once), with the kept tensors. A model that
cannot be traced gets neither (the engine falls back to ``generic``).
Parameters and submodules of the cut modules are shared with the model.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import fx
import torch.nn.functional as F
from torch import Tensor, nn

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
)  # fmt: skip
_SPATIAL_MODULES = (nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_ELEMENTWISE_FUNCTIONS = (torch.relu, F.relu, torch.sigmoid, torch.tanh, F.gelu, F.silu, F.relu6, F.hardswish,
                          F.dropout)
_SPATIAL_FUNCTIONS = (F.adaptive_avg_pool2d, F.max_pool2d, F.avg_pool2d)
#: Elementwise binary operations: channel-wise in the layer's output when the other operand does not depend on it.
_BINARY_FUNCTIONS = (operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                     operator.truediv, torch.add, torch.sub, torch.mul)
_BINARY_METHODS = ("add", "add_", "sub", "sub_", "mul", "mul_")
_INPLACE_FUNCTIONS = (operator.iadd, operator.isub, operator.imul, operator.itruediv)


class _LeafTracer(fx.Tracer):
    """torch.fx's tracer, with the module named ``leaf`` kept as one call."""

    def __init__(self, leaf: str) -> None:
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name == self.leaf or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module, leaf: str) -> tuple[fx.GraphModule | None, str]:
    """Trace ``model`` with ``leaf`` as one call (sharing its modules); ``(None, reason)`` when it cannot be traced."""
    try:
        return fx.GraphModule(model, _LeafTracer(leaf).trace(model)), ""
    except Exception as exc:  # any Python in forward may defeat tracing
        return None, f"the model cannot be traced by torch.fx ({type(exc).__name__}: {exc})"


def _descendants(start: fx.Node) -> set[fx.Node]:
    """``start`` and every node whose value depends on it."""
    seen, stack = {start}, [start]
    while stack:
        for user in stack.pop().users:
            if user not in seen:
                seen.add(user)
                stack.append(user)
    return seen


def _ancestors(nodes: Iterable[fx.Node]) -> set[fx.Node]:
    """``nodes`` and every node they depend on."""
    stack = list(nodes)
    seen = set(stack)
    while stack:
        for inp in stack.pop().all_input_nodes:
            if inp not in seen:
                seen.add(inp)
                stack.append(inp)
    return seen


def _args_nodes(value: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(value, found.append)
    return found


@dataclass
class _Piece:
    """A part of the suffix: ``module(activation, *kept[extras])``; parameters shared with the model."""

    module: fx.GraphModule
    extras: tuple[str, ...]  # names of the kept prefix values it also reads, in argument order

    def __call__(self, activation: Tensor, kept: Mapping[str, Tensor] | None = None) -> Any:
        return self.module(activation, *((kept or {})[k] for k in self.extras))


def _piece(gm: fx.GraphModule, start: fx.Node, nodes: list[fx.Node], result: Any) -> _Piece:
    """A module computing ``result`` from ``start``'s value and the outside values ``nodes`` read.

    ``nodes``: the nodes after ``start`` to copy, in graph order.
    """
    inside = {start, *nodes}
    outer: list[fx.Node] = []
    for inp in [i for n in nodes for i in n.all_input_nodes] + _args_nodes(result):
        if inp not in inside and inp not in outer:
            outer.append(inp)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: graph.placeholder("activation")}
    extras = []
    for n in outer:
        if n.op != "get_attr":
            env[n] = graph.placeholder(f"kept_{n.name}")
            extras.append(n.name)
    for n in outer:
        if n.op == "get_attr":
            env[n] = graph.node_copy(n)
    for n in nodes:
        env[n] = graph.node_copy(n, env.__getitem__)
    graph.output(fx.node.map_arg(result, env.__getitem__))
    return _Piece(fx.GraphModule(gm, graph), tuple(extras))


def _suffix(gm: fx.GraphModule, start: fx.Node) -> _Piece:
    """The model's output from ``start``'s value and the kept prefix values."""
    after = _descendants(start)
    nodes = [n for n in gm.graph.nodes if n in after and n is not start and n.op != "output"]
    out = next(n for n in gm.graph.nodes if n.op == "output")
    return _piece(gm, start, nodes, out.args[0])


def _prefix(gm: fx.GraphModule, start: fx.Node, kept: list[fx.Node]) -> fx.GraphModule:
    """``x -> (value of start, *kept values)``: the part of the ordinary pass the suffix needs."""
    need = _ancestors([start, *kept])
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in gm.graph.nodes:
        if n in need:
            env[n] = graph.node_copy(n, env.__getitem__)
    graph.output((env[start], *(env[k] for k in kept)))
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


def _spatial_mean(node: fx.Node) -> bool:
    """Whether ``node`` is ``x.mean([2, 3])`` / ``torch.mean(x, (2, 3))`` (MnasNet's, ShuffleNet's head)."""
    if not ((node.op == "call_method" and node.target == "mean")
            or (node.op == "call_function" and node.target is torch.mean)):
        return False
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    return isinstance(dims, (list, tuple)) and sorted(dims) in ([2, 3], [-2, -1]) and not keepdim


def _module_kind(module: nn.Module) -> str | None:
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


def _channelwise_kind(gm: fx.GraphModule, node: fx.Node, prev: fx.Node, after: set[fx.Node]) -> str | None:
    """``"elementwise"``, ``"spatial"`` (per-channel on ``(N, C, H, W)``) or ``"flatten"``; ``None`` otherwise.

    ``after``: the nodes that depend on the layer; any input of ``node``
    other than ``prev`` must not be one of them (a kept tensor or a constant).
    """
    others = [i for i in node.all_input_nodes if i is not prev]
    if any(i in after for i in others):
        return None
    binary = (node.op == "call_function" and node.target in _BINARY_FUNCTIONS) or (
        node.op == "call_method" and node.target in _BINARY_METHODS
    )
    if binary and prev in node.args[:2]:
        return "elementwise"
    if others:
        return None
    if node.op == "call_module":
        return _module_kind(gm.get_submodule(node.target))
    dims = _flatten_dims(node)
    if dims is not None:
        return "flatten" if dims == (1, -1) else None
    if _spatial_mean(node):
        return "flatten"  # (N, C, H, W) -> (N, C): a pool and a flatten at once
    if node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS:
        return "elementwise"
    if node.op == "call_function" and node.target in _SPATIAL_FUNCTIONS and not node.kwargs.get("return_indices"):
        return "spatial"
    if node.op == "call_method" and node.target in ("relu", "relu_", "sigmoid", "tanh"):
        return "elementwise"
    return None


@dataclass
class _LowRankPlan:
    """The network after the layer as ``rest(linear(between(A, kept)), kept)``, ``between`` channel by channel."""

    between: _Piece  # (N, C, H, W) -> (N, C * block)
    linear: nn.Linear
    linear_name: str
    rest: _Piece  # (M, out_features) -> model output (M, ...)


def _chain_to_linear(gm: fx.GraphModule, start: fx.Node, after: set[fx.Node]) -> list[fx.Node] | str:
    """The nodes from ``start`` to the first ``nn.Linear`` (both included), or why they are not channel-wise."""
    chain, node, flattened = [start], start, False
    while True:
        users = list(node.users)
        if len(users) != 1:
            return f"the output of {node.name} is used by {len(users)} operations"
        nxt = users[0]
        if nxt.op == "call_module" and isinstance(gm.get_submodule(nxt.target), nn.Linear):
            break
        kind = _channelwise_kind(gm, nxt, node, after)
        if kind is None:
            return f"{nxt.format_node()} between the layer and the first Linear is not a channel-wise operation"
        if flattened and kind == "spatial":
            return f"{nxt.name} acts on flattened features"
        if kind == "flatten":
            if flattened:
                return "two flattens before the first Linear"
            flattened = True
        chain.append(nxt)
        node = nxt
    if not flattened:
        return "no flatten(start_dim=1) before the first Linear"
    if list(nxt.args) != [node] or nxt.kwargs:
        return f"unexpected arguments to {nxt.name}"
    return chain + [nxt]


@dataclass
class _TailPlan:
    """The suffix as ``rest(head(A, kept), kept)``, ``head`` the channel-wise operations right after the layer.

    ``head`` (pooling, BatchNorm, ReLU, ... on ``(N, C, H, W)``) runs once on
    ``A``; an ablated copy is ``head(A)`` with channel ``c`` replaced by that
    channel of ``head(0)``, so only ``rest`` runs on the copies (ConvNeXt:
    its LayerNorm head on pooled ``(C, 1, 1)`` copies, not on ``(C, 7, 7)``).
    """

    head: _Piece  # (N, C, H, W) -> (N, C, h, w)
    rest: _Piece  # (M, C, h, w) -> model output (M, ...)


def _tail_plan(gm: fx.GraphModule, start: fx.Node) -> _TailPlan:
    """The suffix after ``start``, split after the longest run of channel-wise operations on 4-d tensors."""
    after, chain, node = _descendants(start), [], start
    while len(node.users) == 1:
        nxt = next(iter(node.users))
        if _channelwise_kind(gm, nxt, node, after) not in ("elementwise", "spatial"):
            break
        chain.append(nxt)
        node = nxt
    return _TailPlan(_piece(gm, start, chain, node), _suffix(gm, node))


def _lowrank_plan(gm: fx.GraphModule, start: fx.Node) -> _LowRankPlan | str:
    """The low-rank decomposition after ``start``, or the reason why there is none."""
    chain = _chain_to_linear(gm, start, _descendants(start))
    if isinstance(chain, str):
        return chain
    linear = chain[-1]
    between = _piece(gm, start, chain[1:-1], chain[-2])
    return _LowRankPlan(between, gm.get_submodule(linear.target), str(linear.target), _suffix(gm, linear))


def _in_place(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` may write into its first argument."""
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCTIONS or bool(node.kwargs.get("inplace"))
    return node.op == "call_method" and str(node.target).endswith("_")


def _captures(gm: fx.GraphModule, kept: list[fx.Node]) -> dict[str, tuple[str, str]] | None:
    """Where the model's own forward pass shows each kept value, so that hooks can keep it.

    ``{kept name: (module name, "output" | "input")}``: the output of a
    module called once, or the first input of a module called once that does
    not write into it (``("", "input")``: the model's input). ``None`` when a
    value has no such place, or is written in place after it is made (its
    value in the pass would not be the one the suffix reads).
    """
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    found: dict[str, tuple[str, str]] = {}
    for n in kept:
        if any(_in_place(gm, u) and u.args[:1] == (n,) for u in n.users):
            return None
        readers = [u for u in n.users if u.op == "call_module" and calls[u.target] == 1
                   and u.args[:1] == (n,) and not _in_place(gm, u)]
        if n.op == "call_module" and calls[n.target] == 1:
            found[n.name] = (str(n.target), "output")
        elif n.op == "placeholder" and n is next(iter(gm.graph.nodes)):
            found[n.name] = ("", "input")
        elif readers:
            found[n.name] = (str(readers[0].target), "input")
        else:
            return None
    return found


@dataclass
class _Cuts:
    """The network cut after the target layer, as far as its structure allows."""

    lowrank: _LowRankPlan | None
    tail: _TailPlan | None  # (M, C, H, W) layer output (+ kept values) -> model output (M, ...)
    prefix: fx.GraphModule | None  # x -> (layer output, *kept values), when the suffix reads kept values
    kept: tuple[str, ...]  # names of the kept values, in the prefix's output order
    captures: dict[str, tuple[str, str]] | None  # where hooks keep them in the model's own pass (None: prefix)
    reasons: dict[str, str]  # path -> why it does not apply
    residual: Any = None  # a ViT block's units: ais.ablation.residual.ResidualPlan

    @property
    def available(self) -> list[str]:
        paths = (("lowrank", self.lowrank), ("tail", self.tail), ("residual", self.residual))
        return [p for p, ok in paths if ok is not None] + ["generic"]


def _cut_network(model: nn.Module, layer_name: str) -> _Cuts:
    gm, reason = _trace(model, layer_name)
    starts = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == layer_name] if gm else []
    if gm is not None and len(starts) != 1:
        reason = f"{layer_name} is called {len(starts)} times in the traced forward"
    if reason:
        return _Cuts(None, None, None, (), None, {"lowrank": reason, "tail": reason})
    start = starts[0]
    after = _descendants(start)
    kept = [n for n in gm.graph.nodes  # read after the layer (not only by the layer itself)
            if n not in after and n.op != "get_attr" and any(u in after and u is not start for u in n.users)]
    reasons = {}
    plan = _lowrank_plan(gm, start)
    if isinstance(plan, str):
        reasons["lowrank"], plan = plan, None
    prefix = _prefix(gm, start, kept) if kept else None
    return _Cuts(plan, _tail_plan(gm, start), prefix, tuple(n.name for n in kept), _captures(gm, kept), reasons)


def _module_names(piece: _Piece) -> list[str]:
    return [str(n.target) for n in piece.module.graph.nodes if n.op == "call_module"]
