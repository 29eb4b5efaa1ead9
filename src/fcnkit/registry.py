"""Plain name -> factory registries with "did you mean" errors.

A registry is a dict filled by explicit ``@register`` decorators at import time. Looking up an unknown
name, or calling a factory with an option it does not take, raises an error that lists the closest
valid names, so a typo costs one glance instead of a traceback dive.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from .errors import UnknownNameError, UnknownOptionError

T = TypeVar("T")


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Closest candidates to ``name``: difflib's ratio first, then substring matches."""
    candidates = sorted(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    if len(found) < n:
        lowered = name.lower()
        for cand in candidates:
            if cand not in found and (lowered in cand.lower() or cand.lower() in lowered):
                found.append(cand)
                if len(found) == n:
                    break
    return found


def unknown_name_message(kind: str, name: str, candidates: Iterable[str]) -> str:
    candidates = list(candidates)
    matches = close_matches(name, candidates)
    hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
    return f"Unknown {kind} {name!r}.{hint} Known {kind}s: {len(candidates)} (see the list_*() function)."


class Registry(Generic[T]):
    """Name -> factory mapping for one kind of thing (models, datasets, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = fn
            return fn

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, self._entries)) from None

    def build(self, name: str, **options: Any) -> T:
        """Call the factory for ``name``, rejecting options its signature does not accept."""
        factory = self.get(name)
        check_options(factory, options, where=f"{self.kind} {name!r}")
        return factory(**options)


def accepted_options(fn: Callable[..., Any]) -> list[str] | None:
    """Keyword names ``fn`` accepts, or None when it takes ``**kwargs`` it validates itself."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_options(fn: Callable[..., Any], options: dict[str, Any], where: str) -> None:
    accepted = accepted_options(fn)
    if accepted is None:
        return
    for key in options:
        if key not in accepted:
            matches = close_matches(key, accepted)
            hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
            raise UnknownOptionError(
                f"{where} got an unknown option {key!r}.{hint} Accepted options: {', '.join(accepted)}."
            )
