"""The one registry shape behind model families, architectures, map methods, views and tasks.

In the spirit of torchvision's ``register_model`` / ``get_model`` /
``list_models``: a name registered twice is refused, an unknown name is an
error that lists the registered ones, and names keep registration order.
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named items of one ``kind``; ``key`` (e.g. ``model.task``) is the config key errors name."""

    def __init__(self, kind: str, key: str | None = None) -> None:
        self.kind, self.key = kind, key
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if not name or name in self._items:
            raise ValueError(f"{self.kind} {name!r} is unnamed or already registered")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> T:
        """Remove ``name`` (tests that register a toy item clean up with this)."""
        return self._items.pop(name)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            where = f"{self.key}={name!r}: unknown {self.kind}" if self.key else f"unknown {self.kind} {name!r}"
            raise ValueError(f"{where}; choose one of {', '.join(self._items) or '(none registered)'}") from None

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
