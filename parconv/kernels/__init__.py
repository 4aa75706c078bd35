"""Local convolution kernels (numba + BLAS); they know nothing of MPI.

Entry points: :func:`conv2d_window` (the runtime's in-place windowed convolution),
:func:`dgrad_window` / :func:`wgrad_window` (its input and weight gradients),
:func:`accumulator_dtype`, :func:`int32_safe_reduction`, :func:`resolve_int_kernel`,
:func:`warmup`. The public
single-process convolution is :func:`parconv.conv2d`. Design and figures:
``docs/kernels.md``.
"""

from __future__ import annotations

import time

import ml_dtypes
import numpy as np

from .backward import dgrad_window, training_accumulator, wgrad_window
from .int_kernels import exact_chunk_rows, int32_safe_reduction, product_range
from .threads import ENV_VAR as THREADS_ENV_VAR
from .threads import resolve_threads
from .window import (
    INT_KERNEL_ENV,
    accumulator_dtype,
    conv2d_window,
    plan_blocks,
    plan_chunks,
    resolve_int_kernel,
    simd_supported,
)

#: (input, weight) dtype pairs the kernels are compiled for by :func:`warmup`.
SIGNATURES = [
    (np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float16),
    (ml_dtypes.bfloat16, ml_dtypes.bfloat16), (np.int8, np.int8), (np.uint8, np.int8),
]


def warmup(signatures=None) -> float:
    """Compile (or load from the numba cache) every kernel specialisation; return seconds.

    Runs tiny convolutions for each dtype pair of :data:`SIGNATURES` through both the
    direct-write and the scatter path, with and without ``accumulate``, into a
    C-contiguous output and into a transposed view of a ``(K, B, H, W)`` buffer (integer
    pairs on both integer kernels, :func:`resolve_int_kernel`), and for
    the float pairs the backward kernels (:func:`dgrad_window` with stride 2, i.e. its
    col2im path, and :func:`wgrad_window`).
    """
    t0 = time.perf_counter()
    for xd, wd in signatures or SIGNATURES:
        x = np.ones((2, 2, 3, 3), dtype=xd)
        w = np.ones((2, 2, 2, 2), dtype=wd)
        out = np.zeros((2, 2, 2, 2), dtype=accumulator_dtype(x.dtype, w.dtype))
        # C-contiguous output and the (K, B, H, W) buffer's transposed view (the runtime's)
        kernels = [None]
        if out.dtype.kind == "i":   # both integer kernels (the SIMD one where it is used)
            kernels = ["float"] + (["simd"] if simd_supported() else [])
        for o in (out, out.transpose(1, 0, 2, 3)):
            for block_cols, chunk_rows in ((1, 3), (1024, 2304)):
                for acc in (False, True):
                    for kernel in kernels:
                        conv2d_window(x, w, o, 1, 1, (0, 0), acc, block_cols=block_cols,
                                      chunk_rows=chunk_rows, int_kernel=kernel)
        if out.dtype.kind == "f":
            gx = np.zeros(x.shape, dtype=out.dtype)
            dgrad_window(x[:, :, :2, :2], w, gx, 2, 1, (0, 0))
            wgrad_window(x, x[:, :, :2, :2], np.zeros(w.shape, dtype=out.dtype), 1, 1, (0, 0))
    return time.perf_counter() - t0


__all__ = ["INT_KERNEL_ENV", "SIGNATURES", "THREADS_ENV_VAR", "resolve_int_kernel",
           "simd_supported", "accumulator_dtype", "conv2d_window", "dgrad_window",
           "training_accumulator", "wgrad_window",
           "exact_chunk_rows", "int32_safe_reduction", "plan_blocks", "plan_chunks",
           "product_range", "resolve_threads", "warmup"]
