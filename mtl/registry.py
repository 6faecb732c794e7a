"""Name -> class registries, so users add balancers and samplers without touching our code."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

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


def constructor_params(cls: type, supplied: Iterable[str] = ()) -> list[tuple[inspect.Parameter, Callable]]:
    """The keyword parameters ``cls(...)`` accepts, each with the ``__init__`` that declares it.

    Walks the constructors up the class hierarchy while they forward ``**kwargs`` (a loss-level balancer
    passes ``source`` on to ``Balancer``, every loss ``flood`` on to ``TaskLoss``); the first declaration of a
    name wins. ``supplied`` names the arguments the run provides itself (``task_names``, ``num_labels``, ...).
    """
    skip = set(supplied)
    out: dict[str, tuple[inspect.Parameter, Callable]] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]  # drop self
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip:
                out.setdefault(p.name, (p, init))
        if not any(p.kind is p.VAR_KEYWORD for p in params) or klass.__module__.startswith("torch"):
            break
    return list(out.values())


def constructor_options(cls: type, supplied: Iterable[str] = ()) -> dict[str, Any]:
    """``{name: default}`` of :func:`constructor_params` (``inspect.Parameter.empty`` when required)."""
    return {p.name: p.default for p, _ in constructor_params(cls, supplied)}


def check_options(kind: str, name: str, given: Mapping[str, Any], accepted: Iterable[str]) -> None:
    """A ``TypeError`` naming the options in ``given`` that ``accepted`` lacks, and the accepted ones."""
    accepted = list(accepted)
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise TypeError(f"{kind} {name!r} got unknown option(s) {unknown}; it takes {accepted}")


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
