"""The one owner of forward hooks in the package.

:class:`Hooks` registers forward hooks and always removes them: use it as a
context manager (or call :meth:`Hooks.remove` in ``finally``). The model is
never modified otherwise: a hook that changes what flows on (ablation)
*returns* the new output, and a hook that keeps an output hands a clone to
the rest of the network, so an in-place ReLU downstream (torchvision's VGG,
ResNet) overwrites the clone, never the kept tensor.
"""

from __future__ import annotations

from typing import Any, Callable, MutableMapping

import torch
from torch import Tensor, nn

Hook = Callable[[nn.Module, tuple, Any], Any]


class Hooks:
    """Forward hooks registered through this object, removed on :meth:`remove` or on leaving ``with``."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def add(self, module: nn.Module, hook: Hook) -> None:
        """Register ``hook(module, inputs, output)`` (its return value, if not None, replaces the output)."""
        self._handles.append(module.register_forward_hook(hook))

    def keep_output(
        self, module: nn.Module, store: MutableMapping[Any, Tensor], key: Any, require_grad: bool = False
    ) -> None:
        """Keep ``module``'s output in ``store[key]`` and hand a clone on.

        With ``require_grad`` the kept tensor is made a leaf that requires
        gradients (when nothing upstream does), so ``torch.autograd.grad`` can
        be taken with respect to it.
        """

        def hook(m: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
            if require_grad and not output.requires_grad:
                output.requires_grad_(True)
            store[key] = output
            return output.clone()

        self.add(module, hook)

    def keep_input(self, module: nn.Module, store: MutableMapping[Any, Tensor], key: Any) -> None:
        """Keep a copy of ``module``'s first input in ``store[key]``."""
        self.add(module, lambda m, inputs, output: store.__setitem__(key, inputs[0].clone()))

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> "Hooks":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
