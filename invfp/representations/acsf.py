"""Behler atom-centred symmetry functions (ACSF) in torch: batched, differentiable, periodic.

The per-atom functions follow dscribe's ``ACSF`` exactly (same keyword arguments, same
feature order, same values), so the two are interchangeable:

- G1 = sum_j f_c(r_ij)
- G2 = sum_j exp(-eta (r_ij - R_s)^2) f_c(r_ij)                     (``g2_params=[[eta, R_s], ...]``)
- G3 = sum_j cos(kappa r_ij) f_c(r_ij)                              (``g3_params=[kappa, ...]``)
- G4 = 2^(1-zeta) sum_{j<k} (1 + lambda cos theta_ijk)^zeta
  exp(-eta (r_ij^2 + r_ik^2 + r_jk^2)) f_c(r_ij) f_c(r_ik) f_c(r_jk)  (``g4_params=[[eta, zeta, lambda], ...]``)
- G5 = the same as G4 without the r_jk terms                       (``g5_params=[[eta, zeta, lambda], ...]``)

Order of the per-atom vector (dscribe's): for each neighbour element (sorted atomic
numbers) the block [G1, G2..., G3...]; then for each unordered neighbour-element pair
(a, b) with a >= b, in the order (0,0), (1,0), (1,1), (2,0), (2,1), (2,2), ... the block
[G4..., G5...].

The ``fung2022`` preset reproduces the StructRepGen reference (Fung et al., MLST 2022):
no G1, the paper's G2 and G5 grids, r_c = 20 Å, home cell only, and the reference's
channel interleaving (feature index = parameter index * n_channels + channel, channels
being the sorted elements for G2 and ``itertools.combinations_with_replacement`` of them
for G5).

Pooling turns the per-atom ``[B, N, F]`` into one vector per structure: ``"maxmin"``
(the paper's [max over atoms, then min over atoms], ``2F`` values), ``"mean"`` or
``"sum"`` (``F`` values), ``"maxmin+mean"`` (both, ``3F``: the mean adds every atom's
environment, which the energy sums over); ``pooling=None`` returns the per-atom features.

Periodic structures (``periodic=True`` and a ``pbc`` direction set): every periodic
image within the cutoff is a neighbour, including images of the atom itself, however
large the cutoff is compared with the cell. With ``periodic=False`` the cell and pbc are
ignored (the paper's "home cell only" mode).

The implementation is dense and batched, with no Python loop over atoms or structures.
Radial terms: each unordered pair once (r_ij = r_ji), with a hand-written backward for
the Gaussians (the hot spot). Angular terms: each atom's neighbour pairs j < k, cosines
from unit vectors, integer zeta powers by repeated squaring, sums over pairs as batched
matrix products per (zeta, lambda) x eta grid. Periodic input uses the same code on
displacement columns ``[B, N, M, 3]`` to every image within the cutoff (radial terms),
and on each atom's own neighbours within the cutoff, padded (angular terms). Large batches
of clusters are split into chunks whose intermediates stay below 16 MiB. On the CPU fused
numba kernels run instead (``_kernels``, the same values): for clusters with G1/G2 and
integer-zeta G5 terms (fung2022 among them) the whole per-atom ACSF and its gradient
with respect to positions, in chunks of 192 structures; otherwise the G2 and G5 sums and
their gradients. This torch code runs on CUDA, for what the kernels do not cover, and
with ``INVFP_NUMBA=0``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from invfp.components import Param
from invfp.errors import ConfigError, InputError
from invfp.representations import _kernels
from invfp.representations.base import POOLINGS, Representation, empty_batch, pool, pooled_width

__all__ = ["ACSF", "FUNG2022"]

_FUNG_G2_ETA = (0.01, 0.06, 0.1, 0.2, 0.4, 0.7, 1.0, 2.0, 3.5, 5.0)
_FUNG_G2_RS = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
_FUNG_G5_ZETA = (1.0, 2.0, 4.0, 16.0, 64.0)
_FUNG_G5_LAMBDA = (-1.0, 1.0)
_FUNG_G5_ETA = (0.06, 0.1, 0.2, 0.4, 1.0)

FUNG2022: dict[str, Any] = {
    "r_cut": 20.0,
    "g2_params": [[eta, rs] for eta in _FUNG_G2_ETA for rs in _FUNG_G2_RS],
    "g3_params": [],
    "g4_params": [],
    "g5_params": [[eta, z, lam] for z in _FUNG_G5_ZETA for lam in _FUNG_G5_LAMBDA for eta in _FUNG_G5_ETA],
    "periodic": False,
    "pooling": "maxmin",
    "cutoff": "cosine",
}
"""The paper's settings (Fung et al. 2022; the reference code's Pt10 fingerprint): 140 G2 + 50 G5 per atom."""

PRESETS: dict[str, dict[str, Any]] = {"fung2022": FUNG2022}
_CHUNK_BYTES = 16 * 2**20
"""Largest intermediate per chunk of a cluster batch. glibc serves blocks above 32 MiB by
mmap and unmaps them on free, so every call paid page faults again (measured: 45k faults
and +30% CPU time per forward+backward of 2000 Pt10 in float32; none when chunked)."""
_FUSED_CHUNK = 192
"""Structures per call of the whole-cluster kernel (``_kernels.ClusterACSF``): its
structures-innermost arrays outgrow the caches beyond a few hundred, and small calls pay
their fixed cost (Pt10 fung2022 float32, forward + backward of 3000 structures, one thread:
30-35 us per structure in chunks of 192, 47-52 in one call, 52 in chunks of 32)."""
_EXP_FLOOR = -87.0
"""Gaussian exponents are clamped here (exp(-87) = 1.6e-38, the smallest normal float32):
torch's float exp takes a slow path, 7-14x slower per element, for arguments whose result
would be denormal. About 4 % of the fung2022 G2 Gaussians of an EMT Pt10 minimum are that
far from their centre (more for spread-out structures); the clamp saved 5-15 % of a
forward and backward pass of 96-600 members."""
_PRESET_FREE = ("species", "pooling", "periodic", "preset")
"""Parameters a preset leaves to the caller; the others are fixed by the preset."""


def _check_pairs(width: int, names: str) -> Any:
    def check(value: Any) -> str | None:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            return f"must be a list of [{names}] lists of numbers"
        if arr.size == 0:
            return None
        if arr.ndim != 2 or arr.shape[1] != width:
            return f"must be a list of [{names}] lists (shape [n, {width}])"
        if not np.all(np.isfinite(arr)):
            return "must contain finite numbers"
        if np.any(arr[:, 0] <= 0):
            return "needs eta > 0 (first column)"
        if width == 3:
            if np.any(arr[:, 1] <= 0):
                return "needs zeta > 0 (second column)"
            if np.any(np.abs(arr[:, 2]) > 1):
                return "needs |lambda| <= 1 (third column; usually -1 or 1)"
        return None

    return check


def _check_kappas(value: Any) -> str | None:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return "must be a list of numbers (kappa values)"
    if arr.size and (arr.ndim != 1 or not np.all(np.isfinite(arr))):
        return "must be a flat list of finite numbers (kappa values)"
    return None


def _check_r_cut(value: Any) -> str | None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        return "must be a finite number > 0 (Å)"
    return None


def _check_species(value: Any) -> str | None:
    try:
        _species_numbers(value)
    except ConfigError as exc:
        return str(exc)
    return None


def _species_numbers(species: Any) -> list[int]:
    """Sorted unique atomic numbers from numbers or chemical symbols (as dscribe)."""
    from ase.data import atomic_numbers as symbol_to_z

    if isinstance(species, (str, bytes)) or not hasattr(species, "__iter__"):
        raise ConfigError("must be a list of chemical symbols or atomic numbers, e.g. ['H', 'O']")
    out = set()
    for s in species:
        if isinstance(s, str):
            if s not in symbol_to_z or symbol_to_z[s] == 0:
                raise ConfigError(f"has an unknown chemical symbol {s!r}")
            out.add(int(symbol_to_z[s]))
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 1 <= int(s) <= 118:
            out.add(int(s))
        else:
            raise ConfigError(f"has {s!r}, which is neither a chemical symbol nor an atomic number 1-118")
    if not out:
        raise ConfigError("must name at least one element")
    return sorted(out)


def _as_float_list(value: Any) -> list[Any]:
    return np.asarray(value if value is not None else [], dtype=np.float64).tolist()


class ACSF(Representation):
    """Behler atom-centred symmetry functions, dscribe-compatible (see the module docstring).

    Example::

        rep = ACSF(preset="fung2022")                   # the paper's 380-value Pt10 fingerprint
        rep = ACSF(species=["H", "C", "O"], r_cut=6.0, g2_params=[[1.0, 0.0]],
                   g4_params=[[0.01, 1.0, -1.0]], pooling=None)
        R = rep(positions, numbers)                     # positions [B, N, 3] -> [B, D]
    """

    name: ClassVar[str] = "acsf"
    description: ClassVar[str] = (
        "Behler atom-centred symmetry functions in torch (dscribe-compatible, batched, periodic)."
    )
    parameters: ClassVar[dict[str, Param]] = {
        "species": Param(
            None,
            "Elements (symbols or atomic numbers) that can occur; sets the element channels. "
            "Optional only with a preset, where it defaults to the elements of the structure.",
            check=_check_species,
        ),
        "r_cut": Param(None, "Cutoff radius in Å (required without a preset).", check=_check_r_cut),
        "g2_params": Param(None, "G2 radial terms: [[eta, R_s], ...].", check=_check_pairs(2, "eta, R_s")),
        "g3_params": Param(None, "G3 radial terms: [kappa, ...].", check=_check_kappas),
        "g4_params": Param(
            None,
            "G4 angular terms (with r_jk): [[eta, zeta, lambda], ...].",
            check=_check_pairs(3, "eta, zeta, lambda"),
        ),
        "g5_params": Param(
            None,
            "G5 angular terms (no r_jk): [[eta, zeta, lambda], ...].",
            check=_check_pairs(3, "eta, zeta, lambda"),
        ),
        "periodic": Param(
            False,
            "Use all periodic images within the cutoff (else the home cell only).",
            choices=(False, True),
        ),
        "pooling": Param(
            "maxmin",
            "How per-atom features become one vector: maxmin ([max, min] over atoms), mean, sum, "
            "maxmin+mean (both), or None for per-atom output.",
            choices=POOLINGS,
        ),
        "cutoff": Param(
            "cosine",
            "Cutoff function: cosine 0.5 (cos(pi r / r_c) + 1) (dscribe's), or polynomial "
            "1 - 10x^3 + 15x^4 - 6x^5 with x = r / r_c (smooth to the second derivative).",
            choices=("cosine", "polynomial"),
        ),
        "preset": Param(
            None, "Named settings: fung2022 (the paper's Pt10 fingerprint).", choices=(None, "fung2022")
        ),
    }

    def __init__(
        self,
        *,
        species: Sequence[int | str] | None = None,
        r_cut: float | None = None,
        g2_params: Sequence[Sequence[float]] | None = None,
        g3_params: Sequence[float] | None = None,
        g4_params: Sequence[Sequence[float]] | None = None,
        g5_params: Sequence[Sequence[float]] | None = None,
        periodic: bool = False,
        pooling: str | None = "maxmin",
        cutoff: str = "cosine",
        preset: str | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:  # resolve_params names the allowed ones and the closest match
            self.resolve_params(unknown)
        given = {
            "species": species,
            "r_cut": r_cut,
            "g2_params": g2_params,
            "g3_params": g3_params,
            "g4_params": g4_params,
            "g5_params": g5_params,
            "periodic": periodic,
            "pooling": pooling,
            "cutoff": cutoff,
            "preset": preset,
        }
        params = self.resolve_params(given)
        if preset is not None:
            params = self._apply_preset(preset, given)
        elif params["species"] is None:
            raise ConfigError(
                "acsf needs species=[...] (the elements that can occur) and r_cut=...; "
                "or use preset='fung2022' for the paper's fingerprint"
            )
        elif params["r_cut"] is None:
            raise ConfigError("acsf needs r_cut=... (the cutoff radius in Å)")
        for key in ("g2_params", "g3_params", "g4_params", "g5_params"):
            params[key] = _as_float_list(params[key])
        params["r_cut"] = float(params["r_cut"])
        if params["species"] is not None:
            params["species"] = _species_numbers(params["species"])
        self.params = params
        self.species: list[int] | None = params["species"]
        self.r_cut: float = params["r_cut"]
        self.periodic: bool = bool(params["periodic"])
        self.pooling: str | None = params["pooling"]
        self.cutoff: str = params["cutoff"]
        self.preset: str | None = params["preset"]
        # fung2022 uses the reference's layout: no G1, element channels interleaved.
        self._layout = "fung2022" if preset == "fung2022" else "dscribe"

        g2 = torch.tensor(params["g2_params"], dtype=torch.float64).reshape(-1, 2)
        g3 = torch.tensor(params["g3_params"], dtype=torch.float64).reshape(-1)
        if self._layout == "dscribe":
            g2 = torch.cat([torch.zeros(1, 2, dtype=torch.float64), g2])  # G1 is G2 with eta = 0
        self.register_buffer("_g2_eta", g2[:, 0].contiguous(), persistent=False)
        self.register_buffer("_g2_rs", g2[:, 1].contiguous(), persistent=False)
        self.register_buffer("_g3_kappa", g3, persistent=False)
        self._g4 = _AngularTerms(params["g4_params"], "g4")
        self._g5 = _AngularTerms(params["g5_params"], "g5")
        self.n_radial = len(g2) + len(g3)
        """Radial values per neighbour element."""
        self.n_angular = self._g4.n + self._g5.n
        """Angular values per neighbour-element pair."""
        self._plans: dict[tuple[Any, ...], dict[str, Any]] = {}

    # -- construction helpers -------------------------------------------------------
    @classmethod
    def fung2022(cls, **overrides: Any) -> ACSF:
        """The paper's fingerprint (Fung et al. 2022): ``ACSF(preset="fung2022", **overrides)``."""
        return cls(preset="fung2022", **overrides)

    def _apply_preset(self, preset: str, given: dict[str, Any]) -> dict[str, Any]:
        values = dict(PRESETS[preset])
        defaults = {k: p.default for k, p in self.parameters.items()}
        for key, value in given.items():
            if key in _PRESET_FREE:
                if key in ("pooling", "periodic") and value == defaults[key]:
                    continue
                values[key] = value
            elif value is not None and not _same(value, defaults[key]) and not _same(value, values[key]):
                raise ConfigError(
                    f"preset {preset!r} fixes {key}{_shown(values[key])}; drop preset=... to set "
                    f"{key} yourself, or pass only {', '.join(_PRESET_FREE[:-1])} with the preset"
                )
        values["preset"] = preset
        values.setdefault("species", None)
        return {k: values.get(k, defaults[k]) for k in self.parameters}

    # -- the Representation interface ----------------------------------------------
    def dim(self, numbers: Sequence[int] | np.ndarray | torch.Tensor) -> int:
        """Length of the pooled vector (or of the per-atom vector with ``pooling=None``)."""
        n_el = len(self._species_for(numbers))
        per_atom = self.n_radial * n_el + self.n_angular * (n_el * (n_el + 1) // 2)
        return pooled_width(self.pooling) * per_atom

    def forward(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor | Sequence[int],
        cell: torch.Tensor | None = None,
        pbc: bool | Sequence[bool] = False,
    ) -> torch.Tensor:
        """ACSF of a batch of structures of one composition.

        Args:
            positions: ``[B, N, 3]`` Cartesian positions in Å (float32 or float64).
            numbers: ``[N]`` atomic numbers (or ``[B, N]`` with identical rows).
            cell: ``[3, 3]`` or ``[B, 3, 3]`` lattice vectors as rows; used only with
                ``periodic=True`` and a periodic direction.
            pbc: periodic directions (a bool or three).

        Returns:
            ``[B, D]`` pooled features, or ``[B, N, F]`` with ``pooling=None``.

        Raises:
            InputError: wrong shapes, non-finite positions, several compositions in one
                batch, an element outside ``species``, a missing or singular cell.
        """
        positions, z = self._check_input(positions, numbers)
        species = self._species_for(z)
        if positions.shape[0] == 0:
            return empty_batch(positions, self.dim(z), self.pooled)
        channel = _channels(z, species, positions.device)
        pbc_dirs = _pbc_tuple(pbc)
        if self.periodic and any(pbc_dirs):
            disp, column_channel, valid = self._periodic_neighbours(positions, cell, pbc_dirs, channel)
            feats = self._periodic(disp, valid, column_channel, len(species))
            return pool(feats, self.pooling)
        plan = self._cluster_plan(channel, len(species), positions.dtype)
        if plan["fused"] is not None and _kernels.runs_on(positions):
            # the whole-cluster kernel in cache-sized chunks; its output is structures-innermost,
            # which the max/min pooling reads without a copy, so each chunk is pooled on its own
            parts = [
                pool(_kernels.ClusterACSF.apply(part, plan["fused"]), self.pooling)
                for part in positions.split(_FUSED_CHUNK)
            ]
        else:
            chunk = self._cluster_chunk(positions.shape[1], len(species), positions.element_size())
            parts = [pool(self._cluster(part, plan, len(species)), self.pooling) for part in positions.split(chunk)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    # -- input handling ---------------------------------------------------------------
    def _check_input(self, positions: Any, numbers: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(positions, torch.Tensor):
            positions = torch.as_tensor(np.asarray(positions, dtype=np.float64))
        if positions.ndim != 3 or positions.shape[-1] != 3:
            raise InputError(
                f"positions must have shape [B, N, 3] (a batch of structures); got {list(positions.shape)}"
                + ("; add a batch axis with positions[None]" if positions.ndim == 2 else "")
            )
        if not positions.is_floating_point():
            raise InputError(f"positions must be float32 or float64, not {positions.dtype}")
        if positions.shape[1] == 0:
            raise InputError("a structure needs at least one atom")
        if not bool(torch.isfinite(positions).all()):
            raise InputError("positions contain NaN or infinite values")
        z = torch.as_tensor(numbers.detach() if isinstance(numbers, torch.Tensor) else np.asarray(numbers))
        if z.is_floating_point() or z.dtype == torch.bool:
            if z.is_floating_point() and bool((z != z.round()).any()):
                raise InputError("numbers must be integer atomic numbers")
            z = z.long()
        if z.ndim == 2:
            if z.shape[0] not in (1, positions.shape[0]) or bool((z != z[:1]).any()):
                raise InputError(
                    "all structures in one batch must have the same composition in the same atom order; "
                    "group structures by composition (featurize() does this for you)"
                )
            z = z[0]
        if z.ndim != 1 or z.shape[0] != positions.shape[1]:
            raise InputError(
                f"numbers must have shape [N] = [{positions.shape[1]}] to match positions; got {list(z.shape)}"
            )
        return positions, z.cpu().long()

    def _species_for(self, numbers: Any) -> list[int]:
        present = sorted({int(v) for v in np.asarray(torch.as_tensor(numbers).cpu()).reshape(-1)})
        if self.species is None:
            return present
        missing = [z for z in present if z not in self.species]
        if missing:
            from ase.data import chemical_symbols

            names = ", ".join(
                chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z) for z in missing
            )
            known = ", ".join(chemical_symbols[z] for z in self.species)
            raise InputError(
                f"element(s) {names} not in this ACSF's species ({known}); add them to species=[...]"
            )
        return list(self.species)

    def _periodic_neighbours(
        self, positions: torch.Tensor, cell: Any, pbc_dirs: tuple[bool, bool, bool], channel: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Displacements to every periodic image within the cutoff, as dense columns."""
        b, n, _ = positions.shape
        if cell is None:
            raise InputError("periodic=True with pbc set needs a cell ([3, 3] or [B, 3, 3] lattice vectors)")
        cell = torch.as_tensor(cell, dtype=positions.dtype, device=positions.device)
        if cell.shape == (3, 3):
            cell = cell.expand(b, 3, 3)
        if cell.shape != (b, 3, 3):
            raise InputError(
                f"cell must have shape [3, 3] or [B, 3, 3] = [{b}, 3, 3]; got {list(cell.shape)}"
            )
        if not bool(torch.isfinite(cell).all()):
            raise InputError("the cell contains NaN or infinite values")
        det = torch.linalg.det(cell.detach().double())
        scale = cell.detach().double().norm(dim=-1).prod(dim=-1)
        if bool((det.abs() <= 1e-10 * scale.clamp_min(1e-300)).any()):
            raise InputError(
                "the cell is singular (zero volume) but pbc is set; give three independent lattice "
                "vectors (e.g. atoms.center(vacuum=...)) or set pbc=False"
            )
        inv = torch.linalg.inv(cell)
        pbc_mask = torch.tensor(pbc_dirs, dtype=positions.dtype, device=positions.device)
        disp = positions[:, None, :, :] - positions[:, :, None, :]  # [B, N_i, N_j, 3]: x_j - x_i
        # Wrap each pair to its nearest image first (a constant shift: no gradient needed),
        # so images with |n_a| <= r_cut / h_a + 1/2 reach every neighbour within the cutoff.
        frac = torch.einsum("bijx,bxy->bijy", disp, inv)
        wrap = torch.round(frac.detach()) * pbc_mask
        disp = disp - torch.einsum("bijy,byx->bijx", wrap, cell)
        spacing = 1.0 / inv.detach().double().norm(dim=1)  # plane spacings h_a, [B, 3]
        reach = torch.ceil(self.r_cut / spacing + 0.5).amax(dim=0).long().tolist()
        ranges = [range(-k, k + 1) if p else range(1) for k, p in zip(reach, pbc_dirs, strict=True)]
        shifts = torch.tensor(
            list(itertools.product(*ranges)), dtype=positions.dtype, device=positions.device
        )
        offsets = torch.einsum("sy,byx->bsx", shifts, cell)  # [B, S, 3]
        ext = disp[:, :, None, :, :] + offsets[:, None, :, None, :]  # [B, N_i, S, N_j, 3]
        n_shift = shifts.shape[0]
        ext = ext.reshape(b, n, n_shift * n, 3)
        zero = int((shifts.abs().sum(dim=1) == 0).nonzero()[0, 0])
        col = torch.arange(n_shift * n, device=positions.device)
        self_mask = col[None, :] == (zero * n + torch.arange(n, device=positions.device))[:, None]  # [N, M]
        r2 = (ext.detach() ** 2).sum(-1)
        near = (r2 <= self.r_cut**2) & ~self_mask
        keep = near.any(dim=1).any(dim=0).nonzero().squeeze(1)
        return ext[:, :, keep], channel.repeat(n_shift)[keep], ~self_mask[:, keep]

    # -- the functions ----------------------------------------------------------------
    def _cutoff_fn(self, r: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        x = r / self.r_cut
        if self.cutoff == "cosine":
            fc = 0.5 * (torch.cos(math.pi * x) + 1.0)
        else:
            fc = 1.0 + x**3 * (-10.0 + x * (15.0 - 6.0 * x))
        return torch.where(inside, fc, torch.zeros((), dtype=r.dtype, device=r.device))

    def _distances(self, disp: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """r^2, r, the within-cutoff mask and f_c for displacements ``[B, N, M, 3]``."""
        r2 = (disp * disp).sum(-1)
        # Mask before sqrt: sqrt(0) for an atom and itself would give NaN gradients.
        r = torch.sqrt(torch.where(valid, r2, torch.ones((), dtype=r2.dtype, device=r2.device)))
        inside = valid & (r <= self.r_cut)
        return r2, r, inside, self._cutoff_fn(r, inside)

    def _radial(
        self, r: torch.Tensor, fc: torch.Tensor, targets: list[torch.Tensor], rows: int
    ) -> torch.Tensor:
        """G1, G2, G3 summed into rows ``[B, rows, n_radial]``.

        ``r``, ``fc`` ``[B, P]`` are pair distances and cutoffs; pair p adds to row
        ``t[p]`` for each ``t`` in ``targets`` (a row is an atom and an element channel).
        """
        dtype = r.dtype
        blocks = []
        if self._g2_eta.numel():
            eta, rs = self._g2_eta.to(dtype), self._g2_rs.to(dtype)
            if _kernels.runs_on(r):
                blocks.append(_kernels.gaussian_sums(r, fc, eta, rs, targets, rows, _EXP_FLOOR))
            else:
                blocks.append(_GaussianSum.apply(r, fc, eta, rs, targets, rows))
        if self._g3_kappa.numel():
            values = torch.cos(r[..., None] * self._g3_kappa.to(dtype)) * fc[..., None]
            out = values.new_zeros(values.shape[0], rows, values.shape[-1])
            for target in targets:
                out = out.index_add(1, target, values)
            blocks.append(out)
        return torch.cat(blocks, dim=-1) if len(blocks) > 1 else blocks[0]

    def _cluster_chunk(self, n: int, n_el: int, itemsize: int) -> int:
        """Structures per chunk so that no intermediate exceeds ``_CHUNK_BYTES``."""
        pairs = n * (n - 1) // 2
        triplets = n * max(n - 1, 1) * max(n - 2, 1) // 2
        widths = [pairs * self.n_radial]
        for terms in (self._g4, self._g5):
            if terms.n:
                widths.append(triplets * (len(terms.combos) + len(terms.eta) * n_el * (n_el + 1) // 2))
        return max(1, _CHUNK_BYTES // (itemsize * max(1, *widths)))  # one atom: no pairs

    def _cluster(self, positions: torch.Tensor, plan: dict[str, Any], n_el: int) -> torch.Tensor:
        """Per-atom features of isolated structures (no images): every atom is a neighbour."""
        b, n, _ = positions.shape
        device = positions.device
        disp = positions[:, None, :, :] - positions[:, :, None, :]  # [B, N_i, N_j, 3]: x_j - x_i
        valid = ~torch.eye(n, dtype=torch.bool, device=device)
        r2, r, inside, fc = self._distances(disp, valid)
        radial = None
        if self.n_radial:
            iu, ju = plan["pairs"]
            radial = self._radial(r[:, iu, ju], fc[:, iu, ju], plan["targets"], n * n_el)
            radial = radial.reshape(b, n, n_el, -1)
        angular = None
        if self.n_angular:
            jj, kk = plan["triplets"]
            angular = self._angular(disp, r2, r, inside, fc, jj, kk, plan["pair_onehot"])
        return self._assemble(radial, angular)

    def _cluster_plan(self, channel: torch.Tensor, n_el: int, dtype: torch.dtype) -> dict[str, Any]:
        """Index tensors of one composition, built once (they cost more than the math for B=1)."""
        device = channel.device
        key = (tuple(channel.tolist()), n_el, str(device), dtype)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        n = channel.shape[0]
        # Each unordered pair once (r_ij = r_ji), added to both atoms' rows, in the other
        # atom's element channel.
        iu, ju = torch.triu_indices(n, n, 1, device=device)
        jj, kk = _cluster_triplets(n, device)
        plan = {
            "pairs": (iu, ju),
            "targets": [iu * n_el + channel[ju], ju * n_el + channel[iu]],
            "triplets": (jj, kk),
            "pair_onehot": _pair_onehot(channel[jj], channel[kk], n_el, self._layout, dtype),
        }
        plan["fused"] = self._fused_spec(plan, channel, n_el, dtype)
        if len(self._plans) >= 32:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _fused_spec(
        self, plan: dict[str, Any], channel: torch.Tensor, n_el: int, dtype: torch.dtype
    ) -> _kernels.ClusterSpec | None:
        """What ``_kernels.ClusterACSF`` needs for this composition, or ``None`` where it
        does not apply (CUDA, G3 or G4 terms, G5 with a non-integer zeta or one below 1)."""
        if (
            channel.device.type != "cpu"
            or dtype not in (torch.float32, torch.float64)
            or self._g3_kappa.numel()
            or self._g4.n
            or self._g5.zeta_int is None
        ):
            return None
        np_dtype = np.float32 if dtype == torch.float32 else np.float64

        def ints(t: Any) -> np.ndarray:
            return np.ascontiguousarray(np.asarray(t.cpu() if isinstance(t, torch.Tensor) else t), dtype=np.int64)

        def floats(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.cpu().numpy(), dtype=np_dtype)

        n_f2, n_g5, n_q = self._g2_eta.numel(), self._g5.n, n_el * (n_el + 1) // 2
        # Output column of each radial (channel, term) and angular (element pair, term) value,
        # read off _assemble itself, so that the kernel writes the torch path's layout.
        n_radial = n_el * n_f2
        ids = self._assemble(
            torch.arange(n_radial).reshape(1, 1, n_el, n_f2),
            torch.arange(n_radial, n_radial + n_q * n_g5).reshape(1, 1, n_q, n_g5),
        ).reshape(-1)  # column -> value
        column = torch.empty_like(ids)
        column[ids] = torch.arange(ids.numel())  # value -> column
        col2 = column[:n_radial].reshape(n_el, n_f2).T  # [term, channel]
        col5 = column[n_radial:].reshape(n_q, n_g5).T  # [term, element pair]
        jj, kk = plan["triplets"]
        onehot = plan["pair_onehot"]
        qq = torch.zeros_like(jj) if onehot is None else onehot.argmax(-1)
        eta2, rs2 = self._g2_eta, self._g2_rs
        iu, ju = plan["pairs"]
        return _kernels.ClusterSpec(
            iu=ints(iu), ju=ints(ju), ch=ints(channel), col2=ints(col2),
            eta2=floats(eta2), rs2=floats(rs2), eta2_rs=floats(eta2 * rs2), eta5=floats(self._g5.eta),
            jj=ints(jj), kk=ints(kk), qq=ints(qq), zeta=ints(self._g5.zeta_int), lam_of=ints(self._g5.lam_of),
            lams=floats(self._g5.lam), n_pairs=n_q, col5=ints(col5),
            src5=ints(self._g5.flat_idx), n_feats=ids.numel(),
            r_cut=self.r_cut, cosine=self.cutoff == "cosine", floor=_EXP_FLOOR,
        )  # fmt: skip

    def _periodic(
        self, disp: torch.Tensor, valid: torch.Tensor, channel: torch.Tensor, n_el: int
    ) -> torch.Tensor:
        """Per-atom features from displacements ``[B, N, M, 3]`` to candidate neighbours."""
        r2, r, inside, fc = self._distances(disp, valid)
        radial = None
        if self.n_radial:
            b, n, m = r.shape
            rows = (torch.arange(n, device=r.device)[:, None] * n_el + channel).reshape(-1)  # [N * M]
            radial = self._radial(r.reshape(b, n * m), fc.reshape(b, n * m), [rows], n * n_el)
            radial = radial.reshape(b, n, n_el, -1)
        angular = None
        if self.n_angular:
            # Angular terms over each atom's own neighbours within the cutoff (per structure,
            # padded to the largest count): pairs of all candidate columns grow as
            # (images x N)^2 (about 10^6 for a 12-atom cell at r_c 6 Å), pairs of true
            # neighbours only as (density r_c^3)^2.
            b, n, m = r.shape
            kmax = max(int(inside.sum(-1).max()), 2)
            order = torch.argsort((~inside).to(torch.uint8), dim=-1, stable=True)[..., :kmax]  # inside first

            def take(t: torch.Tensor) -> torch.Tensor:
                return torch.gather(t, 2, order)

            disp_n = torch.gather(disp, 2, order[..., None].expand(b, n, kmax, 3))
            j, k = torch.triu_indices(kmax, kmax, 1, device=disp.device)
            col = channel.expand(b, n, m).gather(2, order)  # [B, N, kmax] element channel
            pair_onehot = _pair_onehot(col[..., j], col[..., k], n_el, self._layout, disp.dtype)
            angular = self._angular(
                disp_n, take(r2), take(r), take(inside), take(fc), j.expand(n, -1), k.expand(n, -1), pair_onehot
            )
        return self._assemble(radial, angular)

    def _angular(
        self,
        disp: torch.Tensor,
        r2: torch.Tensor,
        r: torch.Tensor,
        inside: torch.Tensor,
        fc: torch.Tensor,
        jj: torch.Tensor,
        kk: torch.Tensor,
        pair_onehot: torch.Tensor | None,
    ) -> torch.Tensor:
        """G4 and G5 per neighbour-element pair: ``[B, N, n_pairs, n_angular]``.

        ``jj``, ``kk`` ``[N, K]`` list each atom's unordered neighbour pairs j < k;
        ``pair_onehot`` ``[N, K, Q]`` or ``[B, N, K, Q]`` gives their element pair (``None``
        for one element).
        """
        dtype = disp.dtype
        n, m = disp.shape[1], disp.shape[2]
        rows = torch.arange(n, device=disp.device)[:, None]
        # Neighbour j of atom i as one flat index into the [N * M] neighbour axis:
        # index_select's backward is an index_add, far cheaper than the accumulating
        # index_put that advanced indexing t[:, rows, jj] needs.
        flat_j, flat_k = (rows * m + jj).reshape(-1), (rows * m + kk).reshape(-1)

        def pick(t: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
            """``[B, N, M, ...]`` -> ``[B, N, K, ...]`` at each atom's neighbour j (or k)."""
            return t.flatten(1, 2).index_select(1, flat).unflatten(1, jj.shape)

        inv_r = torch.where(inside, 1.0 / r, torch.zeros((), dtype=dtype, device=r.device))
        unit = disp * inv_r[..., None]
        cos = None
        n_pairs = 1 if pair_onehot is None else pair_onehot.shape[-1]
        out = []
        for terms in (self._g4, self._g5):
            if not terms.n:
                continue
            eta = terms.eta.to(dtype)
            g = torch.exp((r2[..., None] * -eta).clamp_min(_EXP_FLOOR)) * fc[..., None]  # [B, N, M, E]
            if _kernels.usable(terms, unit, pair_onehot):
                a = _kernels.g5_sums(unit, g, jj, kk, pair_onehot, terms)  # [B, N, Q, E, C]
                out.append(2.0 * a.flatten(-2).index_select(-1, terms.flat_idx))
                continue
            if cos is None:
                cos = (pick(unit, flat_j) * pick(unit, flat_k)).sum(-1)  # [B, N, K]
            gg = pick(g, flat_j) * pick(g, flat_k)  # [B, N, K, E]
            if terms.kind == "g4":
                djk = pick(disp, flat_k) - pick(disp, flat_j)
                rjk2 = (djk * djk).sum(-1)
                both = pick(inside, flat_j) & pick(inside, flat_k)
                one = torch.ones((), dtype=dtype, device=r.device)
                rjk = torch.sqrt(torch.where(both, rjk2, one))
                fjk = self._cutoff_fn(rjk, both & (rjk <= self.r_cut))
                gg = gg * torch.exp((rjk2[..., None] * -eta).clamp_min(_EXP_FLOOR)) * fjk[..., None]
            ang = terms.angle_powers(cos)  # [B, N, K, C]
            # Sums over neighbour pairs as [E, K] @ [K, C] per atom: with these layouts the
            # small batched products of the forward and both backward ones run about 1.5x
            # faster than [C, K] @ [K, E] (gg^T is a view).
            if pair_onehot is not None:
                h = (gg[..., None, :] * pair_onehot[..., None]).flatten(-2)  # [B, N, K, Q*E]
                a = (h.transpose(-1, -2) @ ang).unflatten(-2, (n_pairs, -1))  # [B, N, Q, E, C]
            else:
                a = (gg.transpose(-1, -2) @ ang)[:, :, None]  # [B, N, 1, E, C]
            out.append(2.0 * a.flatten(-2).index_select(-1, terms.flat_idx))
        return torch.cat(out, dim=-1) if len(out) > 1 else out[0]

    def _assemble(self, radial: torch.Tensor | None, angular: torch.Tensor | None) -> torch.Tensor:
        """Flatten ``[B, N, S, Fr]`` and ``[B, N, Q, Fa]`` in the layout's order."""
        blocks = []
        for block in (radial, angular):
            if block is None:
                continue
            if self._layout == "fung2022":
                block = block.transpose(-1, -2)  # parameter-major, channel fastest
            blocks.append(block.flatten(2))
        return torch.cat(blocks, dim=-1) if len(blocks) > 1 else blocks[0]

    def __repr__(self) -> str:
        shown = {"preset": self.preset} if self.preset else {"r_cut": self.r_cut}
        shown.update(species=self.species, pooling=self.pooling, periodic=self.periodic)
        counts = {k: len(self.params[k]) for k in ("g2_params", "g3_params", "g4_params", "g5_params")}
        inner = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        terms = ", ".join(f"{k[:2].upper()}: {n}" for k, n in counts.items() if n)
        return f"ACSF({inner}; {terms or 'G1 only'})"


class _GaussianSum(torch.autograd.Function):
    """Row sums of f_c(r_p) exp(-eta (r_p - R_s)^2) over pairs, with a hand-written backward.

    This is the hot spot of reconstruction (140 Gaussians per pair for fung2022).
    Autograd would keep four ``[B, P, F]`` intermediates and run about ten passes over
    them; here the forward keeps only the Gaussians and the backward is a gather, one
    elementwise product and one small matrix product. Values are laid out pair-major,
    ``[P, B * F]``, so adding a pair to its rows (and gathering back) moves whole
    contiguous rows instead of strided slices.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        r: torch.Tensor,
        fc: torch.Tensor,
        eta: torch.Tensor,
        rs: torch.Tensor,
        targets: list[torch.Tensor],
        rows: int,
    ) -> torch.Tensor:
        r_t, fc_t = r.t().contiguous(), fc.t().contiguous()  # [P, B]
        gauss = r_t[..., None] - rs
        gauss.square_().mul_(-eta).clamp_min_(_EXP_FLOOR).exp_()  # [P, B, F]
        values = (gauss * fc_t[..., None]).flatten(1)
        out = values.new_zeros(rows, values.shape[1])
        for target in targets:
            out.index_add_(0, target, values)
        ctx.save_for_backward(r_t, fc_t, gauss, eta, rs)
        ctx.targets = targets
        return out.view(rows, *gauss.shape[1:]).transpose(0, 1)  # [B, rows, F]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        r_t, fc_t, gauss, eta, rs = ctx.saved_tensors
        grad_rows = grad.transpose(0, 1).reshape(grad.shape[1], -1)  # [rows, B * F]
        g = grad_rows.index_select(0, ctx.targets[0])
        for target in ctx.targets[1:]:
            g.add_(grad_rows.index_select(0, target))
        g = g.view(gauss.shape).mul_(gauss)  # d out / d value, times the Gaussian
        # sums over F of g, g eta and g eta R_s in one product
        sums = g @ torch.stack([torch.ones_like(eta), eta, eta * rs], dim=-1)  # [P, B, 3]
        grad_fc = sums[..., 0].t()
        # d/dr exp(-eta (r - R_s)^2) = -2 eta (r - R_s) exp(...)
        grad_r = (2.0 * fc_t * (sums[..., 2] - r_t * sums[..., 1])).t()
        return grad_r, grad_fc, None, None, None, None


class _AngularTerms(torch.nn.Module):
    """G4 or G5 parameters, on the grid of their unique (zeta, lambda) and eta values."""

    def __init__(self, params: list[list[float]], kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.n = len(params)
        arr = np.asarray(params, dtype=np.float64).reshape(-1, 3)
        combos = sorted({(float(z), float(lam)) for _, z, lam in arr})
        etas = sorted({float(eta) for eta, _, _ in arr})
        lambdas = sorted({lam for _, lam in combos})
        self.combos = [(z, lambdas.index(lam)) for z, lam in combos]
        self.integer_zeta = all(z.is_integer() for z, _ in combos)
        # integer zeta >= 1 and lambda index per combo, for the fused G5 kernel (None: torch only)
        positive = self.integer_zeta and all(z >= 1 for z, _ in combos)
        self.zeta_int = np.array([int(z) for z, _ in self.combos], dtype=np.int64) if positive else None
        self.lam_of = np.array([li for _, li in self.combos], dtype=np.int64)
        self.register_buffer("eta", torch.tensor(etas, dtype=torch.float64), persistent=False)
        self.register_buffer("lam", torch.tensor(lambdas, dtype=torch.float64), persistent=False)
        self.register_buffer(
            "zeta", torch.tensor([c[0] for c in combos], dtype=torch.float64), persistent=False
        )
        self.register_buffer(
            "lam_idx", torch.tensor([c[1] for c in self.combos], dtype=torch.long), persistent=False
        )
        # each term's place in the flattened [eta, combo] grid of the computed values
        flat = [etas.index(float(eta)) * len(combos) + combos.index((float(z), float(lam))) for eta, z, lam in arr]
        self.register_buffer("flat_idx", torch.tensor(flat, dtype=torch.long), persistent=False)

    def angle_powers(self, cos: torch.Tensor) -> torch.Tensor:
        """(0.5 (1 + lambda cos))^zeta for each unique (zeta, lambda): ``[..., K, C]``."""
        dtype = cos.dtype
        bases = [(0.5 + (0.5 * lam) * cos).clamp_min(0.0) for lam in self.lam.tolist()]
        if not self.integer_zeta:
            base = torch.stack(bases, dim=-1)[..., self.lam_idx]
            return base ** self.zeta.to(dtype)
        # Integer powers by repeated squaring: far cheaper than pow's exp(log) (zeta = 64).
        squares: list[dict[int, torch.Tensor]] = [{1: b} for b in bases]
        return torch.stack([_int_power(squares[li], int(z)) for z, li in self.combos], dim=-1)


def _int_power(squares: dict[int, torch.Tensor], n: int) -> torch.Tensor:
    """x^n from a cache of x^(2^k) (``squares[1] = x``), extended as needed."""
    result = None
    bit = 1
    while n:
        if bit not in squares:
            half = squares[bit // 2]
            squares[bit] = half * half
        if n & 1:
            result = squares[bit] if result is None else result * squares[bit]
        n >>= 1
        bit <<= 1
    assert result is not None
    return result


def _shown(value: Any) -> str:
    """`` (= value)`` for short values; long parameter lists are not repeated in messages."""
    return f" (= {value!r})" if not isinstance(value, list) or len(value) <= 3 else f" ({len(value)} terms)"


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)))
    except (TypeError, ValueError):
        return a == b


def _pbc_tuple(pbc: Any) -> tuple[bool, bool, bool]:
    if isinstance(pbc, torch.Tensor):
        pbc = pbc.tolist()
    if isinstance(pbc, (bool, np.bool_, int)):
        return (bool(pbc),) * 3
    values = tuple(bool(p) for p in np.asarray(pbc).reshape(-1))
    if len(values) != 3:
        raise InputError(f"pbc must be a bool or three bools; got {pbc!r}")
    return values  # type: ignore[return-value]


def _channels(z: torch.Tensor, species: list[int], device: torch.device) -> torch.Tensor:
    lookup = {el: i for i, el in enumerate(species)}
    return torch.tensor([lookup[v] for v in z.tolist()], dtype=torch.long, device=device)


_TRIPLETS: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _cluster_triplets(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each atom i, its neighbour pairs j < k (j, k != i): two ``[N, (N-1)(N-2)/2]`` tensors."""
    key = (n, str(device))
    if key not in _TRIPLETS:
        j, k = np.triu_indices(n, 1)
        rows = [np.flatnonzero((j != i) & (k != i)) for i in range(n)]
        jj = torch.as_tensor(np.stack([j[idx] for idx in rows]).reshape(n, -1), device=device)
        kk = torch.as_tensor(np.stack([k[idx] for idx in rows]).reshape(n, -1), device=device)
        _TRIPLETS[key] = (jj, kk)
    return _TRIPLETS[key]


def _pair_onehot(
    ch_j: torch.Tensor, ch_k: torch.Tensor, n_el: int, layout: str, dtype: torch.dtype
) -> torch.Tensor | None:
    """One-hot element pair ``[..., Q]`` of neighbour pairs whose element channels are ``ch_j``, ``ch_k``.

    ``None`` for one element (every pair is the same pair).
    """
    if n_el == 1:
        return None
    lookup = torch.tensor(_pair_map(n_el, layout), dtype=torch.long, device=ch_j.device)
    pairs = lookup[ch_j, ch_k]
    return torch.nn.functional.one_hot(pairs, n_el * (n_el + 1) // 2).to(dtype)


def _pair_map(n_el: int, layout: str) -> list[list[int]]:
    """``[a][b]`` -> output index of the unordered element pair {a, b}.

    dscribe orders pairs (a, b), a >= b, as (0,0), (1,0), (1,1), (2,0), ...; the
    reference as ``itertools.combinations_with_replacement``: (0,0), (0,1), (0,2), (1,1), ...
    """
    if layout == "fung2022":
        pairs = list(itertools.combinations_with_replacement(range(n_el), 2))
    else:
        pairs = [(a, b) for a in range(n_el) for b in range(a + 1)]
    table = [[0] * n_el for _ in range(n_el)]
    for index, (a, b) in enumerate(pairs):
        table[a][b] = table[b][a] = index
    return table
