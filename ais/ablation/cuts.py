"""Graph cuts with :mod:`torch.fx`: the network after the target layer, as far as its structure allows.

``lowrank``: everything between the layer and the first ``nn.Linear`` acts
channel by channel, so the network after the layer is
``rest(linear(between(A)))``; ``tail``: the rest of the network is a
function of the layer's output alone (no skip connection across it). A model
that cannot be traced gets neither (the engine falls back to ``generic``).
Parameters and submodules of the cut modules are shared with the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

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
