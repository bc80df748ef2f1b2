"""Untrusted model directories: loading never runs code, and damage is a clear ModelLoadError.

tests/test_models.py covers the ordinary damage (missing files, bad JSON, a truncated
weights file, a tensor of another shape or dtype, an extra tensor, invalid parameters,
another kind). Here: weights that are a pickle which would create a marker file when
unpickled (as ``weights.safetensors``, as a torch checkpoint, left beside the model, in
a bundle, through ``invfp generate``): loading raises and the marker never appears;
edited (not truncated) bytes; a forged checksum over a broken header; config.json with
shapes that do not fit the weights, non-finite scaler statistics, an unknown kind, a
weights file outside the directory; bundle.json pointing outside the bundle.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from invfp import testing
from invfp.errors import ModelLoadError
from invfp.models import io
from invfp.models.cvae import CVAE
from invfp.models.surrogate import Surrogate


class _Payload:
    """Unpickling this calls ``Path(marker).touch()``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A saved cVAE, a saved surrogate and a bundle of both (tiny)."""
    R, y = testing.synthetic_fingerprints(60, 6, seed=2)
    generator = CVAE(epochs=2, hidden=8, latent=2, batch_size=16)
    generator.fit(R, y, seed=0)
    surrogate = Surrogate(epochs=2, hidden=8, layers=1, batch_size=16)
    surrogate.fit(R, y, seed=0)
    d = tmp_path_factory.mktemp("models")
    generator.save(d / "cvae")
    io.save_bundle(d / "bundle", generator=generator, surrogate=surrogate,
                   representation_config={"name": "test"}, property="y")
    return d


@pytest.fixture
def copy(models, tmp_path):
    def make(name: str) -> Path:
        return Path(shutil.copytree(models / name, tmp_path / name))

    return make


def _forge_checksum(model_dir: Path, file: str = io.WEIGHTS_FILE) -> None:
    """Point config.json at ``file`` with its true sha256, as a deliberate attacker would."""
    config = json.loads((model_dir / "config.json").read_text())
    config["weights"] = {"file": file, "sha256": io._sha256(model_dir / file)}
    (model_dir / "config.json").write_text(json.dumps(config))


def _edit_config(model_dir: Path, edit) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    edit(config)
    (model_dir / "config.json").write_text(json.dumps(config))


def _pickle_as_weights(d: Path, marker: Path) -> None:
    (d / io.WEIGHTS_FILE).write_bytes(pickle.dumps({"net.0.weight": _Payload(marker)}))
    _forge_checksum(d)


def _torch_checkpoint_as_weights(d: Path, marker: Path) -> None:
    import torch

    torch.save({"net.0.weight": _Payload(marker)}, d / "weights.pt")
    _forge_checksum(d, "weights.pt")


def _pickle_beside_the_model(d: Path, marker: Path) -> None:
    for name in ("model.pkl", "model.pt", "weights.pkl"):
        (d / name).write_bytes(pickle.dumps(_Payload(marker)))


def _self_check_payload(tmp_path: Path) -> None:
    """The payload works: unpickling it does create the marker (so its absence means something)."""
    probe = tmp_path / "probe-marker"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()


@pytest.mark.parametrize(
    ("plant", "loads"),
    [
        pytest.param(_pickle_as_weights, False, id="pickle-named-weights.safetensors"),
        pytest.param(_torch_checkpoint_as_weights, False, id="torch-checkpoint-as-weights"),
        pytest.param(_pickle_beside_the_model, True, id="pickles-beside-the-model-are-ignored"),
    ],
)
def test_loading_never_unpickles(copy, tmp_path, plant, loads):
    _self_check_payload(tmp_path)
    marker = tmp_path / "code-ran"
    d = copy("cvae")
    plant(d, marker)
    if loads:
        assert CVAE.load(d).dimension == 6
    else:
        with pytest.raises(ModelLoadError, match="cannot be read as safetensors"):
            CVAE.load(d)
    with contextlib.nullcontext() if loads else pytest.raises(ModelLoadError):
        io.load_model(d)
    assert not marker.exists(), "loading a model directory ran code from a pickle"


def test_pickled_bundle_through_the_cli(copy, tmp_path, run_cli):
    marker = tmp_path / "code-ran"
    bundle = copy("bundle")
    _pickle_as_weights(bundle / "generator", marker)
    with pytest.raises(ModelLoadError, match="cannot be read as safetensors"):
        io.load_bundle(bundle)
    out = tmp_path / "R.npy"
    code, _, err = run_cli("generate", str(bundle), "--target", "2", "-o", str(out))
    assert code == 1 and err.count("\n") == 1 and "cannot be read as safetensors" in err
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("edited-byte", "does not match the checksum"),
        ("forged-checksum-broken-header", "cannot be read as safetensors"),
        ("forged-checksum-renamed-tensor", "do not fit the configured network"),
        ("header-claims-more-than-the-file", "cannot be read as safetensors"),
        ("config-hidden-changed", "has shape"),
        ("config-dimension-changed", "the scaler has 6 features but config.json says D=9"),
        ("config-nan-scaler", "incomplete or invalid"),
        ("config-unknown-kind", "not installed"),
        ("config-weights-outside", "is missing"),
        ("config-format-version", "format version"),
    ],
)
def test_tampered_model_directory(copy, damage, message):
    d = copy("cvae")
    weights = d / io.WEIGHTS_FILE
    raw = bytearray(weights.read_bytes())
    if damage == "edited-byte":
        raw[len(raw) // 2] ^= 0x01  # same length, one bit: only the checksum can tell
        weights.write_bytes(bytes(raw))
    elif damage == "forged-checksum-broken-header":
        raw[8] = ord("X")  # the header's opening brace: not JSON any more
        weights.write_bytes(bytes(raw))
        _forge_checksum(d)
    elif damage == "forged-checksum-renamed-tensor":
        start = raw.index(b'"', 8) + 1
        raw[start] = ord("X")  # the first tensor's name
        weights.write_bytes(bytes(raw))
        _forge_checksum(d)
    elif damage == "header-claims-more-than-the-file":
        weights.write_bytes((10**12).to_bytes(8, "little") + bytes(raw[8:]))
        _forge_checksum(d)
    elif damage == "config-hidden-changed":
        _edit_config(d, lambda c: c["params"].update(hidden=16))
    elif damage == "config-dimension-changed":
        _edit_config(d, lambda c: c.update(dimension=9))
    elif damage == "config-nan-scaler":
        config = json.loads((d / "config.json").read_text())
        config["scaler"]["scale"][0] = float("nan")
        (d / "config.json").write_text(json.dumps(config))  # json writes NaN, which Python reads back
    elif damage == "config-unknown-kind":
        _edit_config(d, lambda c: c.update(kind="evil"))
    elif damage == "config-weights-outside":
        _edit_config(d, lambda c: c["weights"].update(file="../cvae/weights.safetensors"))
    elif damage == "config-format-version":
        _edit_config(d, lambda c: c.update(format_version=99))
    loader = io.load_model if damage == "config-unknown-kind" else CVAE.load
    with pytest.raises(ModelLoadError, match=message):
        loader(d)


@pytest.mark.parametrize("where", ["../cvae", "/tmp", "generator/../../cvae"])
def test_bundle_json_cannot_point_outside_the_bundle(copy, where):
    copy("cvae")
    bundle = copy("bundle")
    meta = json.loads((bundle / io.BUNDLE_FILE).read_text())
    meta["generator"]["path"] = where
    (bundle / io.BUNDLE_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="points outside the bundle"):
        io.load_bundle(bundle)


def test_an_intact_copy_still_loads(copy):
    """The copies above fail because of the damage alone."""
    bundle = io.load_bundle(copy("bundle"))
    assert bundle.dimension == 6 and np.isfinite(bundle.generator.sample(2.0, 3, seed=0)).all()
