"""Data: the built-in Pt10-EMT set, any ase.db/extxyz file, sampling and cached features.

The API the model, engine and reconstruction code build on::

    from invfp.data import load, featurize, furthest_point_sampling, train_val_split, make_dataset

    ds = load()                                  # built-in Pt10-EMT: ~33,800 frames, made once, cached
    ds = load("pt10-emt", size="small")          # ~500 frames, for tests and --quick runs
    ds = load("my.extxyz", property="energy", formula="Pt10")
    ds.atoms, ds.y, ds.numbers, ds.cell, ds.pbc, ds.units, len(ds), ds.subset(idx), ds.info()

    R = featurize(ds, representation)            # [n, D], cached on disk, keyed by data + config
    idx = furthest_point_sampling(R, 3000)       # deterministic, spread-out subset
    train, val = train_val_split(len(idx))       # 80:20

    make_dataset("pt10.db", formula="Pt10", relaxations=160, seed=0)   # resumable, all cores

- :func:`make_dataset` (``invfp.data.make``): random clusters relaxed with FIRE under
  an ASE calculator; every frame kept with ``formation_energy`` (eV/atom),
  ``relaxation``, ``step``, ``is_minimum``; resumable after any interruption.
- :func:`load`, :class:`Dataset` (``invfp.data.datasets``): one composition, one
  scalar property per frame; clear errors for missing keys and mixed compositions.
- :func:`featurize`, :func:`cache_dir` (``invfp.data.cache``): the cache directory is
  ``$INVFP_CACHE_DIR`` (default ``~/.cache/invfp``).
- :func:`furthest_point_sampling`, :func:`train_val_split` (``invfp.data.sampling``).
"""

from __future__ import annotations

from invfp.data.cache import cache_dir, featurize
from invfp.data.datasets import BUILTIN, Dataset, builtin_path, load, read_frames, text_histogram
from invfp.data.make import make_dataset
from invfp.data.sampling import furthest_point_sampling, train_val_split

__all__ = [
    "BUILTIN",
    "Dataset",
    "builtin_path",
    "cache_dir",
    "featurize",
    "furthest_point_sampling",
    "load",
    "make_dataset",
    "read_frames",
    "text_histogram",
    "train_val_split",
]
