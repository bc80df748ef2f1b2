"""The interface every validator plugin implements."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from invfp.components import Component

if TYPE_CHECKING:
    import ase


@dataclasses.dataclass
class Verdict:
    """One validator's judgement of one structure."""

    accepted: bool
    value: float | None = None
    """The metric behind the verdict (a loss, a distance, an energy...)."""
    detail: str = ""


@dataclasses.dataclass
class ValidationContext:
    """What a validator may need besides the structures.

    ``targets[i]`` and ``losses[i]`` belong to ``structures[i]``; ``extras`` carries
    objects the pipeline has (a surrogate model, the representation...).
    """

    targets: Sequence[float] = ()
    losses: Sequence[float] = ()
    property_name: str = "formation_energy"
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


class Validator(Component):
    """Base class of validator plugins."""

    kind: ClassVar[str] = "validator"

    def __init__(self, **params: Any) -> None:
        self.params = self.resolve_params(params)

    def validate(
        self, structures: Sequence[ase.Atoms], context: ValidationContext
    ) -> list[Verdict]:
        """One :class:`Verdict` per structure, in order."""
        raise NotImplementedError
