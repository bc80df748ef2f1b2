"""``invfp report``: PNG figures and one self-contained HTML page for a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def report(
    run: Annotated[Path, typer.Argument(help="Run directory written by `invfp run -o DIR`.")],
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Where to write (default: RUN/report).")
    ] = None,
    gallery: Annotated[int, typer.Option(help="Accepted structures rendered per target (0: none).")] = 4,
) -> None:
    """Draw a run: PCA of R (data, generated, accepted), true property vs target, losses, structures.

    Writes pca.png, property_hist.png, property_parity.png, loss_hist.png, gallery/*.png
    and report.html (every image embedded, so the page can be mailed on its own).
    """
    from invfp.cli.app import error

    if gallery < 0:
        error(f"--gallery must be >= 0, got {gallery}")

    from invfp.report import write_report

    result = write_report(run, output, gallery_size=gallery)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"wrote {result.html} ({len(result.figures)} figures beside it)")
