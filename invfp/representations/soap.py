"""SOAP through dscribe, made differentiable for torch.

dscribe computes the per-atom SOAP power spectrum and its derivatives with respect to
every atom position in C++. :class:`SOAP` calls it once per structure of the batch
inside a :class:`torch.autograd.Function` whose backward contracts the upstream
gradient with those derivatives; pooling over atoms ("maxmin", "mean", "sum") is then
done in torch, so its chain rule is autograd's.

Which derivatives (measured with dscribe 2.1.2; ``derivatives="auto"`` picks):

- analytical: GTO radial basis, non-periodic, no weighting, compression "off" or
  "crossover" (dscribe's own rule, ``SOAP.validate_derivatives_method``);
- numerical (dscribe's central differences in C++) otherwise: periodic structures, the
  polynomial basis, weighting, "mu2" / "mu1nu1" compression.

The derivative array is ``[N, N, 3, F]`` per structure and is only computed when a
gradient is needed (``positions.requires_grad`` under grad mode); a plain forward uses
dscribe's ``create``. Derivatives are with the centres attached to their atoms
(dscribe's ``attach=True``): moving an atom also moves the centre it carries, which is
what a fingerprint of the structure means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from invfp.components import Param, non_negative_int, positive, positive_int
from invfp.errors import ConfigError, InputError, OptionalDependencyError
from invfp.representations.base import POOLINGS, Representation, empty_batch, pool, pooled_width


def _import_soap() -> Any:
    """dscribe's SOAP class, or an OptionalDependencyError naming the extra to install."""
    try:
        from dscribe.descriptors import SOAP as DscribeSOAP
    except ImportError as exc:
        raise OptionalDependencyError("dscribe", "soap", "the 'soap' representation") from exc
    return DscribeSOAP


def _species_list(value: Any) -> str | None:
    if value is None:
        return None
    try:
        from ase.data import atomic_numbers

        items = [value] if isinstance(value, (str, int)) else list(value)
        zs = [atomic_numbers[v] if isinstance(v, str) else int(v) for v in items]
    except (KeyError, TypeError, ValueError):
        return "must be a list of atomic numbers or chemical symbols"
    if not zs or any(z < 1 or z > 118 for z in zs):
        return "must be a non-empty list of atomic numbers (1-118) or chemical symbols"
    return None


class _SOAPFunction(torch.autograd.Function):
    """Per-atom SOAP ``[B, N, F]`` of positions ``[B, N, 3]``; backward from dscribe's derivatives."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        positions: torch.Tensor,
        rep: SOAP,
        numbers: np.ndarray,
        cells: np.ndarray | None,
        pbc: tuple[bool, bool, bool],
    ) -> torch.Tensor:
        from ase import Atoms

        descriptor = rep._descriptor(numbers, any(pbc))
        need_grad = ctx.needs_input_grad[0]
        pos = positions.detach().to("cpu", torch.float64).numpy()
        feats, derivs = [], []
        for b in range(pos.shape[0]):
            atoms = Atoms(numbers=numbers, positions=pos[b], cell=None if cells is None else cells[b], pbc=pbc)
            if any(pbc):
                # dscribe's periodic SOAP changes when an atom sits in another periodic image
                # (found by tests/test_properties.py); a lattice-vector shift leaves the
                # derivatives unchanged, so wrapping is exact for the backward too.
                frac = atoms.get_scaled_positions(wrap=False)[:, list(pbc)]
                if (frac < 0).any() or (frac >= 1).any():
                    atoms.wrap()
            try:
                if need_grad:
                    d, c = descriptor.derivatives(atoms, method=rep.params["derivatives"], attach=True)
                    derivs.append(d)
                else:
                    c = descriptor.create(atoms)
            except ValueError as exc:  # dscribe's messages for degenerate cells and the like
                raise InputError(f"soap: dscribe cannot describe structure {b} of the batch: {exc}") from exc
            feats.append(c)
        if need_grad:
            # [B, N_centres, N_atoms, 3, F]; kept on the input's device for the backward
            ctx.save_for_backward(torch.as_tensor(np.stack(derivs), dtype=positions.dtype, device=positions.device))
        return torch.as_tensor(np.stack(feats), dtype=positions.dtype, device=positions.device)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        (derivs,) = ctx.saved_tensors
        grad_pos = torch.einsum("bif,bijkf->bjk", grad_out.to(derivs.dtype), derivs)
        return grad_pos, None, None, None, None


class SOAP(Representation):
    """Smooth overlap of atomic positions (dscribe), pooled over atoms, differentiable in torch.

    Keyword arguments follow dscribe's ``SOAP`` (``species``, ``r_cut``, ``n_max``,
    ``l_max``, ``sigma``, ``rbf``, ``weighting``, ``compression``, ``periodic``) plus
    ``pooling`` and ``derivatives``. Per-atom length F is dscribe's
    ``get_number_of_features()``; pooled length is 2F for "maxmin" (max over atoms,
    then min), 3F for "maxmin+mean", F for "mean" and "sum".

    Example:
        >>> rep = SOAP(species=["Pt"], r_cut=6.0, n_max=6, l_max=4)
        >>> R = rep(positions, numbers)            # [B, 2F], differentiable
    """

    name: ClassVar[str] = "soap"
    description: ClassVar[str] = "dscribe's SOAP power spectrum, pooled over atoms, with torch gradients."
    parameters: ClassVar[dict[str, Param]] = {
        "species": Param(
            None,
            "Elements the descriptor covers (numbers or symbols); None: the elements of each input structure.",
            check=_species_list,
        ),
        "r_cut": Param(6.0, "Cutoff radius in Å (dscribe's r_cut; > 1 Å for the GTO basis).", check=positive),
        "n_max": Param(6, "Number of radial basis functions.", check=positive_int),
        "l_max": Param(4, "Maximum degree of the spherical harmonics.", check=non_negative_int),
        "sigma": Param(1.0, "Width in Å of the Gaussians that smear each atom.", check=positive),
        "rbf": Param("gto", "Radial basis: 'gto' (analytical derivatives) or 'polynomial'.",
                     choices=("gto", "polynomial")),
        "weighting": Param(None, "dscribe's radial weighting dict (forces numerical derivatives)."),
        "compression": Param("off", "dscribe's compression mode.", choices=("off", "crossover", "mu2", "mu1nu1")),
        "periodic": Param(
            None, "Respect periodicity; None: follow the pbc passed with each batch.", choices=(None, True, False)
        ),
        "pooling": Param("maxmin", "Pooling over atoms: 'maxmin' (max then min), 'mean', 'sum', 'maxmin+mean' or None (per atom).",
                         choices=POOLINGS),
        "derivatives": Param("auto", "dscribe's derivative method; 'auto': analytical where dscribe supports it.",
                             choices=("auto", "analytical", "numerical")),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__()
        self.params = self.resolve_params(params)
        if self.params["weighting"] is not None and not isinstance(self.params["weighting"], dict):
            raise ConfigError("soap: weighting must be a dict as dscribe documents it, or None")
        self._soap_class = _import_soap()
        self.pooling = self.params["pooling"]
        self._cache: dict[tuple[tuple[int, ...], bool], Any] = {}
        if self.params["species"] is not None:
            # build once now so that bad dscribe settings fail at construction, not mid-run
            self._descriptor(np.asarray(self._species()), bool(self.params["periodic"]))

    def _species(self) -> list[int]:
        from ase.data import atomic_numbers

        raw = self.params["species"]
        items = [raw] if isinstance(raw, (str, int)) else list(raw)
        return sorted({atomic_numbers[v] if isinstance(v, str) else int(v) for v in items})

    def _descriptor(self, numbers: np.ndarray, periodic: bool) -> Any:
        """The dscribe SOAP object for these elements and periodicity (cached)."""
        present = sorted({int(z) for z in numbers})
        if self.params["species"] is not None:
            species = self._species()
            missing = sorted(set(present) - set(species))
            if missing:
                raise InputError(f"soap: structure has elements {missing} not in species={species}; add them")
        else:
            species = present
        if self.params["periodic"] is not None:
            periodic = bool(self.params["periodic"])
        key = (tuple(species), periodic)
        if key not in self._cache:
            p = self.params
            kwargs: dict[str, Any] = {
                "species": species, "r_cut": float(p["r_cut"]), "n_max": p["n_max"], "l_max": p["l_max"],
                "sigma": float(p["sigma"]), "rbf": p["rbf"], "periodic": periodic,
                "compression": {"mode": p["compression"], "species_weighting": None},
            }
            if p["weighting"] is not None:
                kwargs["weighting"] = p["weighting"]
            try:
                descriptor = self._soap_class(**kwargs)
                if p["derivatives"] == "analytical":
                    descriptor.validate_derivatives_method("analytical", True)
            except ValueError as exc:
                raise ConfigError(f"soap: dscribe rejects these settings: {exc}") from exc
            self._cache[key] = descriptor
        return self._cache[key]

    def derivative_method(self, numbers: Sequence[int] | np.ndarray, periodic: bool = False) -> str:
        """'analytical' or 'numerical': what the backward uses for these elements and periodicity."""
        descriptor = self._descriptor(np.asarray(numbers), periodic)
        return descriptor.validate_derivatives_method(self.params["derivatives"], True)

    def dim(self, numbers: Sequence[int] | np.ndarray | torch.Tensor) -> int:
        """Pooled length D (2F for "maxmin", 3F for "maxmin+mean", else F) or per-atom F when ``pooling`` is None."""
        nums = numbers.cpu().numpy() if isinstance(numbers, torch.Tensor) else np.asarray(numbers)
        f = int(self._descriptor(nums, bool(self.params["periodic"])).get_number_of_features())
        return pooled_width(self.pooling) * f

    def forward(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor | Sequence[int],
        cell: torch.Tensor | None = None,
        pbc: bool | Sequence[bool] = False,
    ) -> torch.Tensor:
        """SOAP of a batch ``[B, N, 3]``: ``[B, D]`` pooled or ``[B, N, F]`` per atom.

        Args:
            positions: Cartesian positions in Å, ``[B, N, 3]`` (or ``[N, 3]``).
            numbers: atomic numbers ``[N]`` shared by the batch.
            cell: ``[B, 3, 3]`` or ``[3, 3]`` lattice vectors (rows), needed when periodic.
            pbc: one bool or three.

        Raises:
            InputError: bad shapes, a periodic batch without a cell, or a cell that
                requires a gradient (dscribe gives no cell derivatives).
        """
        if positions.dim() == 2:
            positions = positions.unsqueeze(0)
        if positions.dim() != 3 or positions.shape[-1] != 3:
            raise InputError(f"soap: positions must be [B, N, 3], got {tuple(positions.shape)}")
        nums = (numbers.detach().cpu().numpy() if isinstance(numbers, torch.Tensor) else np.asarray(numbers))
        nums = nums.astype(np.int64).reshape(-1)
        if nums.shape[0] != positions.shape[1]:
            raise InputError(f"soap: {nums.shape[0]} atomic numbers for {positions.shape[1]} atoms")
        flags = (bool(pbc),) * 3 if isinstance(pbc, (bool, np.bool_)) else tuple(bool(p) for p in pbc)
        if len(flags) != 3:
            raise InputError(f"soap: pbc must be one bool or three, got {pbc!r}")
        periodic = any(flags) if self.params["periodic"] is None else bool(self.params["periodic"])
        cells = None
        if cell is not None:
            if cell.requires_grad:
                raise InputError("soap: gradients with respect to the cell are not available (dscribe has none)")
            cells = cell.detach().to("cpu", torch.float64).numpy()
            cells = np.broadcast_to(cells.reshape(-1, 3, 3), (positions.shape[0], 3, 3))
        if periodic and (cells is None or not any(flags)):
            raise InputError("soap: a periodic SOAP needs a cell and pbc=True for the batch")
        if not periodic:
            flags = (False, False, False)
        if positions.shape[0] == 0:
            return empty_batch(positions, self.dim(nums), self.pooled)
        per_atom = _SOAPFunction.apply(positions, self, nums, cells, flags)
        return pool(per_atom, self.pooling)
