"""Thread settings of the local kernels.

One thread per rank is the default (MPI ranks fill the cores). A threaded run is asked
for with ``threads=N`` on :func:`parconv.conv2d` / :func:`parconv.kernels.conv2d_window`
or with the environment variable ``PARCONV_THREADS=N``; the call then splits its output
blocks over ``N`` Python worker threads. Every numba kernel is compiled with
``nogil=True`` and numpy's BLAS releases the GIL, so the workers run in parallel.

No nested parallelism: numba's own thread pool is not used (no ``parallel=True``
kernels, so ``NUMBA_NUM_THREADS`` does not matter) and, while a kernel call runs, numpy's
OpenBLAS is held at one thread per worker (set through its ``*_set_num_threads`` entry
point when it can be found, restored afterwards), so ``N`` workers use ``N`` cores even
if ``OPENBLAS_NUM_THREADS`` is unset. ``launch/env.sh`` also pins OMP/OpenBLAS/MKL/numba
to one thread.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np

from .blas import GET_THREADS, SET_THREADS

ENV_VAR = "PARCONV_THREADS"


def resolve_threads(threads: int | None = None) -> int:
    """Worker threads for one kernel call: ``threads``, else ``$PARCONV_THREADS``, else 1.

    Raises
    ------
    ValueError
        If the value is not a positive integer.
    """
    source = "threads"
    if threads is None:
        text = os.environ.get(ENV_VAR, "").strip()
        if not text:
            return 1
        source = ENV_VAR
        try:
            threads = int(text)
        except ValueError:
            raise ValueError(f"{ENV_VAR}={text!r} is not an integer") from None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"{source} must be a positive integer, got {threads!r}")
    return int(threads)


_OPENBLAS = (GET_THREADS, SET_THREADS) if GET_THREADS is not None else None


def blas_threads() -> int | None:
    """Current thread count of numpy's OpenBLAS, or None when it cannot be queried."""
    return int(_OPENBLAS[0]()) if _OPENBLAS else None


@contextmanager
def single_threaded_blas():
    """Hold numpy's OpenBLAS at one thread inside the block (no-op if not found)."""
    if _OPENBLAS is None:
        yield
        return
    get_fn, set_fn = _OPENBLAS
    before = int(get_fn())
    if before != 1:
        set_fn(1)
    try:
        yield
    finally:
        if before != 1:
            set_fn(before)
