"""Models: building through the family registry, pretrained weights, and trained checkpoints.

:func:`build_model` builds ``model.arch`` through its family adapter
(:mod:`ais.families`) and loads pretrained weights into it with
:func:`load_pretrained`, which loads every tensor whose name and shape match,
reports what it skipped (e.g. the ImageNet classifier's last layer) and
refuses a mismatching backbone. Loading never executes code from a file:
pickles are read with ``torch.load(weights_only=True)``.

Head ``mlp`` (:func:`build_net`, for every family): the family's pooled
head with its output ``Linear`` replaced by :class:`MLPHead`, the DINO
seed's small classifier on pooled features: per hidden size ``h`` a
``Dropout(p)``, ``Linear(., h)`` and ``ReLU`` (none after the last hidden
layer unless ``last_relu``), then the output ``Linear``. The default
``hidden [128, 64], dropout 0.3`` is the seed's order exactly: dropout,
Linear(D, 128), ReLU, dropout, Linear(128, 64), Linear(64, K).

A trained model is stored as ``model.safetensors`` plus ``model.json``
(:func:`save_checkpoint`, which records the family, the task, the
resolved target layer and the MLP head's sizes) and rebuilt with
:func:`load_trained`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ais import io
from ais.config import WEIGHT_SUFFIXES
from ais.families import family_for
from ais.provenance import file_hash, provenance
from ais.tasks.classification import task_from_spec

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "ais-regressor-v1"
MODEL_FILE = "model.safetensors"
SPEC_FILE = "model.json"


# ---------------------------------------------------------------------------
# Seeding and determinism


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def configure_determinism() -> None:
    """Ask torch for deterministic kernels (process-wide).

    cuDNN autotuning is switched off and ``torch.use_deterministic_algorithms``
    is switched on with ``warn_only=True`` (a few CUDA backward kernels, such
    as adaptive average pooling, have no deterministic version; they warn
    instead of failing). On CPU, results are then bitwise reproducible for a
    given seed and thread count.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # must precede CUDA's initialisation
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


# ---------------------------------------------------------------------------
# Building


MLP_DEFAULTS: dict[str, Any] = {"hidden": [128, 64], "dropout": 0.3, "last_relu": False}


class MLPHead(nn.Sequential):
    """The ``mlp`` head: ``(N, D)`` pooled features to ``(N, n_outputs)``; its last child is the output Linear.

    Children ``dropout{i}``, ``fc{i}``, ``relu{i}`` per hidden layer ``i``
    (1-based; no ``relu`` after the last one unless ``last_relu``) and the
    output ``Linear`` named ``out_name``. PyTorch's default initialisation,
    from torch's global generator.
    """

    def __init__(self, in_features: int, n_outputs: int, hidden: Sequence[int] = (128, 64), dropout: float = 0.3,
                 last_relu: bool = False, out_name: str | None = None) -> None:
        hidden = [int(h) for h in hidden]
        if any(h < 1 for h in hidden):
            raise ValueError(f"model.mlp.hidden={hidden}: every hidden size must be >= 1")
        if not 0 <= float(dropout) < 1:
            raise ValueError(f"model.mlp.dropout={dropout}: must be in [0, 1)")
        layers: list[tuple[str, nn.Module]] = []
        width = int(in_features)
        for i, h in enumerate(hidden, start=1):
            layers += [(f"dropout{i}", nn.Dropout(float(dropout))), (f"fc{i}", nn.Linear(width, h))]
            if i < len(hidden) or last_relu:
                layers.append((f"relu{i}", nn.ReLU()))
            width = h
        layers.append((out_name or f"fc{len(hidden) + 1}", nn.Linear(width, n_outputs)))
        super().__init__(OrderedDict(layers))
        self.hidden, self.last_relu = hidden, bool(last_relu)

    def spec(self) -> dict[str, Any]:
        """``{"hidden", "dropout", "last_relu"}`` as built (the dropout of the first dropout layer)."""
        drops = [m.p for m in self if isinstance(m, nn.Dropout)]
        return {"hidden": list(self.hidden), "dropout": float(drops[0]) if drops else 0.0, "last_relu": self.last_relu}


def mlp_head(model: nn.Module) -> MLPHead | None:
    """The model's :class:`MLPHead`, or ``None`` when it has another head."""
    return next((m for m in model.modules() if isinstance(m, MLPHead)), None)


def build_net(family: Any, arch: str, head: str, n_outputs: int = 1,
              mlp: Mapping[str, Any] | None = None) -> nn.Module:
    """``family.build(arch, head, n_outputs)``, or for head ``mlp`` that family's pooled head with an :class:`MLPHead`.

    The one place heads are made (training, loading, the config check).
    ``mlp`` is the config's ``model.mlp`` (missing keys: :data:`MLP_DEFAULTS`).
    The pooled head the MLP replaces is the family's ``gap`` (or its first
    head); the MLP's input is what fed that head's output Linear. A
    ``Sequential`` holding only that Linear (VGG's ``gap`` classifier) is
    replaced whole, keeping the Linear's name for the output layer, so the
    family's :meth:`~ais.families.Family.output_layer` finds it.
    """
    if head != "mlp":
        if head not in family.heads:
            raise ValueError(f"model.head={head!r}: unknown head for {arch}; choose one of "
                             f"{', '.join((*family.heads, 'mlp'))}")
        return family.build(arch, head, n_outputs)
    cfg = {**MLP_DEFAULTS, **dict(mlp or {})}
    unknown = sorted(set(cfg) - set(MLP_DEFAULTS))
    if unknown:
        raise ValueError(f"model.mlp: unknown key(s) {unknown}; allowed: {sorted(MLP_DEFAULTS)}")
    base = "gap" if "gap" in family.heads else family.heads[0]
    model = family.build(arch, base, n_outputs)
    linear = family.output_layer(model)
    name = next(n for n, m in model.named_modules() if m is linear)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential) and len(parent) == 1 and parent_name:
        name, out_name = parent_name, child
    else:
        out_name = None
    with torch.device(linear.weight.device):  # where the family built its head (CPU even inside a meta context)
        new = MLPHead(linear.in_features, n_outputs, cfg["hidden"], cfg["dropout"], cfg["last_relu"], out_name)
    model.set_submodule(name, new)
    if family.output_layer(model) is not new[-1]:
        raise ValueError(f"model.head=mlp: the {family.name} family's output_layer does not find the MLP head's "
                         f"output Linear (it replaced {name}); that family cannot take an mlp head yet")
    return model


def set_head_dropout(family: Any, model: nn.Module, p: float | None) -> nn.Module:
    """``model.head_dropout``: an MLP head's dropouts get ``p``; other heads as the family sets them."""
    head = mlp_head(model)
    if head is None or p is None:
        return family.set_head_dropout(model, p)
    if not 0 <= p < 1:
        raise ValueError(f"model.head_dropout={p}: must be in [0, 1)")
    for m in head:
        if isinstance(m, nn.Dropout):
            m.p = float(p)
    return model


def build_model(
    arch: str = "vgg16", head: str = "classifier", weights: str = "none", progress: bool = False,
    n_outputs: int = 1, mlp: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Model ``arch`` of its registered family with an ``n_outputs`` head.

    ``weights`` is ``"none"`` (random initialisation from torch's global
    generator: seed it first), a pretrained weights name the family knows
    (torchvision's ``"IMAGENET1K_V1"``, ``"DEFAULT"``; downloaded once into
    the torch cache) or a path to a local state dict. The model is returned
    in training mode on the CPU. Input ``(N, 3, H, W)``, output ``(N, n_outputs)``.
    ``mlp``: the sizes of head ``mlp`` (:func:`build_net`).
    """
    family = family_for(arch)
    model = build_net(family, arch, head, n_outputs, mlp)
    if weights is None or str(weights).lower() == "none":
        return model
    state_dict, source = family.fetch_weights(arch, str(weights), progress)
    report = load_pretrained(model, state_dict, source, family.backbone_prefix)
    logger.info("%s", report.summary())
    return model


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file, never executing code.

    ``.pt``/``.pth``/``.bin`` files are read with ``torch.load(weights_only=True)``,
    which refuses anything but tensors and plain containers. A checkpoint that
    wraps the state dict (``{"state_dict": ...}`` or ``{"model": ...}``) is
    unwrapped, and a ``module.`` prefix (DataParallel) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.weights: {path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"{path}: cannot be read as safetensors ({type(exc).__name__}: {exc})") from exc
    elif suffix in WEIGHT_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"{path}: refused: the file holds objects other than tensors and plain containers, "
                "and loading never executes code from a file (torch.load weights_only=True). "
                "Save a plain state dict (model.state_dict()) or use .safetensors.\n"
                f"torch said: {str(exc).splitlines()[0]}"
            ) from exc
        except (RuntimeError, EOFError, OSError) as exc:
            raise ValueError(f"{path}: cannot be read as a torch.save file ({type(exc).__name__}: {exc})") from exc
    else:
        raise ValueError(f"{path}: unknown weights file type {suffix!r}; use .safetensors, .pt or .pth")
    if isinstance(state, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in state and isinstance(state[wrapper], Mapping):
                state = state[wrapper]
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path}: does not hold a state dict (a mapping of names to tensors)")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did with each tensor name."""

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason
    fresh: list[str] = field(default_factory=list)  # model tensors left at their initialisation

    def summary(self) -> str:
        parts = [f"weights from {self.source}: loaded {len(self.loaded)} tensors"]
        if self.skipped:
            parts.append("skipped " + ", ".join(f"{k} ({v})" for k, v in self.skipped.items()))
        if self.fresh:
            parts.append("freshly initialised " + ", ".join(self.fresh))
        return "; ".join(parts)


def load_pretrained(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, backbone: str = "features."
) -> LoadReport:
    """Load ``state_dict`` into ``model`` where names and shapes match; used for every kind of weights.

    The backbone (tensors named ``backbone*``, the family's
    ``backbone_prefix``) must match completely (same names, shapes and finite
    values), or a :class:`ValueError` names ``source`` and the first bad key.
    Other (head) tensors whose shape differs or that are missing keep their
    fresh initialisation; they are reported, as are extra tensors of the file
    that the model has no place for. A state dict of the full model therefore
    loads completely, one of an ImageNet classifier loads its backbone.
    """
    report = LoadReport(source)
    target = model.state_dict()
    update: dict[str, torch.Tensor] = {}
    for name, tensor in target.items():
        value = _checked_tensor(name, tensor, state_dict, source, backbone, report)
        if value is not None:
            update[name] = value
            report.loaded.append(name)
    for name in state_dict:
        if name not in target:
            if name.startswith(backbone):
                raise ValueError(
                    f"{source}: tensor {name!r} has no place in the model; the weights are for another "
                    "architecture (a _bn variant, or more layers)"
                )
            report.skipped[name] = "not in model"
    if not any(n.startswith(backbone) for n in report.loaded):
        raise ValueError(f"{source}: no {backbone}* tensor loaded; these weights are not for this architecture")
    model.load_state_dict(update, strict=False)
    return report


def _checked_tensor(
    name: str, tensor: torch.Tensor, state_dict: Mapping[str, torch.Tensor], source: str, backbone: str,
    report: LoadReport,
) -> torch.Tensor | None:
    """The file's tensor for model tensor ``name``, or ``None`` (reported) when it must stay fresh."""
    in_backbone = name.startswith(backbone)
    if name not in state_dict:
        if in_backbone:
            raise ValueError(
                f"{source}: no tensor {name!r}, which the model needs; the file's backbone does not "
                f"match this architecture (file has {_backbone_summary(state_dict, backbone)})"
            )
        report.fresh.append(name)
        return None
    value = state_dict[name]
    if tuple(value.shape) != tuple(tensor.shape):
        if in_backbone:
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(tensor.shape)}; the weights are for another architecture"
            )
        report.skipped[name] = f"shape {tuple(value.shape)} in file, {tuple(tensor.shape)} in model"
        report.fresh.append(name)
        return None
    if value.is_floating_point() and not _all_finite(value):
        if in_backbone:
            raise ValueError(f"{source}: tensor {name!r} holds NaN or infinite values")
        report.skipped[name] = "non-finite values"
        report.fresh.append(name)
        return None
    return value


def _all_finite(t: torch.Tensor) -> bool:
    """Whether ``t`` holds no NaN or infinity (a sum is the fast test; exact check only if it overflows)."""
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def _backbone_summary(state_dict: Mapping[str, torch.Tensor], backbone: str) -> str:
    names = [k for k in state_dict if k.startswith(backbone)]
    return f"{len(names)} {backbone.rstrip('.')} tensors" + (f", last {names[-1]!r}" if names else "")


# ---------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(model: nn.Module, model_dir: str | os.PathLike, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``model_dir/model.safetensors`` and ``model_dir/model.json`` (each atomically).

    ``spec`` must hold ``arch`` and ``head``; it should hold ``task``
    (default ``regression``), ``input_size``, ``normalization``,
    ``target_layer``, ``seed`` and ``data_hash``. ``target_layer`` is stored
    resolved by the family (``auto`` becomes a module name); the family,
    library versions, git revision, parameter count and the weights' SHA-256
    are added. The JSON is written last. Returns the stored spec.
    """
    model_dir = Path(model_dir)
    for key in ("arch", "head"):
        if key not in spec:
            raise ValueError(f"save_checkpoint: spec needs {key!r}")
    family = family_for(spec["arch"])
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights_path = model_dir / MODEL_FILE
    metadata = {"format": CHECKPOINT_FORMAT, "arch": spec["arch"], "head": spec["head"]}
    io.write_bytes(weights_path, io.safetensors_bytes(state, metadata=metadata))  # sorted header: same bytes
    stored = {"task": "regression", **spec}
    target = family.resolve_layer(model, stored.get("target_layer", "auto"))
    stored.update(
        format=CHECKPOINT_FORMAT,
        family=family.name,
        weights_file=MODEL_FILE,
        weights_sha256=file_hash(weights_path),
        target_layer=target,
        target_channels=family.n_units(model, target),
        n_parameters=sum(v.numel() for v in model.parameters()),
        output="score",  # raw output = predicted score on the training scale
        provenance=provenance(),
    )
    if mlp_head(model) is not None:  # the sizes the MLP head was built with, for load_trained
        stored["mlp"] = mlp_head(model).spec()
    io.write_json(model_dir / SPEC_FILE, stored)
    return stored


def load_trained(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_checkpoint`: ``(model in eval mode, spec)``."""
    model_dir = Path(model_dir)
    spec_path, weights_path = model_dir / SPEC_FILE, model_dir / MODEL_FILE
    for p in (spec_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found; train the model first (rule finetune_model)")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    if spec.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{spec_path}: format {spec.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    expected = spec.get("weights_sha256")
    if expected and file_hash(weights_path) != expected:
        raise ValueError(f"{weights_path}: SHA-256 differs from the one recorded in {spec_path}; retrain or restore")
    task = task_from_spec(spec)  # a classifier: one output per class of model.json
    family = family_for(spec["arch"])
    model = build_net(family, spec["arch"], spec["head"], task.n_outputs, spec.get("mlp"))
    if spec.get("head_dropout") is not None:  # not in the weights (no parameters): rebuilt as training built it
        model = set_head_dropout(family, model, float(spec["head_dropout"]))
    state = load_file(str(weights_path), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights_path}: does not match {spec['arch']}/{spec['head']} in {spec_path}: {exc}") from exc
    return model.to(device).eval(), spec
