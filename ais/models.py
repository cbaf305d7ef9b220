"""The realism regressor: a torchvision VGG with a one-output regression head.

Two heads are offered, both keeping VGG's named submodules ``features``,
``avgpool`` and ``classifier`` (so module names like ``features.28`` stay
valid and ``VGG.forward`` works unchanged):

- ``classifier``: VGG's own classifier with its last layer replaced by
  ``Linear(4096, 1)``;
- ``gap``: ``avgpool = AdaptiveAvgPool2d(1)`` and
  ``classifier = Sequential(Linear(C, 1))`` with ``C`` the channels of the last
  convolution (global average pooling, then a linear read-out).

Pretrained weights come from torchvision's weights API (``IMAGENET1K_V1``,
downloaded once into the torch cache) or from a local ``.safetensors`` /
``.pt`` / ``.pth`` state dict. Both go through :func:`load_pretrained`, which
loads every tensor whose name and shape match, reports what it skipped (the
ImageNet classifier's last layer, or the whole classifier for the ``gap``
head) and refuses mismatching ``features``. Loading never executes code from
a file: pickles are read with ``torch.load(weights_only=True)``.

A trained regressor is stored as ``model.safetensors`` plus ``model.json``
(:func:`save_checkpoint`) and rebuilt with :func:`load_trained`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from ais import io
from ais.provenance import file_hash, provenance

log = logging.getLogger(__name__)

ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
HEADS = ("classifier", "gap")
CHECKPOINT_FORMAT = "ais-regressor-v1"
MODEL_FILE = "model.safetensors"
SPEC_FILE = "model.json"
_LOCAL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


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


def build_model(
    arch: str = "vgg16", head: str = "classifier", weights: str = "none", progress: bool = False
) -> nn.Module:
    """A torchvision VGG regressor with one output.

    ``weights`` is ``"none"`` (random initialisation from torch's global
    generator: seed it first), the name of a member of the arch's torchvision
    weights enum (``"IMAGENET1K_V1"``, ``"DEFAULT"``; downloaded once into the
    torch cache) or a path to a local state dict. The model is returned in
    training mode on the CPU. Input ``(N, 3, H, W)``, output ``(N, 1)``.
    """
    if arch not in ARCHS:
        raise ValueError(f"model.arch={arch!r}: unknown architecture; choose one of {', '.join(ARCHS)}")
    if head not in HEADS:
        raise ValueError(f"model.head={head!r}: unknown head; choose one of {', '.join(HEADS)}")
    model = _build_random(arch, head)
    if weights is None or str(weights).lower() == "none":
        return model
    state_dict, source = _fetch_weights(arch, str(weights), progress)
    report = load_pretrained(model, state_dict, source)
    log.info("%s", report.summary())
    return model


def _build_random(arch: str, head: str) -> nn.Module:
    """A randomly initialised regressor, without paying for layers the head discards."""
    with torch.device("meta"):  # shapes only: VGG's 25088x4096 layer is never allocated for the gap head
        model = torchvision.models.get_model(arch, weights=None)
    if head == "classifier":
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, 1, device="meta")
    else:
        channels = last_conv(model)[1].out_channels
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(nn.Linear(channels, 1, device="meta"))
    model = model.to_empty(device="cpu")
    _init_vgg_(model)
    return model


def _init_vgg_(model: nn.Module) -> None:
    """torchvision's VGG initialisation scheme (deterministic given torch's global seed)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
            m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)


def _fetch_weights(arch: str, weights: str, progress: bool) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict named by ``weights`` and a description of where it came from."""
    enum = torchvision.models.get_model_weights(arch)
    path = Path(weights).expanduser()
    if weights in enum.__members__ and not path.exists():
        member = enum[weights]
        # weights_only=True: torchvision's default download path would unpickle arbitrary objects.
        state_dict = member.get_state_dict(progress=progress, check_hash=True, weights_only=True)
        return state_dict, f"torchvision {member!r} ({member.url})"
    if path.exists() or path.suffix.lower() in _LOCAL_SUFFIXES:
        return read_state_dict(path), str(path)
    raise ValueError(
        f"model.weights={weights!r}: not 'none', not a torchvision weights name for {arch} "
        f"({', '.join(enum.__members__)}), and no such file"
    )


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
    elif suffix in (".pt", ".pth", ".bin"):
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


def load_pretrained(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> LoadReport:
    """Load ``state_dict`` into ``model`` where names and shapes match; used for every kind of weights.

    ``features`` must match completely (same names, shapes and finite
    values), or a :class:`ValueError` names ``source`` and the first bad key.
    Head tensors (``classifier.*``) whose shape differs or that are missing
    keep their fresh initialisation; they are reported, as are extra tensors
    of the file that the model has no place for. A state dict of the full
    regressor therefore loads completely, one of a torchvision ImageNet VGG
    loads its backbone.
    """
    report = LoadReport(source)
    target = model.state_dict()
    update: dict[str, torch.Tensor] = {}
    for name, tensor in target.items():
        if name not in state_dict:
            if name.startswith("features."):
                raise ValueError(
                    f"{source}: no tensor {name!r}, which the model needs; the file's features do not "
                    f"match this architecture (file has {_feature_summary(state_dict)})"
                )
            report.fresh.append(name)
            continue
        value = state_dict[name]
        if tuple(value.shape) != tuple(tensor.shape):
            if name.startswith("features."):
                raise ValueError(
                    f"{source}: tensor {name!r} has shape {tuple(value.shape)}, the model expects "
                    f"{tuple(tensor.shape)}; the weights are for another architecture"
                )
            report.skipped[name] = f"shape {tuple(value.shape)} in file, {tuple(tensor.shape)} in model"
            report.fresh.append(name)
            continue
        if value.is_floating_point() and not _all_finite(value):
            if name.startswith("features."):
                raise ValueError(f"{source}: tensor {name!r} holds NaN or infinite values")
            report.skipped[name] = "non-finite values"
            report.fresh.append(name)
            continue
        update[name] = value
        report.loaded.append(name)
    for name in state_dict:
        if name not in target:
            if name.startswith("features."):
                raise ValueError(
                    f"{source}: tensor {name!r} has no place in the model; the weights are for another "
                    "architecture (a _bn variant, or more layers)"
                )
            report.skipped[name] = "not in model"
    if not any(n.startswith("features.") for n in report.loaded):
        raise ValueError(f"{source}: no features tensor loaded; this is not a VGG state dict")
    model.load_state_dict(update, strict=False)
    return report


def _all_finite(t: torch.Tensor) -> bool:
    """Whether ``t`` holds no NaN or infinity (a sum is the fast test; exact check only if it overflows)."""
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def _feature_summary(state_dict: Mapping[str, torch.Tensor]) -> str:
    names = [k for k in state_dict if k.startswith("features.")]
    return f"{len(names)} features tensors" + (f", last {names[-1]!r}" if names else "")


# ---------------------------------------------------------------------------
# Layers


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """``(name, module)`` of every Conv2d, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def last_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    convs = conv_layers(model)
    if not convs:
        raise ValueError("the model has no Conv2d layer")
    return convs[-1]


def resolve_target_layer(model: nn.Module, name: str) -> str:
    """The module name of the Conv2d to ablate: ``name`` itself, or the last Conv2d for ``auto``."""
    if name == "auto":
        return last_conv(model)[0]
    convs = dict(conv_layers(model))
    if name not in convs:
        modules = dict(model.named_modules())
        what = f"is a {type(modules[name]).__name__}, not a Conv2d" if name in modules else "does not exist"
        raise ValueError(
            f"model.target_layer={name!r} {what} in this model; use auto (= {last_conv(model)[0]}) "
            f"or one of the Conv2d layers: {', '.join(convs)}"
        )
    return name


def output_layer(model: nn.Module) -> nn.Linear:
    """The final ``Linear(., 1)`` of the regressor."""
    last = model.classifier[-1]
    if not isinstance(last, nn.Linear) or last.out_features != 1:
        raise ValueError(f"the model's last layer is {last!r}, expected Linear(., 1)")
    return last


# ---------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(model: nn.Module, model_dir: str | os.PathLike, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``model_dir/model.safetensors`` and ``model_dir/model.json`` (each atomically).

    ``spec`` must hold ``arch`` and ``head``; it should hold ``input_size``,
    ``normalization``, ``target_layer``, ``seed`` and ``data_hash``.
    ``target_layer`` is stored resolved (``auto`` becomes a module name);
    library versions, git revision, parameter count and the weights' SHA-256
    are added. The JSON is written last. Returns the stored spec.
    """
    model_dir = Path(model_dir)
    for key in ("arch", "head"):
        if key not in spec:
            raise ValueError(f"save_checkpoint: spec needs {key!r}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights_path = model_dir / MODEL_FILE
    metadata = {"format": CHECKPOINT_FORMAT, "arch": spec["arch"], "head": spec["head"]}
    io.write_bytes(weights_path, io.safetensors_bytes(state, metadata=metadata))  # sorted header: same bytes
    stored = dict(spec)
    target = resolve_target_layer(model, stored.get("target_layer", "auto"))
    stored.update(
        format=CHECKPOINT_FORMAT,
        weights_file=MODEL_FILE,
        weights_sha256=file_hash(weights_path),
        target_layer=target,
        target_channels=dict(conv_layers(model))[target].out_channels,
        n_parameters=sum(v.numel() for v in model.parameters()),
        output="score",  # raw output = predicted score on the training scale
        provenance=provenance(),
    )
    io.write_json(model_dir / SPEC_FILE, stored)
    return stored


def load_trained(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a regressor saved by :func:`save_checkpoint`: ``(model in eval mode, spec)``."""
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
    model = _build_random(spec["arch"], spec["head"])
    state = load_file(str(weights_path), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights_path}: does not match {spec['arch']}/{spec['head']} in {spec_path}: {exc}") from exc
    return model.to(device).eval(), spec

