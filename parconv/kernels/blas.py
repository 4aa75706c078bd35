"""numpy's own OpenBLAS through ctypes: thread control and a ``C = A @ B + beta*C`` GEMM.

numpy's ``matmul`` cannot accumulate into its output (no ``beta``), so a convolution split
into reduction chunks would need a temporary and an extra pass per chunk. The CBLAS
``?gemm`` of the OpenBLAS that numpy ships (``scipy_openblas64_``, 64-bit integers) can;
it is looked up once. Everything here is optional: without it (:data:`GEMM` is None, e.g.
a numpy built against another BLAS) the kernels fall back to ``np.matmul``.
"""

from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _libraries():
    base = os.path.dirname(np.__file__)
    paths = glob.glob(os.path.join(base, os.pardir, "numpy.libs", "*openblas*"))
    paths += glob.glob(os.path.join(base, ".libs", "*openblas*"))
    for path in paths:
        try:
            yield ctypes.CDLL(path)
        except OSError:
            continue


def _find():
    """(get_threads, set_threads, sgemm, dgemm) of numpy's OpenBLAS; missing ones None."""
    for lib in _libraries():
        found = [None, None, None, None]
        for get_name, set_name in (("scipy_openblas_get_num_threads64_",
                                    "scipy_openblas_set_num_threads64_"),
                                   ("openblas_get_num_threads", "openblas_set_num_threads")):
            if hasattr(lib, get_name) and hasattr(lib, set_name):
                found[0], found[1] = getattr(lib, get_name), getattr(lib, set_name)
                found[0].restype = ctypes.c_int
                found[1].argtypes = [ctypes.c_int]
                found[1].restype = None
                break
        i64, cint, vp = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
        for slot, name, real in ((2, "scipy_cblas_sgemm64_", ctypes.c_float),
                                 (3, "scipy_cblas_dgemm64_", ctypes.c_double)):
            if hasattr(lib, name):   # ILP64 CBLAS: 64-bit integer arguments
                fn = getattr(lib, name)
                fn.argtypes = [cint, cint, cint, i64, i64, i64, real, vp, i64, vp, i64,
                               real, vp, i64]
                fn.restype = None
                found[slot] = fn
        if any(found):
            return tuple(found)
    return (None, None, None, None)


GET_THREADS, SET_THREADS, _SGEMM, _DGEMM = _find()
#: True when :func:`gemm` calls BLAS directly (else it falls back to numpy).
GEMM = _SGEMM is not None and _DGEMM is not None


def _blasable(a: np.ndarray) -> bool:
    return (a.ndim == 2 and a.strides[1] == a.itemsize and a.strides[0] % a.itemsize == 0
            and a.strides[0] // a.itemsize >= max(1, a.shape[1]))


def gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray, beta: float, use_blas: bool = True,
         trans_a: bool = False, trans_b: bool = False) -> None:
    """``c[...] = op(a) @ op(b) + beta * c`` for float32/float64 2-D arrays with unit inner
    stride (any leading dimension); ``op`` transposes the stored matrix when ``trans_a`` /
    ``trans_b`` is set. Falls back to numpy when BLAS is unavailable or ``use_blas`` is
    False."""
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    M, K = opa.shape
    N = opb.shape[1]
    fn = (_SGEMM if c.dtype == np.float32 else _DGEMM) if GEMM and use_blas else None
    if (fn is None or not (_blasable(a) and _blasable(b) and _blasable(c))
            or not (a.dtype == b.dtype == c.dtype) or M == 0 or N == 0 or K == 0):
        if beta == 0.0:
            np.matmul(opa, opb, out=c)
        else:
            c += np.matmul(opa, opb)
        return
    fn(_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS, M, N, K,
       1.0, a.ctypes.data, a.strides[0] // a.itemsize, b.ctypes.data, b.strides[0] // b.itemsize,
       beta, c.ctypes.data, c.strides[0] // c.itemsize)
