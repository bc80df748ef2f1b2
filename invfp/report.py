"""Figures and one self-contained HTML page for a run directory (``invfp report runs/NAME``).

:func:`write_report` reads a run (``results.db``, ``summary.json``, ``calibration.json``
and, when the run stored them, ``reference.npz`` and each sample's generated
fingerprint) and writes, into ``runs/NAME/report/`` by default:

- ``pca.png``: the first two principal components of R for the data, the data near
  each target, the generated and the accepted samples, one panel per target (the
  paper's Figure 6);
- ``property_hist.png`` and ``property_parity.png``: per target, the true property
  (the oracle's value) of generated and accepted structures against the target;
- ``loss_hist.png``: the reconstruction losses with the acceptance threshold;
- ``gallery/t<i>_s<k>.png``: a few accepted structures per target, rendered with ASE;
- ``report.html``: a summary table and every figure, embedded as base64 data URIs
  (the page works on its own) and linked by relative path to the PNG files.

The run is only read (never locked), so a report can be drawn while a run is going on.
matplotlib is imported inside the functions and used without pyplot (a ``Figure``
rendered by Agg), so no global backend is switched and no display is needed.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from invfp.errors import InputError, OptionalDependencyError
from invfp.results import read_json_file
from invfp.utils import atomic_write, atomic_write_text

if TYPE_CHECKING:
    import ase

__all__ = ["Report", "RunData", "SampleRow", "load_run", "pca_projection", "write_report"]


@dataclasses.dataclass
class SampleRow:
    """What the report needs of one stored sample."""

    target_index: int
    target: float
    sample: int
    loss: float
    accepted: bool
    true_property: float | None
    fingerprint: np.ndarray | None
    row_id: int
    """The ase.db row id (to fetch the structure for the gallery)."""


@dataclasses.dataclass
class RunData:
    """A run directory as the report reads it."""

    directory: Path
    rows: list[SampleRow]
    targets: list[float]
    """Target values by target index."""
    property_name: str
    units: str
    """Units of the property ("" when the run does not say)."""
    window: float
    """Half-width of the "near the target" band (property units)."""
    threshold: float | None
    """The reconstruction-loss threshold, when the run had one."""
    reference_R: np.ndarray | None
    reference_y: np.ndarray | None

    def structure(self, row: SampleRow) -> ase.Atoms:
        """The reconstructed structure of ``row``."""
        import ase.db

        return ase.db.connect(str(self.directory / "results.db"), type="db").get(id=row.row_id).toatoms()


@dataclasses.dataclass
class Report:
    """What :func:`write_report` wrote."""

    html: Path
    figures: list[Path]
    """Every PNG written (figures and gallery), in the order of the page."""
    notes: list[str]
    """Figures left out, and why (e.g. no oracle values in the run)."""


def _read_json(path: Path) -> Any:
    return read_json_file(path, fix="is this an invfp run directory?")


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def load_run(directory: str | os.PathLike[str]) -> RunData:
    """Read a run directory (read-only; a run may still be writing to it).

    Raises:
        InputError: not a run directory, an unreadable side file, or no samples yet.
    """
    import sqlite3

    import ase.db

    directory = Path(directory)
    db_path = directory / "results.db"
    if not db_path.is_file():
        raise InputError(f"{directory} holds no results.db; give a run directory written by `invfp run -o DIR`")
    config = _read_json(directory / "config.json") or {}
    summary = _read_json(directory / "summary.json") or {}
    calibration = _read_json(directory / "calibration.json") or {}
    rows: list[SampleRow] = []
    targets: dict[int, float] = {}
    try:
        for row in ase.db.connect(str(db_path), type="db").select():
            kvp = row.key_value_pairs
            fingerprint = row.data.get("fingerprint")
            rows.append(
                SampleRow(
                    target_index=int(kvp["target_index"]),
                    target=float(kvp["target"]),
                    sample=int(kvp["sample"]),
                    loss=float(kvp["loss"]),
                    accepted=bool(kvp["accepted"]),
                    true_property=_finite_or_none(kvp.get("true_property")),
                    fingerprint=None if fingerprint is None else np.asarray(fingerprint, dtype=float),
                    row_id=int(row.id),
                )
            )
            targets[rows[-1].target_index] = rows[-1].target
    except KeyError as exc:
        raise InputError(f"{db_path} lacks the column {exc} of invfp results; is it an invfp run?") from exc
    except sqlite3.DatabaseError as exc:  # not SQLite, truncated, or another program's database
        raise InputError(
            f"{db_path} is not a readable ase.db ({exc}); give a run directory written by `invfp run -o DIR`"
        ) from exc
    if not rows:
        raise InputError(f"{db_path} holds no samples yet; let `invfp run` commit a chunk first")
    rows.sort(key=lambda r: (r.target_index, r.sample))
    # Targets with no committed chunk yet (a run still going on) still get an empty panel
    # when the summary or the config lists them; the rows themselves are authoritative.
    listed = summary.get("targets") if isinstance(summary.get("targets"), list) else config.get("targets")
    for index, entry in enumerate(listed if isinstance(listed, list) else []):
        value = entry.get("target") if isinstance(entry, dict) else entry
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            targets.setdefault(index, float(value))
    threshold = summary.get("loss_threshold", calibration.get("threshold", config.get("loss_threshold")))
    window = summary.get("window", config.get("window", 0.1))
    reference_R = reference_y = None
    reference = directory / "reference.npz"
    if reference.is_file():
        try:
            with np.load(reference, allow_pickle=False) as npz:
                reference_R, reference_y = np.asarray(npz["R"], dtype=float), np.asarray(npz["y"], dtype=float)
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{reference} is unreadable ({exc}); delete it to draw the report without it") from exc
    return RunData(
        directory=directory,
        rows=rows,
        targets=[targets.get(i, math.nan) for i in range(max(targets) + 1)],
        property_name=str(summary.get("property", config.get("property", "property"))),
        units=str(summary.get("units", config.get("units", "")) or ""),
        window=float(window) if window is not None else 0.1,
        threshold=_finite_or_none(threshold),
        reference_R=reference_R,
        reference_y=reference_y,
    )


def pca_projection(
    fit_on: np.ndarray, *others: np.ndarray, components: int = 2, floor: float = 0.01
) -> list[np.ndarray]:
    """Project arrays onto the leading principal components of ``fit_on``.

    Features are standardised by ``fit_on``'s mean and standard deviation first (raw
    ACSF features span orders of magnitude; without it one feature is the whole PCA),
    each deviation floored at ``floor`` times the root-mean-square deviation of all
    features, as :class:`invfp.models.scaling.FeatureScaler` does: an ACSF has columns
    that barely vary over real structures (large-eta, zeta = 64 terms), and a generated
    sample that differs there by a hair would otherwise land 10^4 deviations away.
    Signs are fixed (largest loading positive) so the picture is reproducible.

    Returns:
        ``[fit_on projected, *others projected]``, each ``[n, components]``.
    """
    X = np.asarray(fit_on, dtype=float)
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    rms = float(np.sqrt(np.mean(std**2)))
    std = np.maximum(std, floor * rms) if rms > 0 else np.ones_like(std)
    Z = (X - mean) / std
    _, _, vt = np.linalg.svd(Z, full_matrices=False)
    axes = vt[:components]
    axes = axes * np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
    if axes.shape[0] < components:  # fewer samples than components: pad with zero axes
        axes = np.vstack([axes, np.zeros((components - axes.shape[0], axes.shape[1]))])
    return [((np.asarray(a, dtype=float) - mean) / std) @ axes.T for a in (X, *others)]


# -- figures ----------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise OptionalDependencyError("invfp report needs matplotlib: pip install 'invfp[report]'") from exc
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    return atomic_write(path, lambda p: fig.savefig(p, format="png"))


def _label(run: RunData, what: str) -> str:
    return f"{what} {run.property_name}" + (f" ({run.units})" if run.units else "")


def _grid(n: int, max_columns: int = 3) -> tuple[int, int]:
    columns = min(n, max_columns)
    return math.ceil(n / columns), columns


def _color(index: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab10"](index % 10)


def _by_target(run: RunData) -> list[list[SampleRow]]:
    groups: list[list[SampleRow]] = [[] for _ in run.targets]
    for row in run.rows:
        groups[row.target_index].append(row)
    return groups


def plot_pca(run: RunData, path: Path) -> Path | None:
    """The paper's Figure 6: PCA of R for data, data near each target, generated and accepted."""
    with_fp = [r for r in run.rows if r.fingerprint is not None]
    if not with_fp:
        return None
    generated = np.stack([r.fingerprint for r in with_fp])  # type: ignore[misc]
    has_data = run.reference_R is not None and run.reference_R.shape[1:] == generated.shape[1:]
    fit_on = run.reference_R if has_data else generated
    fitted, projected = pca_projection(fit_on, generated)  # type: ignore[arg-type]
    rows, columns = _grid(len(run.targets))
    fig = _figure(4.2 * columns, 3.8 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)).ravel()
    for index, target in enumerate(run.targets):
        ax = axes[index]
        if has_data:
            ax.scatter(*fitted.T, s=8, c="0.15", alpha=0.35, lw=0, label="data")
            near = np.abs(run.reference_y - target) <= run.window  # type: ignore[operator]
            if near.any():
                ax.scatter(*fitted[near].T, s=14, c="tab:blue", alpha=0.8, lw=0, label=f"data within ±{run.window:g}")
        mine = np.array([r.target_index == index for r in with_fp])
        kept = np.array([r.target_index == index and r.accepted for r in with_fp])
        if mine.any():
            ax.scatter(*projected[mine].T, s=16, marker="s", facecolors="none", edgecolors="tab:red", lw=0.8,
                       label="generated")
        if kept.any():
            ax.scatter(*projected[kept].T, s=14, marker="s", c="tab:green", lw=0, label="accepted")
        ax.set_title(f"target {target:g}")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=7, loc="best")
    for ax in axes[len(run.targets):]:
        ax.set_visible(False)
    fig.suptitle("PCA of R " + ("(fitted on the data)" if has_data else "(fitted on the generated samples)"))
    return _save(fig, path)


def plot_property_hist(run: RunData, path: Path) -> Path | None:
    """Per target: histograms of the true property of generated and accepted structures."""
    if not any(r.true_property is not None for r in run.rows):
        return None
    groups = _by_target(run)
    rows, columns = _grid(len(run.targets))
    fig = _figure(4.2 * columns, 3.2 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for index, (target, group) in enumerate(zip(run.targets, groups, strict=True)):
        ax = axes[index]
        kept = np.array([r.true_property for r in group if r.accepted and r.true_property is not None], dtype=float)
        rejected = np.array(
            [r.true_property for r in group if not r.accepted and r.true_property is not None], dtype=float
        )
        values = np.concatenate([kept, rejected])
        if len(values):
            lo, hi = min(values.min(), target - run.window), max(values.max(), target + run.window)
            ax.hist([kept, rejected], bins=np.linspace(lo, hi, 25), stacked=True, color=[_color(index), "0.7"],
                    label=[f"accepted ({len(kept)})", f"rejected ({len(rejected)})"])
        ax.axvspan(target - run.window, target + run.window, color="gold", alpha=0.25, lw=0, label=f"±{run.window:g}")
        ax.axvline(target, color="k", lw=1)
        ax.set_title(f"target {target:g}")
        ax.set_xlabel(_label(run, "true"))
        ax.set_ylabel("structures")
        ax.legend(fontsize=7)
    for ax in axes[len(run.targets):]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_property_parity(run: RunData, path: Path) -> Path | None:
    """True property against the target, every generated structure (accepted in colour)."""
    if not any(r.true_property is not None for r in run.rows):
        return None
    fig = _figure(5.2, 4.8)
    ax = fig.subplots()
    spread = float(np.ptp(run.targets)) if len(run.targets) > 1 else 1.0
    jitter = np.random.default_rng(0)
    lows, highs = [min(run.targets)], [max(run.targets)]
    rejected_label = "rejected"  # on the first rejected series only
    for index, (target, group) in enumerate(zip(run.targets, _by_target(run), strict=True)):
        for accepted in (False, True):
            values = np.array(
                [r.true_property for r in group if r.accepted == accepted and r.true_property is not None], dtype=float
            )
            if not len(values):
                continue
            lows.append(values.min())
            highs.append(values.max())
            x = target + jitter.uniform(-0.02, 0.02, len(values)) * spread
            if accepted:
                ax.scatter(x, values, s=14, color=_color(index), label=f"accepted, target {target:g}")
            else:
                ax.scatter(x, values, s=10, marker="x", color="0.45", lw=0.8, label=rejected_label)
                rejected_label = None
    lo, hi = min(lows) - run.window, max(highs) + run.window
    line = np.array([lo, hi])
    ax.plot(line, line, color="k", lw=1)
    ax.fill_between(line, line - run.window, line + run.window, color="gold", alpha=0.25, lw=0,
                    label=f"±{run.window:g}")
    ax.set_xlabel(_label(run, "target"))
    ax.set_ylabel(_label(run, "true"))
    ax.set_title("true property vs target")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_loss_hist(run: RunData, path: Path) -> Path:
    """Histogram of reconstruction losses (log scale), accepted ones overlaid, with the threshold."""
    losses = np.array([r.loss for r in run.rows], dtype=float)
    kept = np.array([r.loss for r in run.rows if r.accepted], dtype=float)
    positive = losses[np.isfinite(losses) & (losses > 0)]
    fig = _figure(5.6, 3.8)
    ax = fig.subplots()
    if len(positive):
        lo, hi = positive.min(), positive.max()
        if run.threshold is not None and run.threshold > 0:
            lo, hi = min(lo, run.threshold), max(hi, run.threshold)
        bins = np.geomspace(lo / 1.1, hi * 1.1, 30)
        rejected = np.array([r.loss for r in run.rows if not r.accepted], dtype=float)
        ax.hist([kept[kept > 0], rejected[rejected > 0]], bins=bins, stacked=True, color=["tab:green", "0.7"],
                label=[f"accepted ({len(kept)})", f"rejected ({len(rejected)})"])
        ax.set_xscale("log")
    if run.threshold is not None:
        ax.axvline(run.threshold, color="tab:red", lw=1.5, ls="--", label=f"threshold {run.threshold:.3g}")
    ax.set_xlabel("reconstruction loss (MAE of R)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    return _save(fig, path)


def render_structure(atoms: ase.Atoms, path: Path, *, rotation: str = "10x,-15y,0z") -> Path:
    """Render one structure to PNG with ASE's (matplotlib-based) PNG writer."""
    from ase.io import write

    show_cell = 2 if atoms.pbc.any() else 0  # a cluster's 20 Å box would dwarf it
    return atomic_write(
        path, lambda p: write(str(p), atoms, format="png", rotation=rotation, show_unit_cell=show_cell, scale=30)
    )


def gallery(run: RunData, directory: Path, per_target: int) -> list[tuple[SampleRow, Path]]:
    """Render the first ``per_target`` accepted structures of each target (by sample index)."""
    out = []
    for index, group in enumerate(_by_target(run)):
        for row in [r for r in group if r.accepted][:per_target]:
            out.append((row, render_structure(run.structure(row), directory / f"t{index}_s{row.sample}.png")))
    return out


# -- the page ---------------------------------------------------------------------------
def _table(run: RunData) -> list[dict[str, Any]]:
    table = []
    for target, group in zip(run.targets, _by_target(run), strict=True):
        kept = [r for r in group if r.accepted]
        entry: dict[str, Any] = {"target": target, "generated": len(group), "accepted": len(kept)}
        entry["median loss"] = float(np.median([r.loss for r in group])) if group else None
        for label, members in (("all", group), ("accepted", kept)):
            errors = np.array([abs(r.true_property - target) for r in members if r.true_property is not None])
            entry[f"MAE {label}"] = float(errors.mean()) if len(errors) else None
            entry[f"% within {label}"] = float(100 * np.mean(errors <= run.window)) if len(errors) else None
        table.append(entry)
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _image(path: Path, base: Path, caption: str, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    rel = html.escape(path.relative_to(base).as_posix())
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" data-file="{rel}">'
        f'<figcaption>{caption} <a href="{rel}">{rel}</a></figcaption></figure>'
    )


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
figure{display:inline-block;margin:8px;vertical-align:top}img{max-width:100%}
.gallery figure{width:220px}.gallery img{width:210px}figcaption{font-size:12px;color:#555}
"""


def write_report(
    run_directory: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    gallery_size: int = 4,
) -> Report:
    """Write the figures and ``report.html`` of a run (see the module docstring).

    Args:
        run_directory: the run (``runs/NAME``).
        output: where to write (default ``runs/NAME/report``).
        gallery_size: accepted structures rendered per target (0: no gallery).

    Raises:
        InputError: not a run directory or no samples yet.
        OptionalDependencyError: matplotlib is missing.
    """
    if isinstance(gallery_size, bool) or not isinstance(gallery_size, int) or gallery_size < 0:
        raise InputError(f"gallery_size must be an integer >= 0, got {gallery_size!r}")
    run = load_run(run_directory)
    out = Path(output) if output is not None else run.directory / "report"
    if out.exists() and not out.is_dir():
        raise InputError(f"report output {out} exists and is not a directory; choose another -o")
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    sections: list[str] = []
    figures: list[Path] = []

    def add(title: str, path: Path | None, caption: str, missing: str) -> None:
        if path is None:
            notes.append(f"{title}: {missing}")
            sections.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(missing)}</p>")
            return
        figures.append(path)
        sections.append(f"<h2>{html.escape(title)}</h2>" + _image(path, out, html.escape(caption), title))

    add("PCA of R (the paper's Figure 6)", plot_pca(run, out / "pca.png"),
        "First two principal components of the standardised fingerprints: data (grey), data within the "
        "window of the target (blue), generated samples (red squares), accepted samples (green).",
        "the run stored no generated fingerprints")
    if run.reference_R is None:
        notes.append("PCA: no reference.npz in the run, so the data are not shown")
    add("True property of generated structures", plot_property_hist(run, out / "property_hist.png"),
        "Per target: the oracle's value for every generated structure, accepted (colour) and rejected "
        "(grey) stacked; the band is the target ± window.", "the run has no oracle values (true property)")
    add("Parity: true property against the target", plot_property_parity(run, out / "property_parity.png"),
        "Accepted structures in colour, rejected ones as grey crosses (x jittered).",
        "the run has no oracle values (true property)")
    add("Reconstruction loss", plot_loss_hist(run, out / "loss_hist.png"),
        "MAE between each generated fingerprint and the fingerprint of its reconstruction, accepted "
        "(green) and rejected (grey) stacked; dashed: the acceptance threshold.", "")
    if gallery_size:
        rendered = gallery(run, out / "gallery", gallery_size)
        figures.extend(path for _, path in rendered)
        items = []
        for row, path in rendered:
            true = "–" if row.true_property is None else f"{row.true_property:.3f}"
            caption = f"target {row.target:g}, sample {row.sample}: true {true}, loss {row.loss:.3g}."
            items.append(_image(path, out, html.escape(caption), f"structure t{row.target_index} s{row.sample}"))
        if not items:
            notes.append("gallery: no accepted structures")
        sections.append(
            f"<h2>Accepted structures (first {gallery_size} per target)</h2><div class='gallery'>"
            + ("".join(items) or "<p>No accepted structures.</p>") + "</div>"
        )
    table = _table(run)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in table[0]) if table else ""
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in entry.values()) + "</tr>" for entry in table)
    threshold = "none" if run.threshold is None else f"{run.threshold:.4g}"
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>invfp report: {html.escape(run.directory.name)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>invfp run {html.escape(str(run.directory))}</h1>"
        f"<p>{len(run.rows)} samples, {sum(r.accepted for r in run.rows)} accepted; property "
        f"{html.escape(run.property_name)}{html.escape(' (' + run.units + ')' if run.units else '')}, "
        f"window ±{run.window:g}, loss threshold {threshold}.</p>"
        f"<table><tr>{head}</tr>{body}</table>" + "".join(sections)
        + ("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>" if notes else "")
        + "</body></html>"
    )
    page_path = atomic_write_text(out / "report.html", page)
    return Report(html=page_path, figures=figures, notes=notes)

