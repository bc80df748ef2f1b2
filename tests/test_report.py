"""invfp report: figures and HTML page of a real (tiny) run."""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pytest

from invfp.errors import InputError

TARGETS = [2.0, 3.0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run of the tiny pipeline: 2 targets × 8 samples in chunks of 4, with reference data."""
    import torch

    from invfp.results import ResultsStore
    from invfp.testing import tiny_pipeline

    torch.set_num_threads(1)
    pipeline, R, y = tiny_pipeline()
    directory = tmp_path_factory.mktemp("runs") / "tiny"
    with ResultsStore(directory, {"test": "report"}) as store:
        store.write_reference(R, y)
        pipeline.run(TARGETS, n=8, chunk_size=4, store=store, progress=False)
    return directory


def _check_png(path, min_side=40):
    from matplotlib.image import imread

    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4), f"{path.name}: not an RGB(A) image"
    assert min(image.shape[:2]) >= min_side, f"{path.name}: {image.shape[:2]} is too small"
    rgb = image[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05, f"{path.name}: (nearly) constant pixels"
    assert len(np.unique(np.round(rgb * 255).astype(int), axis=0)) > 8, f"{path.name}: too few colours to be a picture"


def test_report_writes_valid_figures_and_html_that_references_them(run_dir, tmp_path):
    from invfp.report import write_report

    out = tmp_path / "report"
    report = write_report(run_dir, out, gallery_size=3)
    names = {p.relative_to(out).as_posix() for p in report.figures}
    assert {"pca.png", "property_hist.png", "property_parity.png", "loss_hist.png"} <= names
    gallery = sorted(n for n in names if n.startswith("gallery/"))
    assert 1 <= len(gallery) <= 3 * len(TARGETS)
    assert report.notes == []
    page = report.html.read_text()
    for path in report.figures:
        _check_png(path, min_side=40 if path.parent.name == "gallery" else 200)
        rel = path.relative_to(out).as_posix()
        assert f'href="{rel}"' in page, f"the page does not link {rel}"
        match = re.search(rf'src="data:image/png;base64,([^"]+)"[^>]*data-file="{re.escape(rel)}"', page)
        assert match, f"the page does not embed {rel}"
        assert base64.b64decode(match.group(1)) == path.read_bytes(), f"embedded {rel} differs from the file"
    assert page.count("<img ") == len(report.figures)


def test_report_table_matches_the_results_store(run_dir):
    from invfp.report import _table, load_run
    from invfp.results import ResultsStore, summarize

    run = load_run(run_dir)
    assert run.targets == TARGETS
    assert len(run.rows) == 16 and all(r.fingerprint is not None and r.fingerprint.shape == (14,) for r in run.rows)
    assert run.threshold == pytest.approx(0.05)
    assert run.reference_R.shape == (60, 14)
    config = json.loads((run_dir / "config.json").read_text())
    with ResultsStore(run_dir, config) as store:
        expected = summarize(store.records(), TARGETS, window=run.window)
    for mine, theirs in zip(_table(run), expected, strict=True):
        assert mine["generated"] == theirs["generated"] == 8
        assert mine["accepted"] == theirs["accepted"]
        assert mine["median loss"] == pytest.approx(theirs["median_loss"])
        for label in ("all", "accepted"):
            assert mine[f"MAE {label}"] == pytest.approx(theirs[f"mae_{label}"])
            assert mine[f"% within {label}"] == pytest.approx(theirs[f"within_{label}"])


def test_pca_projection_matches_the_correlation_eigenvectors():
    from invfp.report import pca_projection

    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5)) * np.array([1e-3, 1.0, 10.0, 1e2, 1.0])
    fitted, other = pca_projection(X, X[:7], floor=0.0)
    Z = (X - X.mean(0)) / X.std(0)
    eigenvalues = np.linalg.eigh(np.cov(Z.T, bias=True))[0][::-1]
    np.testing.assert_allclose(fitted.var(axis=0), eigenvalues[:2], rtol=1e-10)
    np.testing.assert_allclose(fitted.mean(axis=0), 0.0, atol=1e-12)
    assert abs(np.corrcoef(fitted.T)[0, 1]) < 1e-10
    np.testing.assert_allclose(other, fitted[:7], atol=1e-12)


def test_pca_floor_keeps_near_constant_features_from_dominating():
    from invfp.report import pca_projection

    rng = np.random.default_rng(2)
    X = np.column_stack([rng.normal(0, 1.0, 300), rng.normal(0, 2.0, 300), 5.0 + 1e-9 * rng.normal(size=300)])
    sample = np.array([[0.0, 0.0, 5.0 + 1e-3]])  # off the data by a hair in the near-constant column
    _, raw = pca_projection(X, sample, floor=0.0)
    _, floored = pca_projection(X, sample)
    assert np.abs(raw).max() > 1e4  # 1e-3 / 1e-9 standard deviations
    rms = np.sqrt(np.mean(X.std(0) ** 2))
    # with the floor, the hair counts as 1e-3 / (0.01 * rms) deviations
    assert np.abs(floored).max() <= 1e-3 / (0.01 * rms) + 0.5  # + the data mean of the other columns


def test_report_without_reference_data_says_so(run_dir, tmp_path):
    from invfp.report import write_report

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("results.db", "summary.json", "config.json"):
        shutil.copy(run_dir / name, bare / name)
    report = write_report(bare, gallery_size=0)
    assert report.html.parent == bare / "report"
    assert [p.name for p in report.figures] == ["pca.png", "property_hist.png", "property_parity.png", "loss_hist.png"]
    assert any("reference.npz" in note for note in report.notes)
    _check_png(report.figures[0], min_side=200)


def test_report_cli_and_errors(run_dir, tmp_path):
    from typer.testing import CliRunner

    from invfp.cli.app import app

    result = CliRunner().invoke(app, ["report", str(run_dir), "-o", str(tmp_path / "cli"), "--gallery", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "report.html").is_file()
    assert len(list((tmp_path / "cli" / "gallery").glob("*.png"))) == len(TARGETS)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert isinstance(result.exception, InputError) and "no results.db" in str(result.exception)
    result = CliRunner().invoke(app, ["report", str(run_dir), "--gallery", "-1"])
    assert result.exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.db").write_bytes(b"")
    with pytest.raises(InputError, match="no samples"):
        from invfp.report import load_run

        load_run(empty)
