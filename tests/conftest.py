"""Shared fixtures. The numba on-disk cache lives in NUMBA_CACHE_DIR (default
``<repo>/.numba_cache``), set before numba is imported so that MPI subprocesses load
the kernels compiled once here instead of compiling them on every rank."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba_cache"))


@pytest.fixture(scope="session")
def warm_numba() -> None:
    """Compile (or load from the cache) the local kernel for every precision preset, with
    the argument types the runtime passes, once per session."""
    import numpy as np

    from parconv.dtypes import PRESETS, numpy_dtype
    from parconv.kernels import warmup
    from parconv.runtime.execute import default_kernel

    warmup()
    kernel = default_kernel()
    for prec in PRESETS.values():
        x = np.ones((1, 2, 4, 4), numpy_dtype(prec.input))
        w = np.ones((2, 2, 3, 3), numpy_dtype(prec.filter))
        out = np.zeros((1, 2, 2, 2), numpy_dtype(prec.accum))
        kernel(x, w, out, (1, 1), (1, 1), (0, 0))
        assert float(out.ravel()[0]) == 18.0
