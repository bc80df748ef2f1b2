"""Component base: class-level metadata and parameter validation shared by every kind.

A component (representation, optimizer, generative model, validator) declares its
metadata on the class, as ASE calculators do::

    class MyOptimizer(Optimizer):
        name = "my-opt"
        description = "One line saying what it does."
        parameters = {
            "steps": Param(200, "Optimisation steps per restart.", check=positive_int),
            "loss": Param("mae", "Fingerprint loss.", choices=("mae", "mse")),
        }

and validates its keyword arguments with :meth:`Component.resolve_params`, which
raises :class:`~invfp.errors.ConfigError` (a ``ValueError``) naming the allowed values.
This module imports nothing heavy, so listing components never imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from invfp.errors import ConfigError

Check = Callable[[Any], "str | None"]


@dataclasses.dataclass(frozen=True)
class Param:
    """Metadata of one component parameter."""

    default: Any
    """Value used when the caller gives none."""
    doc: str = ""
    """One sentence for ``--help`` and the docs."""
    choices: tuple[Any, ...] | None = None
    """If set, the only allowed values."""
    check: Check | None = None
    """Optional validator: returns an error message (the rule broken) or ``None``."""


def positive(value: Any) -> str | None:
    """Check: a finite number > 0."""
    if not _is_number(value) or not value > 0 or not math.isfinite(value):
        return "must be a finite number > 0"
    return None


def non_negative(value: Any) -> str | None:
    """Check: a finite number >= 0."""
    if not _is_number(value) or not value >= 0 or not math.isfinite(value):
        return "must be a finite number >= 0"
    return None


def positive_int(value: Any) -> str | None:
    """Check: an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "must be an integer >= 1"
    return None


def non_negative_int(value: Any) -> str | None:
    """Check: an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return "must be an integer >= 0"
    return None


def fraction(value: Any) -> str | None:
    """Check: a number in (0, 1]."""
    if not _is_number(value) or not 0 < value <= 1:
        return "must be a number in (0, 1]"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def closest(name: str, options: Iterable[str]) -> str | None:
    """The option most similar to ``name`` (for 'did you mean' hints), or ``None``."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return match[0] if match else None


class Component:
    """Base of every pluggable component. Subclasses set the class-level metadata."""

    kind: ClassVar[str] = ""
    """The component kind: representation, optimizer, model or validator."""
    name: ClassVar[str] = ""
    """The registered name, e.g. ``"acsf"``."""
    description: ClassVar[str] = ""
    """One line saying what the component does."""
    parameters: ClassVar[Mapping[str, Param]] = {}
    """Parameters accepted as ``__init__`` keywords, with defaults and docs."""

    @classmethod
    def resolve_params(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``values`` over the declared defaults and validate every value.

        Raises:
            ConfigError: an unknown parameter name, a value outside ``choices`` or one
                that fails its ``check``; the message names the allowed values.
        """
        label = cls.name or cls.__name__
        unknown = [k for k in values if k not in cls.parameters]
        if unknown:
            key = unknown[0]
            hint = closest(key, cls.parameters)
            allowed = ", ".join(sorted(cls.parameters)) or "(none)"
            msg = f"{cls.kind or 'component'} {label!r} has no parameter {key!r}"
            if hint:
                msg += f" (did you mean {hint!r}?)"
            raise ConfigError(f"{msg}; allowed parameters: {allowed}")
        resolved = {k: p.default for k, p in cls.parameters.items()}
        resolved.update(values)
        for key, value in resolved.items():
            spec = cls.parameters[key]
            if spec.choices is not None and value not in spec.choices:
                allowed = ", ".join(repr(c) for c in spec.choices)
                raise ConfigError(
                    f"{label}: {key}={value!r} is not allowed; choose one of {allowed}"
                )
            if spec.check is not None and value is not None:
                problem = spec.check(value)
                if problem:
                    raise ConfigError(f"{label}: {key}={value!r} {problem}")
        return resolved

    def get_config(self) -> dict[str, Any]:
        """A JSON-serialisable description from which the component can be rebuilt.

        The default returns ``{"name": ..., **self.params}``; components that keep
        their parameters elsewhere override it.
        """
        params = getattr(self, "params", {})
        return {"name": self.name, **params}

    def __repr__(self) -> str:
        params = getattr(self, "params", {})
        inner = ", ".join(f"{k}={v!r}" for k, v in params.items())
        return f"{type(self).__name__}({inner})"
