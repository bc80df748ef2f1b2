"""The cache directory and cached featurization.

::

    from invfp.data import featurize, load
    R = featurize(load(), invfp.get_representation("acsf", preset="fung2022"))   # [n, D]

Fingerprints are stored in ``$INVFP_CACHE_DIR/features/<key>.npy`` (default cache
directory ``~/.cache/invfp``), the key being a hash of the data set's
:meth:`~invfp.data.Dataset.content_hash`, the representation's
:meth:`~invfp.representations.base.Representation.get_config`, its class and the
version of the package that provides it. Changing the data, the settings or the code
release computes them anew; equal inputs reuse the file. Files are written atomically
and a file that does not load (or has the wrong shape) is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from invfp.data.datasets import Dataset


def cache_dir() -> Path:
    """``$INVFP_CACHE_DIR``, else ``$XDG_CACHE_HOME/invfp``, else ``~/.cache/invfp``."""
    env = os.environ.get("INVFP_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "invfp"


def feature_key(dataset: Dataset, representation: Any) -> str:
    """The cache key of ``representation``'s fingerprints of ``dataset``."""
    cls = type(representation)
    record = {
        "data": dataset.content_hash(),
        "representation": representation.get_config(),
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "version": _provider_version(cls.__module__),
    }
    text = json.dumps(record, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _provider_version(module: str) -> str:
    """Version of the installed distribution that provides ``module`` ("" if unknown)."""
    from importlib import metadata

    top = module.split(".")[0]
    if top == "invfp":
        from invfp import __version__

        return __version__
    for dist in metadata.packages_distributions().get(top, []):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return ""


def featurize(
    dataset: Dataset,
    representation: Any,
    *,
    cache: bool = True,
    progress: bool = False,
    device: Any = None,
) -> np.ndarray:
    """Fingerprints ``[n, D]`` of every frame of ``dataset``, cached on disk.

    Args:
        dataset: the structures (:class:`~invfp.data.Dataset`).
        representation: any :class:`~invfp.representations.base.Representation`.
        cache: read and write the on-disk cache (False: always compute, store nothing).
        progress: show a progress bar while computing.
        device: where to compute (default: CUDA when available, else CPU).

    Returns:
        ``[n, D]`` NumPy array, row ``i`` the fingerprint of ``dataset.atoms[i]``.
    """
    from invfp.utils import resolve_device, write_array

    path = cache_dir() / "features" / f"{feature_key(dataset, representation)}.npy" if cache else None
    if path is not None and path.exists():
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # truncated or foreign file: recompute it
            values = None
        if values is not None and values.ndim == 2 and len(values) == len(dataset):
            return values
    values = np.asarray(
        representation.featurize(dataset.atoms, progress=progress, device=resolve_device(device))
    ).reshape(len(dataset), -1)
    if path is not None:
        write_array(path, values)
    return values
