"""Typed options: building an options dataclass from config keys, with errors that name the key."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from dyntok.errors import ConfigError


def build_options(cls: type, options: dict[str, Any], prefix: str) -> Any:
    """``cls(**options)``, its ``__post_init__`` checking the ranges.

    Raises:
        ConfigError: a key ``cls`` has no field for (naming ``<prefix>: unknown key``), or a value its checks
            refuse.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"{prefix}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**options)


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raises ConfigError naming ``key`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def split_options(options: dict[str, Any], classes: tuple[type, ...], prefix: str) -> tuple[Any, ...]:
    """One instance of each of ``classes`` from the keys of ``options`` that are its fields.

    Raises:
        ConfigError: a key none of them has (naming ``<prefix>``), or a value a class's checks refuse.
    """
    names = [{f.name for f in fields(c)} for c in classes]
    unknown = sorted(set(options) - set().union(*names))
    if unknown:
        known = sorted(set().union(*names))
        raise ConfigError(f"{prefix}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return tuple(c(**{k: v for k, v in options.items() if k in n}) for c, n in zip(classes, names, strict=True))
