"""Small shared helpers: progress bars, atomic writes, device and seed handling."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from invfp.errors import ConfigError, InputError


@contextlib.contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (M/N done, elapsed, time left); yields ``advance(n)``.

    Disabled (a no-op) when ``enabled`` is false or when stderr is not a terminal and
    ``INVFP_PROGRESS`` is not set to ``1``, so logs and tests stay clean.
    """
    show = enabled and (sys.stderr.isatty() or os.environ.get("INVFP_PROGRESS") == "1")
    if not show:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Check, without creating anything, that ``path`` can be written; raise InputError if not.

    Commands call it before expensive work so that a bad ``-o`` fails at once, not
    after an hour of training. The nearest existing ancestor must be a directory we
    may write to (a path under a regular file is the usual mistake).
    """
    path = Path(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(
            f"cannot write {path}: {ancestor} is a file, not a directory; choose an output path in a directory"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {path}: directory {ancestor} is not writable; choose another output path")
    return path


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Write a file atomically: ``write(tmp_path)`` then rename over ``path``.

    A crash or an exception leaves either the old file or nothing, never half a file.
    """
    path = check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        # mkstemp creates 0600; give the final file the mode a plain open() would have
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once at import: os.umask is process-global, so toggling it later would race with threads
_UMASK = _read_umask()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write text atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda p: p.write_text(text))


def require_file(path: Path) -> None:
    """InputError unless ``path`` is an existing file; a directory is named as such."""
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a file; give the path of the file itself")
    if not path.is_file():
        raise InputError(f"{path}: no such file")


def read_npy(path: str | os.PathLike[str]) -> Any:
    """Read a numeric ``.npy`` array; never unpickles; InputError naming the problem otherwise."""
    import numpy as np

    path = Path(path)
    require_file(path)
    with path.open("rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        raise InputError(f"{path} is not a .npy file (no NumPy header); save the array with numpy.save")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):  # object arrays: loading would run pickle, so never
            raise InputError(f"{path} holds Python objects, not numbers; invfp never unpickles: save a numeric array") from exc
        raise InputError(f"{path} is damaged or truncated ({exc}); write it again") from exc
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{path} holds {array.dtype} values, not real numbers; save a float array")
    return array


ARRAY_FORMATS = {".npy": "npy", ".csv": "csv"}
"""Array files the CLI reads and writes: NumPy's .npy, or comma-separated text (one row per line)."""


def check_array_output(path: str | os.PathLike[str], *, ndim: int | None = None) -> str:
    """Check an array output path; its format, ``"npy"`` or ``"csv"`` (by the suffix).

    Commands call it on ``-o`` before any work, so that a wrong suffix is refused at once
    instead of NumPy's binary format being written under a ``.csv`` name.

    Raises:
        ConfigError: any other suffix, or CSV for an array of more than 2 dimensions.
        InputError: a path that cannot be written (see :func:`check_output_path`).
    """
    path = Path(path)
    fmt = ARRAY_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{str(path)!r}: write arrays to .npy (NumPy) or .csv (comma-separated text)")
    if fmt == "csv" and ndim is not None and ndim > 2:
        raise ConfigError(f"{str(path)!r}: a {ndim}-D array (per-atom features) does not fit a CSV table; write .npy")
    check_output_path(path)
    return fmt


def read_array(path: str | os.PathLike[str], what: str = "arrays") -> Any:
    """A numeric array from ``.npy`` (:func:`read_npy`) or comma-separated ``.csv`` (at least 2-D).

    ``what`` names the content in errors (``"fingerprints"``).
    """
    import numpy as np

    path = Path(path)
    require_file(path)
    fmt = ARRAY_FORMATS.get(path.suffix.lower())
    if fmt == "npy":
        return read_npy(path)
    if fmt != "csv":
        raise InputError(f"{str(path)!r}: {what} must be a .npy array or a comma-separated .csv")
    fix = "write one row per line, the same number of comma-separated numbers on each"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # NumPy's "input contained no data": refused below
            array = np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError as exc:
        reason = str(exc).split("; use `usecols`")[0]  # NumPy's hint names its own API, not this file's fix
        raise InputError(f"cannot read {what} from {str(path)!r}: {reason}; {fix}") from exc
    if array.size == 0:
        raise InputError(f"{str(path)!r} holds no numbers; {fix}")
    return array


def write_array(path: str | os.PathLike[str], array: Any) -> Path:
    """Write ``array`` atomically as .npy or comma-separated .csv (by the suffix; see :func:`check_array_output`)."""
    import numpy as np

    array = np.asarray(array)
    fmt = check_array_output(path, ndim=array.ndim)

    def write(tmp: Path) -> None:
        if fmt == "csv":  # full float64 precision, so reading it back gives the same numbers
            np.savetxt(tmp, np.atleast_1d(array), delimiter=",", fmt="%.17g")
        else:
            with tmp.open("wb") as fh:  # a handle: np.save would append ".npy" to the temp name
                np.save(fh, array, allow_pickle=False)

    return atomic_write(path, write)


def resolve_device(device: Any = None) -> Any:
    """A ``torch.device``: the one asked for, else CUDA when available, else CPU."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:0' or 'auto'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device; use 'cpu'")
    return dev


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """``seed`` as an int >= 0, or None; ConfigError for anything else.

    A float, a string or a negative number is a mistake, not a seed: taken as given it would
    be truncated (1.5 -> 1), wrapped or fail deep inside NumPy or torch.
    """
    import numpy as np

    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"{name} must be an integer >= 0 (or None for fresh entropy), got {seed!r}")
    return int(seed)


def make_generator(seed: int | None, device: Any = "cpu") -> Any:
    """A ``torch.Generator`` on ``device``, seeded (or from fresh entropy when None)."""
    import torch

    seed = check_seed(seed)
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    Reconstruction allocates and frees the same few-megabyte tensors thousands of times
    a second. By default glibc returns such blocks to the kernel (``mmap`` for the large
    ones, heap trimming for the rest) and each new one page-faults back in, zero-filled:
    about 1,000 page faults per objective call at 96 Pt10 members. Here blocks below
    32 MiB come from the heap and up to 1 GiB of freed heap is kept, so a process's
    memory stays near its peak while it works. Called where reconstruction runs; the
    first call decides for the process (cached). A no-op off glibc or with
    ``INVFP_KEEP_MEMORY=0``. Returns whether the setting is in effect.
    """
    if os.environ.get("INVFP_KEEP_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """While inside: this thread's CPU float math flushes denormal numbers to zero.

    Fingerprints multiply many small factors (exp(-eta r^2) of far neighbours, angle terms
    to the 64th power), whose products fall below 1.2e-38 in float32; arithmetic on such
    denormals is several times slower on x86, and their values (< 1e-38) are far below
    any feature's precision. On exit flushing is turned off again (torch's default);
    where the CPU cannot flush, nothing changes.
    """
    import torch

    flushing = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushing:
            torch.set_flush_denormal(False)


def read_structures(path: Any) -> list[Any]:
    """Every frame of a structure file ASE can read (``ase.Atoms`` list).

    Raises:
        InputError: the file is missing, unreadable, or holds no structures.
    """
    from ase.io import read

    path = Path(path)
    require_file(path)
    try:
        found = read(path, index=":")
    except Exception as exc:  # noqa: BLE001 - ASE raises many types for unreadable files
        raise InputError(f"{path}: ASE cannot read it ({type(exc).__name__}: {exc})") from exc
    if not found:
        raise InputError(f"{path}: no structures found (is it a structure file ASE can read?)")
    return list(found)
