"""Files that ``parconv run`` writes: ``.npz`` arrays that keep their dtype, and checks of
output paths made before a run starts.

numpy's ``.npz`` cannot describe ``bfloat16`` (an :mod:`ml_dtypes` type): ``np.savez``
stores it as raw 2-byte records that ``np.load`` returns as ``|V2``, unusable. Here such
an array is stored as ``float32`` (every ``bfloat16`` value is exactly a ``float32``, so
nothing is rounded) under its own name, with a ``<name>.dtype`` entry holding the dtype's
name. Plain ``np.load`` therefore gives a usable ``float32`` array with the same values;
:func:`load_npz` also restores the ``bfloat16`` dtype (bit-exact).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

#: Suffix of the entry recording an array's original dtype (``"input.dtype"``).
DTYPE_SUFFIX = ".dtype"


def npz_path(path: str | os.PathLike) -> Path:
    """The file ``np.savez`` writes for ``path`` (``.npz`` is appended when missing)."""
    p = Path(path)
    return p if p.name.endswith(".npz") else p.with_name(p.name + ".npz")


def _portable(arr: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(array ``np.load`` can read, original dtype name or None when unchanged)."""
    dt = arr.dtype
    if dt.kind != "V" or dt.names is not None:  # numpy's own types and structured arrays
        return arr, None
    import ml_dtypes

    if not hasattr(ml_dtypes, dt.name) or np.dtype(getattr(ml_dtypes, dt.name)) != dt:
        raise ValueError(f"cannot save dtype {dt} portably")
    return arr.astype(np.float32), dt.name


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez(path, **arrays)``, storing ``bfloat16`` (and other :mod:`ml_dtypes`)
    arrays as exact ``float32`` plus a ``<name>.dtype`` entry.

    Returns
    -------
    Path
        The file written (:func:`npz_path`).

    Raises
    ------
    ValueError
        For a name ending in ``.dtype`` or an unknown record dtype.
    """
    out: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        if name.endswith(DTYPE_SUFFIX):
            raise ValueError(f"array name {name!r} ends with {DTYPE_SUFFIX!r} (reserved)")
        arr = np.asarray(arr)
        stored, original = _portable(arr)
        out[name] = stored
        if original is not None:
            out[name + DTYPE_SUFFIX] = np.array(original)
    target = npz_path(path)
    np.savez(target, **out)
    return target


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a file written by :func:`save_npz` (or any ``.npz``), restoring recorded
    dtypes: ``bfloat16`` arrays come back as ``ml_dtypes.bfloat16``.

    Returns
    -------
    dict
        Array name -> array, without the ``<name>.dtype`` entries.
    """
    import ml_dtypes

    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    out = {}
    for name, arr in data.items():
        if name.endswith(DTYPE_SUFFIX) and name[: -len(DTYPE_SUFFIX)] in data:
            continue
        dt_entry = data.get(name + DTYPE_SUFFIX)
        if dt_entry is not None:
            dt_name = str(dt_entry)
            if not hasattr(ml_dtypes, dt_name):
                raise ValueError(f"{path}: {name}{DTYPE_SUFFIX} names an unknown dtype "
                                 f"{dt_name!r}")
            arr = arr.astype(getattr(ml_dtypes, dt_name))
        out[name] = arr
    return out


def check_output_path(path: str | os.PathLike, flag: str) -> None:
    """Refuse an output file that could not be written, before anything runs.

    The directory must exist and accept a new file (probed by creating and removing a
    temporary file, which also catches read-only mounts and root's ``os.access``), and
    an existing file must be a writable regular file. Every MPI rank can call this on
    the same path and reach the same verdict on a shared file system.

    Raises
    ------
    ValueError
        Naming ``flag``, the path and the reason.
    """
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    where = f"{flag} {path}"
    if p.is_dir():
        raise ValueError(f"{where}: is a directory")
    if not parent.exists():
        raise ValueError(f"{where}: directory {parent} does not exist")
    if not parent.is_dir():
        raise ValueError(f"{where}: {parent} is not a directory")
    if p.exists():
        try:
            with open(p, "ab"):  # appends nothing: the file is left as it is
                pass
        except OSError as exc:
            raise ValueError(f"{where}: not writable ({exc.strerror or exc})") from None
        return
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".parconv-probe-")
    except OSError as exc:
        raise ValueError(f"{where}: cannot create a file in {parent} "
                         f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
