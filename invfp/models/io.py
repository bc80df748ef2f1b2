"""Safe saving and loading of models and bundles: safetensors + JSON, written atomically.

Two layers, both reusable by model plugins:

**A model directory** (one fitted model)::

    model_dir/
      config.json           {"format": "invfp-model", "kind": ..., "params": ..., "dimension": D,
                             "weights": {"file": ..., "sha256": ...}, "versions": ..., <model keys>}
      weights.safetensors   the network's tensors (no pickle anywhere)

:func:`save_model_dir` writes one atomically; :func:`load_model_dir` reads it back and
raises :class:`~invfp.errors.ModelLoadError` for a missing directory, a missing file, bad
JSON, another model kind, a weights file whose checksum does not match (truncated or
edited) or one safetensors cannot parse. :func:`load_state` then checks every tensor's
name, shape and dtype against the freshly built network before loading it.

**A bundle** (what ``invfp train`` writes and ``invfp generate`` / the engine read)::

    bundle_dir/
      bundle.json   representation config, property name and units, y range, D, data summary
      generator/    a model directory of any registered model kind (cvae, plugins ...)
      surrogate/    a model directory of :class:`~invfp.models.surrogate.Surrogate`

Directories are written into a temporary directory beside the target and renamed into
place, so an interrupted save leaves the old directory or none, never half a model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invfp.errors import InvfpError, ModelLoadError
from invfp.utils import check_output_path

if TYPE_CHECKING:
    import torch

    from invfp.models.base import GenerativeModel
    from invfp.models.surrogate import Surrogate

MODEL_FORMAT = "invfp-model"
BUNDLE_FORMAT = "invfp-bundle"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
BUNDLE_FILE = "bundle.json"


def versions() -> dict[str, str]:
    """Versions of invfp, torch, NumPy and Python, recorded in every saved config."""
    import numpy as np
    import torch

    from invfp import __version__

    return {
        "invfp": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``directory`` on success.

    On an exception the temporary directory is removed and ``directory`` is untouched.
    An existing ``directory`` is moved aside, replaced, then deleted: at no moment does
    ``directory`` hold a mixture of old and new files.
    """
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ModelLoadError(f"cannot save a model to {target}: a file of that name exists; choose another path")
    check_output_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "previous")
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def save_model_dir(
    directory: str | os.PathLike[str],
    *,
    kind: str,
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
) -> Path:
    """Write ``config.json`` + ``weights.safetensors`` into ``directory`` atomically.

    Args:
        directory: the model directory (created or replaced).
        kind: the registered model kind (``"cvae"``, ``"surrogate"``, a plugin's name).
        config: JSON-serialisable model description: at least ``params`` and
            ``dimension``; the scaler statistics and anything the model needs to rebuild.
        tensors: the network's ``state_dict()`` (copied to CPU, made contiguous).

    Returns:
        The directory path.
    """
    from safetensors.torch import save_file

    weights = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    with atomic_directory(directory) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE))
        full = {
            "format": MODEL_FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            **{k: v for k, v in config.items() if k not in ("format", "format_version", "kind", "weights")},
            "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(tmp / WEIGHTS_FILE)},
            "versions": versions(),
        }
        try:
            _write_json(tmp / CONFIG_FILE, full)
        except (TypeError, ValueError) as exc:
            raise InvfpError(f"model config of {kind!r} is not JSON-serialisable: {exc}") from exc
    return Path(directory)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON object; a missing file or bad JSON raises ModelLoadError naming ``what``."""
    if not path.is_file():
        raise ModelLoadError(f"{what} {path.parent} is incomplete: {path.name} is missing; save or train it again")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{what} {path.parent}: {path.name} is not valid JSON ({exc}); save or train it again") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{what} {path.parent}: {path.name} does not hold a JSON object; save or train it again")
    return data


def read_model_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a model directory, checked for format and version."""
    path = Path(directory)
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist; train a model first or check the path")
    config = read_json(path / CONFIG_FILE, "model directory")
    if config.get("format") != MODEL_FORMAT:
        raise ModelLoadError(f"{path} is not an invfp model directory (config.json has no format {MODEL_FORMAT!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path} was saved in model format version {config.get('format_version')!r}; this invfp reads "
            f"version {FORMAT_VERSION}: retrain the model with this version"
        )
    return config


def load_model_dir(
    directory: str | os.PathLike[str], *, kind: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a directory written by :func:`save_model_dir`; never unpickles.

    Args:
        directory: the model directory.
        kind: if given, the model kind the caller expects.

    Returns:
        ``(config, tensors)``, tensors on the CPU.

    Raises:
        ModelLoadError: missing or incomplete directory, bad JSON, another kind, a
            checksum mismatch (truncated or edited weights) or unreadable weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory)
    config = read_model_config(path)
    if kind is not None and config.get("kind") != kind:
        raise ModelLoadError(f"{path} holds a {config.get('kind')!r} model, not a {kind!r} model")
    weights = config.get("weights")
    if not isinstance(weights, dict) or not isinstance(weights.get("file"), str):
        raise ModelLoadError(f"{path}: config.json names no weights file; save or train it again")
    file = path / weights["file"]
    if file.parent != path or not file.is_file():
        raise ModelLoadError(f"model directory {path} is incomplete: {weights['file']} is missing")
    if weights.get("sha256") != _sha256(file):
        raise ModelLoadError(
            f"{file} does not match the checksum in config.json (truncated or modified); save or train it again"
        )
    try:
        tensors = load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{file} cannot be read as safetensors: {exc}") from exc
    return config, tensors


def load_state(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], directory: str | os.PathLike[str]) -> None:
    """Load ``tensors`` into ``module`` after checking names, shapes and dtypes exactly.

    Raises:
        ModelLoadError: a tensor is missing, unexpected, or differs in shape or dtype.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelLoadError(
            f"weights in {directory} do not fit the configured network "
            f"(missing: {missing[:3] or 'none'}, unexpected: {extra[:3] or 'none'}); the directory was tampered with"
        )
    for name, ref in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(ref.shape) or got.dtype != ref.dtype:
            raise ModelLoadError(
                f"weights in {directory}: {name} has shape {tuple(got.shape)} and dtype {got.dtype}, the "
                f"config says {tuple(ref.shape)} {ref.dtype}; the directory was tampered with"
            )
    module.load_state_dict(dict(tensors), strict=True)


def model_class(kind: str) -> type[GenerativeModel]:
    """The class of a registered generative-model kind (built-in or plugin)."""
    from invfp.errors import UnknownComponentError
    from invfp.plugins import get_registry

    try:
        entry = get_registry().get("model", kind)
    except UnknownComponentError as exc:
        raise ModelLoadError(f"the saved generator is of kind {kind!r}, which is not installed: {exc}") from exc
    factory = entry.factory
    return factory if isinstance(factory, type) else type(factory())


def load_model(directory: str | os.PathLike[str]) -> GenerativeModel:
    """Load a generative model of whatever registered kind ``config.json`` names."""
    config = read_model_config(directory)
    kind = config.get("kind")
    if not isinstance(kind, str):
        raise ModelLoadError(f"{directory}: config.json names no model kind; save or train it again")
    return model_class(kind).load(directory)


@dataclasses.dataclass
class Bundle:
    """A trained generator + surrogate and what they were trained on."""

    generator: GenerativeModel
    surrogate: Surrogate
    representation_config: dict[str, Any]
    """``Representation.get_config()`` of the fingerprints the models were trained on."""
    property: str
    units: str
    y_range: tuple[float, float]
    """Smallest and largest training property value."""
    dimension: int
    """Fingerprint dimension D."""
    data_summary: dict[str, Any]
    path: Path | None = None
    versions: dict[str, str] = dataclasses.field(default_factory=dict)


def _normalise(config: Any) -> Any:
    """A config as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(config, sort_keys=True))


def save_bundle(
    directory: str | os.PathLike[str],
    *,
    generator: GenerativeModel,
    surrogate: Surrogate,
    representation_config: Mapping[str, Any],
    property: str,
    units: str = "",
    data_summary: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``generator/``, ``surrogate/`` and ``bundle.json`` into ``directory`` atomically.

    Args:
        directory: the bundle directory (created or replaced).
        generator: a fitted generative model (any kind).
        surrogate: a fitted surrogate trained on the same fingerprints.
        representation_config: ``representation.get_config()``.
        property: the property name (e.g. ``"formation_energy"``).
        units: its units (e.g. ``"eV/atom"``).
        data_summary: JSON-serialisable facts about the training data (source, n, ...).
    """
    gen_dim = getattr(generator, "dimension", None)
    if gen_dim is not None and gen_dim != surrogate.dimension:
        raise InvfpError(
            f"generator (D={gen_dim}) and surrogate (D={surrogate.dimension}) were trained on different fingerprints"
        )
    y_range = getattr(generator, "y_range", None) or surrogate.y_range
    meta = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "generator": {"kind": generator.name, "path": "generator"},
        "surrogate": {"kind": "surrogate", "path": "surrogate"},
        "representation": _normalise(dict(representation_config)),
        "property": property,
        "units": units,
        "y_range": [float(y_range[0]), float(y_range[1])],
        "dimension": int(surrogate.dimension),
        "data_summary": _normalise(dict(data_summary or {})),
        "versions": versions(),
    }
    with atomic_directory(directory) as tmp:
        generator.save(tmp / "generator")
        surrogate.save(tmp / "surrogate")
        _write_json(tmp / BUNDLE_FILE, meta)
    return Path(directory)


def load_bundle(
    directory: str | os.PathLike[str], *, representation_config: Mapping[str, Any] | None = None
) -> Bundle:
    """Load a bundle written by :func:`save_bundle`.

    Args:
        directory: the bundle directory.
        representation_config: if given, the representation the caller will use; a
            bundle trained on another representation raises.

    Raises:
        ModelLoadError: missing, incomplete or tampered directory, an uninstalled model
            kind, or another representation.
    """
    from invfp.models.surrogate import Surrogate

    path = Path(directory)
    if path.is_file():
        raise ModelLoadError(
            f"{path} is a file, not a model bundle (the directory `invfp train -o DIR` writes)"
        )
    if not path.is_dir():
        raise ModelLoadError(f"model bundle {path} does not exist; create it with `invfp train ... -o {path}`")
    meta = read_json(path / BUNDLE_FILE, "model bundle")
    if meta.get("format") != BUNDLE_FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path} is not an invfp model bundle of format version {FORMAT_VERSION}; train it again"
        )
    try:
        rep = meta["representation"]
        prop, units, dim = str(meta["property"]), str(meta["units"]), int(meta["dimension"])
        y_range = (float(meta["y_range"][0]), float(meta["y_range"][1]))
        gen_path = path / str(meta["generator"]["path"])
        sur_path = path / str(meta["surrogate"]["path"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelLoadError(f"{path}/{BUNDLE_FILE} is incomplete ({type(exc).__name__}: {exc}); train it again") from exc
    for part in (gen_path, sur_path):
        if part.parent != path:  # a bundle loads only its own sub-directories, never "../elsewhere"
            raise ModelLoadError(
                f"{path}/{BUNDLE_FILE} points outside the bundle ({part.name!r} in {part.parent}); train it again"
            )
    if representation_config is not None and _normalise(dict(representation_config)) != rep:
        want = _normalise(dict(representation_config))
        diff = sorted(k for k in set(want) | set(rep) if want.get(k) != rep.get(k))
        raise ModelLoadError(
            f"bundle {path} was trained on another representation (differs in: {', '.join(diff)}); "
            "use the representation it was trained with or train a new bundle"
        )
    generator = load_model(gen_path)
    surrogate = Surrogate.load(sur_path)
    for what, model in (("generator", generator), ("surrogate", surrogate)):
        got = getattr(model, "dimension", dim)
        if got != dim:
            raise ModelLoadError(f"bundle {path}: the {what} has D={got} but bundle.json says D={dim}; tampered")
    return Bundle(
        generator=generator,
        surrogate=surrogate,
        representation_config=rep,
        property=prop,
        units=units,
        y_range=y_range,
        dimension=dim,
        data_summary=meta.get("data_summary", {}),
        path=path,
        versions=meta.get("versions", {}),
    )
