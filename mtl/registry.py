"""Name -> class registries, so users add balancers and samplers without touching our code."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from short names (used on the command line) to classes."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            existing = self._entries.get(name)
            if existing is not None and existing is not cls:
                raise ValueError(
                    f"{self.kind} name {name!r} is already registered to "
                    f"{existing.__module__}.{existing.__qualname__}"
                )
            self._entries[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def get(self, name: str) -> type[T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; registered {self.kind}s: {known}") from None

    def unregister(self, name: str) -> None:
        """Forget ``name`` (e.g. to re-import an edited module in a notebook); unknown names are ignored."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def import_modules(modules: Iterable[str]) -> None:
    """Import user modules named in the config so their ``@register_*`` decorators run."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(
                f"could not import {module!r} listed in `imports`: {exc}. "
                "Is it on PYTHONPATH (run from its folder or `pip install -e` it)?"
            ) from exc
