"""The flow plugin: likelihood training, conditioning, save/load, entry point, conformance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from invfp_flow.model import ConditionalFlow

from invfp.errors import ConfigError, InputError, InvfpError, ModelLoadError

SMALL = {"n_layers": 4, "hidden": 32, "epochs": 60, "batch_size": 64, "patience": None}


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """D = 5: x0 = 3y + noise, x1 = sin(2 x0) + noise, x2 ~ bimodal, x3 = const, x4 = 100 x2 + 5."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 1, n)
    x0 = 3 * y + 0.1 * rng.normal(size=n)
    x1 = np.sin(2 * x0) + 0.1 * rng.normal(size=n)
    x2 = rng.choice([-1.0, 1.0], n) + 0.2 * rng.normal(size=n)
    x3 = np.full(n, 7.0)
    x4 = 100 * x2 + 5 + rng.normal(size=n)
    return np.stack([x0, x1, x2, x3, x4], axis=1), y


@pytest.fixture(scope="module")
def fitted() -> tuple[ConditionalFlow, dict]:
    R, y = synthetic(1000, seed=0)
    model = ConditionalFlow(**SMALL)
    report = model.fit(R, y, seed=0, device="cpu")
    return model, report


def test_fit_lowers_held_out_nll(fitted):
    model, report = fitted
    R_test, y_test = synthetic(500, seed=1)
    untrained = ConditionalFlow(**{**SMALL, "epochs": 1, "lr": 1e-12})
    untrained.fit(*synthetic(1000, seed=0), seed=0)
    # the untrained flow is the identity: standard-normal NLL of standardized data, ~1.42 nats
    before = untrained.nll(R_test, y_test)
    after = model.nll(R_test, y_test)
    assert 1.2 < before < 1.6
    assert after < before - 0.5, (before, after)
    assert report["best_val_loss"] == pytest.approx(min(report["history"]["val_loss"]))
    # x3 is constant and x4 = 100 x2 + 5 + N(0, 1) duplicates x2: 3 components hold 99.9 %
    assert report["components"] == 3 and report["n_train"] == 900 and report["n_val"] == 100


def test_conditioning_moves_samples(fitted):
    model, _ = fitted
    lo = model.sample(0.2, 2000, seed=1)
    hi = model.sample(0.8, 2000, seed=1)
    # x0 = 3y + N(0, 0.1): the sample means follow the target
    assert lo[:, 0].mean() == pytest.approx(0.6, abs=0.1)
    assert hi[:, 0].mean() == pytest.approx(2.4, abs=0.1)
    assert lo[:, 0].std() == pytest.approx(0.1, abs=0.05)
    # x1 = sin(2 x0): about sin(1.2) = 0.93 at y = 0.2 and sin(4.8) = -1.0 at y = 0.8
    assert lo[:, 1].mean() > 0.4 and hi[:, 1].mean() < -0.4
    # the constant feature comes back exactly; the bimodal one keeps both modes
    assert np.all(lo[:, 3] == 7.0)
    assert 0.3 < (lo[:, 2] > 0).mean() < 0.7


def test_sample_is_seeded(fitted):
    model, _ = fitted
    np.testing.assert_array_equal(model.sample(0.5, 7, seed=3), model.sample(0.5, 7, seed=3))
    assert not np.array_equal(model.sample(0.5, 7, seed=3), model.sample(0.5, 7, seed=4))
    assert model.sample(0.5, 7, seed=3).shape == (7, 5)


def test_save_load_identical(fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path / "flow")
    loaded = ConditionalFlow.load(tmp_path / "flow")
    np.testing.assert_array_equal(loaded.sample(0.4, 50, seed=9), model.sample(0.4, 50, seed=9))
    assert loaded.dimension == 5 and loaded.y_range == model.y_range
    config = json.loads((tmp_path / "flow" / "config.json").read_text())
    assert config["kind"] == "flow"
    # a tampered weights file is refused, not unpickled or half-loaded
    (tmp_path / "flow" / "weights.safetensors").write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="checksum"):
        ConditionalFlow.load(tmp_path / "flow")


def test_bad_input(fitted):
    model, _ = fitted
    with pytest.raises(ConfigError, match="n_layers"):
        ConditionalFlow(n_layers=0)
    with pytest.raises(InvfpError, match="not fitted"):
        ConditionalFlow().sample(1.0, 3)
    with pytest.raises(InputError, match="NaN"):
        ConditionalFlow(**SMALL).fit(np.full((20, 3), np.nan), np.zeros(20))
    with pytest.raises(InputError, match="integer"):
        model.sample(0.5, 0)
    with pytest.raises(InputError, match="finite"):
        model.sample(float("nan"), 3)


def test_found_through_entry_point(clean_plugins):
    import invfp

    pytest.importorskip("invfp_flow")
    clean_plugins.load_entry_point_plugins("flow")
    entry = clean_plugins.get_registry().get("model", "flow")
    assert entry.plugin == "flow"
    model = invfp.get_model("flow", n_layers=2)
    assert isinstance(model, ConditionalFlow) and model.params["n_layers"] == 2


def test_conformance():
    from invfp import testing

    if not hasattr(testing, "check_model"):
        pytest.skip("invfp.testing.check_model is not available in this invfp")
    testing.check_model(ConditionalFlow(**{**SMALL, "epochs": 20}))
