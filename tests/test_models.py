"""The cVAE, the surrogate, scaling, safe save/load and bundles."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from invfp import testing
from invfp.errors import InputError, ModelLoadError
from invfp.models import io
from invfp.models.base import TargetOutOfRangeWarning
from invfp.models.cvae import CVAE
from invfp.models.scaling import FeatureScaler
from invfp.models.surrogate import Surrogate

FAST_CVAE = {"epochs": 40, "hidden": 32, "latent": 4, "batch_size": 16}
FAST_SUR = {"epochs": 150, "hidden": 64, "layers": 2, "batch_size": 32, "lr": 2e-3}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return testing.synthetic_fingerprints(240, 12, seed=1)


@pytest.fixture(scope="module")
def fitted(data) -> tuple[CVAE, dict, Surrogate, dict]:
    R, y = data
    cvae = CVAE(**FAST_CVAE)
    cvae_report = cvae.fit(R, y, seed=0)
    sur = Surrogate(**FAST_SUR)
    sur_report = sur.fit(R, y, seed=0)
    return cvae, cvae_report, sur, sur_report


def test_cvae_conforms_to_the_model_contract():
    report = testing.check_model(CVAE(epochs=15, hidden=16, latent=3, batch_size=16))
    assert report["kind"] == "cvae" and report["n_train"] + report["n_val"] == 96


def test_cvae_training_reduces_validation_loss_and_keeps_best(fitted):
    _, report, _, _ = fitted
    val = report["history"]["val_loss"]
    assert len(val) == FAST_CVAE["epochs"] and report["n_val"] == 48
    assert report["best_val_loss"] < 0.5 * val[0]
    assert report["best_val_loss"] == pytest.approx(min(val))
    assert report["best_epoch"] == int(np.argmin(val)) + 1


def test_cvae_samples_follow_the_condition(fitted):
    cvae, _, sur, _ = fitted
    low = sur.predict(cvae.sample(1.5, 400, seed=0))
    high = sur.predict(cvae.sample(2.5, 400, seed=0))
    assert abs(np.median(low) - 1.5) < 0.3 and abs(np.median(high) - 2.5) < 0.3


def test_surrogate_reports_held_out_error_below_baseline(fitted):
    _, _, sur, report = fitted
    assert report["n_test"] == 24 and report["n_val"] == 48
    assert 0 < report["test_mae"] < 0.5 * report["test_mae_of_mean"]
    assert report["test_rmse"] >= report["test_mae"]


def test_surrogate_on_released_fingerprints_beats_the_mean(shared_data: Path):
    R = np.loadtxt(shared_data / "fps300_x.csv", delimiter=",")
    y = np.loadtxt(shared_data / "fps300_y.csv", delimiter=",")
    report = Surrogate(epochs=200, test_fraction=0.2).fit(R, y, seed=0)
    assert report["n_test"] == 60
    # measured 0.11-0.13 eV/atom against 0.41 for predicting the mean
    assert report["test_mae"] < 0.6 * report["test_mae_of_mean"]


def test_save_load_gives_identical_samples_and_predictions(fitted, tmp_path):
    cvae, _, sur, _ = fitted
    cvae.save(tmp_path / "g")
    sur.save(tmp_path / "s")
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    assert config["kind"] == "cvae" and config["dimension"] == 12 and "torch" in config["versions"]
    np.testing.assert_array_equal(CVAE.load(tmp_path / "g").sample(2.0, 50, seed=9), cvae.sample(2.0, 50, seed=9))
    R = testing.synthetic_fingerprints(20, 12, seed=5)[0]
    np.testing.assert_array_equal(Surrogate.load(tmp_path / "s").predict(R), sur.predict(R))
    assert isinstance(io.load_model(tmp_path / "g"), CVAE)  # kind resolved through the registry


def test_cvae_saved_before_the_new_parameters_loads_with_the_old_behaviour(fitted, tmp_path):
    cvae, *_ = fitted
    cvae.save(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in ("balance", "condition", "temperature", "prior"):
        del config["params"][key]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    old = CVAE.load(tmp_path / "old")
    assert (old.params["balance"], old.params["condition"], old.params["temperature"]) == (0.0, "input", 1.0)
    assert old.params["prior"] == "standard"
    np.testing.assert_array_equal(old.sample(2.0, 20, seed=3), cvae.sample(2.0, 20, seed=3))


def test_cvae_temperature_scales_the_latent_noise(fitted):
    cvae, *_ = fitted
    np.testing.assert_array_equal(cvae.sample(2.0, 30, seed=4, temperature=1.0), cvae.sample(2.0, 30, seed=4))
    cold = cvae.sample(2.0, 300, seed=4, temperature=1e-6)
    # at temperature -> 0 every sample is the decoding of z = 0
    assert np.ptp(cold, axis=0).max() < 1e-3 * np.ptp(cvae.sample(2.0, 300, seed=4), axis=0).max()
    half = cvae.sample(2.0, 300, seed=4, temperature=0.5)
    assert np.ptp(half, axis=0).max() < np.ptp(cvae.sample(2.0, 300, seed=4), axis=0).max()
    with pytest.raises(InputError, match="temperature"):
        cvae.sample(2.0, 3, temperature=0)


def test_balanced_weights_make_the_bins_equally_likely():
    from invfp.models.training import balanced_weights

    y = np.r_[np.zeros(90), np.ones(10)]
    w = balanced_weights(y, 1.0, bins=2)
    assert w.sum() == pytest.approx(1) and w[:90].sum() == pytest.approx(0.5)
    w = balanced_weights(y, 0.5, bins=2)
    assert w[:90].sum() / w[90:].sum() == pytest.approx(3.0)  # 90^0.5 / 10^0.5
    np.testing.assert_allclose(balanced_weights(y, 0.0), np.full(100, 0.01))


def test_cvae_balanced_and_all_layer_conditioning_train_and_round_trip(data, fitted, tmp_path):
    R, y = data
    _, _, sur, _ = fitted
    cvae = CVAE(**FAST_CVAE, balance=1.0, condition="all")
    report = cvae.fit(R, y, seed=0)
    assert report["best_val_loss"] < 0.5 * report["history"]["val_loss"][0]
    high = sur.predict(cvae.sample(2.5, 400, seed=0))
    assert abs(np.median(high) - 2.5) < 0.3
    cvae.save(tmp_path / "c")
    np.testing.assert_array_equal(CVAE.load(tmp_path / "c").sample(2.0, 20, seed=1), cvae.sample(2.0, 20, seed=1))


def test_cvae_conditional_prior_learns_where_each_property_lives(data, fitted, tmp_path):
    import torch

    R, y = data
    _, _, sur, _ = fitted
    cvae = CVAE(**FAST_CVAE, prior="conditional")
    report = cvae.fit(R, y, seed=0)
    assert report["best_val_loss"] < 0.5 * report["history"]["val_loss"][0]
    for target in (1.5, 2.5):
        assert abs(np.median(sur.predict(cvae.sample(target, 400, seed=0))) - target) < 0.3
    # the prior's mean follows the encoder's latents of the training data: it moves with y
    with torch.no_grad():
        ys = torch.tensor([[-1.0], [1.0]], dtype=cvae.dtype)
        mu, _ = cvae.net.prior_params(ys)
    assert float((mu[0] - mu[1]).norm()) > 0.1
    # at temperature -> 0 every sample decodes the prior's mean, not z = 0
    cold = cvae.sample(2.0, 50, seed=2, temperature=1e-6)
    with torch.no_grad():
        yc = torch.full((1, 1), float(cvae.y_scaler.transform(2.0)), dtype=cvae.dtype)
        mean = cvae.scaler.inverse_transform(cvae.net.decode(cvae.net.prior_params(yc)[0], yc).double().numpy())
    np.testing.assert_allclose(cold, np.repeat(mean, 50, axis=0), rtol=1e-4, atol=1e-5)
    cvae.save(tmp_path / "cp")
    np.testing.assert_array_equal(CVAE.load(tmp_path / "cp").sample(2.0, 20, seed=1), cvae.sample(2.0, 20, seed=1))


def _rewrite_weights(directory: Path, tensors: dict) -> None:
    """Replace the weights and fix the checksum, as a deliberate tamperer would."""
    from safetensors.torch import save_file

    save_file(tensors, str(directory / io.WEIGHTS_FILE))
    config = json.loads((directory / "config.json").read_text())
    config["weights"]["sha256"] = io._sha256(directory / io.WEIGHTS_FILE)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "does not exist"),
        ("no-config", "config.json is missing"),
        ("bad-json", "not valid JSON"),
        ("no-weights", "is missing"),
        ("truncated", "checksum"),
        ("shape", "has shape"),
        ("dtype", "dtype"),
        ("extra", "unexpected"),
        ("params", "incomplete or invalid"),
        ("kind", "not a 'cvae' model"),
    ],
)
def test_damaged_model_directory_raises_model_load_error(fitted, tmp_path, damage, message):
    import torch
    from safetensors.torch import load_file

    cvae, _, sur, _ = fitted
    d = tmp_path / "m"
    (sur if damage == "kind" else cvae).save(d)
    weights = d / io.WEIGHTS_FILE
    if damage == "missing":
        d = tmp_path / "absent"
    elif damage == "no-config":
        (d / "config.json").unlink()
    elif damage == "bad-json":
        (d / "config.json").write_text('{"format": "invfp-model", ')
    elif damage == "no-weights":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage in ("shape", "dtype", "extra"):
        tensors = load_file(str(weights))
        name = sorted(tensors)[0]
        if damage == "shape":
            tensors[name] = torch.zeros(3, 3)
        elif damage == "dtype":
            tensors[name] = tensors[name].double()
        else:
            tensors["backdoor"] = torch.zeros(1)
        _rewrite_weights(d, tensors)
    elif damage == "params":
        config = json.loads((d / "config.json").read_text())
        config["params"]["hidden"] = -1
        (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        CVAE.load(d)


def test_nan_in_training_data_is_a_clear_error(data):
    R, y = data
    R = R.copy()
    R[7, 3] = np.nan
    with pytest.raises(InputError, match=r"NaN or infinite values in 1 row\(s\) \(first: row 7\)"):
        CVAE(**FAST_CVAE).fit(R, y)
    with pytest.raises(InputError, match="property values"):
        Surrogate(**FAST_SUR).fit(data[0], np.where(np.arange(len(y)) == 2, np.inf, y))
    with pytest.raises(InputError, match="one value per row"):
        CVAE().fit(data[0], y[:-1])


def test_target_outside_training_range_warns_by_how_much(fitted):
    cvae, *_ = fitted
    lo, hi = cvae.y_range
    with pytest.warns(TargetOutOfRangeWarning, match=r"target .* is 0\.5 above the training range"):
        cvae.sample(hi + 0.5, 3, seed=0)
    with pytest.warns(TargetOutOfRangeWarning, match="below"):
        cvae.sample(lo - 0.25, 3, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cvae.sample((lo + hi) / 2, 3, seed=0)
    with pytest.raises(InputError, match="integer >= 1"):
        cvae.sample(2.0, 0)


def test_surrogate_rejects_fingerprints_of_another_dimension(fitted):
    _, _, sur, _ = fitted
    with pytest.raises(InputError, match=r"shape \[n, 12\]"):
        sur.predict(np.zeros((3, 11)))


def test_scaler_round_trip_floor_and_constant_features():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(5, 2, 50), rng.normal(1e-6, 1e-9, 50), np.full(50, 3.0)])
    for method in ("standard", "minmax", "none"):
        s = FeatureScaler(method).fit(X)
        Z = s.transform(X)
        np.testing.assert_allclose(s.inverse_transform(Z), X, rtol=1e-12, atol=1e-15)
        assert np.all(Z[:, 2] == 0) and list(s.constant) == [False, False, True]
        back = FeatureScaler.from_dict(json.loads(json.dumps(s.to_dict())))
        np.testing.assert_array_equal(back.transform(X), Z)
    # the tiny feature is not blown up to unit spread: its scale is floored at 1 % of the
    # root-mean-square scale of the non-constant features
    s = FeatureScaler("standard").fit(X)
    rms = np.sqrt((X[:, 0].std() ** 2 + X[:, 1].std() ** 2) / 2)
    assert s.scale[1] == pytest.approx(0.01 * rms, rel=1e-9)
    assert FeatureScaler("standard", floor=0).fit(X).scale[1] == pytest.approx(X[:, 1].std())
    assert FeatureScaler("standard").fit(X).inverse_transform(np.ones((1, 3)))[0, 2] == 3.0


def test_bundle_round_trip_and_representation_check(fitted, tmp_path):
    cvae, _, sur, _ = fitted
    rep = {"name": "acsf", "preset": "fung2022", "cutoff": 20.0, "pooling": ("max", "min")}
    io.save_bundle(tmp_path / "b", generator=cvae, surrogate=sur, representation_config=rep,
                   property="energy", units="eV/atom", data_summary={"source": "synthetic", "n": 240})
    bundle = io.load_bundle(tmp_path / "b", representation_config=rep)
    assert bundle.property == "energy" and bundle.units == "eV/atom" and bundle.dimension == 12
    assert bundle.y_range == pytest.approx(cvae.y_range) and bundle.data_summary["n"] == 240
    np.testing.assert_array_equal(bundle.generator.sample(2.0, 5, seed=1), cvae.sample(2.0, 5, seed=1))
    with pytest.raises(ModelLoadError, match=r"another representation \(differs in: cutoff\)"):
        io.load_bundle(tmp_path / "b", representation_config={**rep, "cutoff": 6.0})
    with pytest.raises(ModelLoadError, match="does not exist"):
        io.load_bundle(tmp_path / "nope")
    (tmp_path / "b" / "surrogate" / io.WEIGHTS_FILE).write_bytes(b"\0" * 64)
    with pytest.raises(ModelLoadError, match="checksum"):
        io.load_bundle(tmp_path / "b")


def test_failed_save_leaves_the_previous_directory_intact(fitted, tmp_path):
    cvae, _, sur, _ = fitted
    cvae.save(tmp_path / "m")
    before = (tmp_path / "m" / "config.json").read_text()

    class Broken(Surrogate):
        def save(self, directory):
            Path(directory).mkdir()
            (Path(directory) / "half").write_text("x")
            raise OSError("disk full")

    broken = Broken(**FAST_SUR)
    broken.__dict__.update(sur.__dict__)
    with pytest.raises(OSError, match="disk full"):
        io.save_bundle(tmp_path / "m", generator=cvae, surrogate=broken, representation_config={}, property="e")
    assert (tmp_path / "m" / "config.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary left behind


def test_cli_generate_and_score_a_bundle(fitted, tmp_path):
    from typer.testing import CliRunner

    from invfp.cli.app import app

    cvae, _, sur, _ = fitted
    io.save_bundle(tmp_path / "b", generator=cvae, surrogate=sur, representation_config={"name": "x"},
                   property="energy", units="eV/atom")
    runner = CliRunner()
    out = tmp_path / "R.npy"
    res = runner.invoke(app, ["generate", str(tmp_path / "b"), "--target", "2.0", "--n", "50", "--seed", "3",
                              "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.load(out), cvae.sample(2.0, 50, seed=3))
    res = runner.invoke(app, ["score", str(tmp_path / "b"), str(out), "--target", "2.0", "--json"])
    assert res.exit_code == 0, res.output
    scored = json.loads(res.stdout)
    err = np.abs(sur.predict(np.load(out)) - 2.0)
    assert scored["mae"] == pytest.approx(err.mean()) and scored["within_delta"] == pytest.approx((err <= 0.1).mean())
    # .csv in and out: the same samples and predictions as .npy
    csv = tmp_path / "R.csv"
    res = runner.invoke(app, ["generate", str(tmp_path / "b"), "--target", "2.0", "--n", "50", "--seed", "3",
                              "-o", str(csv)])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.loadtxt(csv, delimiter=","), np.load(out))
    res = runner.invoke(app, ["score", str(tmp_path / "b"), str(csv), "-o", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(np.loadtxt(tmp_path / "p.csv"), sur.predict(np.load(out)), rtol=1e-12)
    res = runner.invoke(app, ["generate", str(tmp_path / "b"), "-t", "9.0", "--n", "2", "-o", str(out)])
    assert res.exit_code == 0 and "above the training range" in res.output
    res = runner.invoke(app, ["generate", str(tmp_path / "b"), "-t", "2.0", "--n", "20", "--seed", "3",
                              "--temperature", "0.5", "-o", str(out)])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.load(out), cvae.sample(2.0, 20, seed=3, temperature=0.5))
    res = runner.invoke(app, ["generate", str(tmp_path / "b"), "-t", "2.0", "--temperature", "0", "-o", str(out)])
    assert res.exit_code != 0 and "--temperature must be a finite number > 0" in res.output
