"""Integer (int8/uint8 x int8 -> int32) support: bounds, and the portable exact kernel
in float32 GEMM chunks (the default off x86/AVX2; the SIMD kernel is :mod:`.int_simd`).

Every product of an int8/uint8 activation and an int8 weight is an integer of magnitude
at most ``m = max|x| * max|w|`` (16384 for int8 x int8, 32640 for uint8 x int8). A sum of
``n`` such products, in any order and with or without fused multiply-adds, only ever
forms integers of magnitude at most ``n * m``; every integer up to ``2**24`` is exactly
representable in float32, so a float32 GEMM over a reduction chunk of
``n <= 2**24 // m`` panel rows is *exact* (1024 rows for int8, 514 for uint8).
:func:`scatter_int` converts each exact chunk result to int32 and adds it to the int32
accumulator, so the whole convolution is bit-exact and as fast as the float32 GEMM.

The int32 accumulator itself overflows only if the true result leaves
``[-2**31, 2**31 - 1]``; :func:`int32_safe_reduction` gives, per dtype pair, the longest
reduction (``C*R*S``) for which no input can do that. Past the bound, additions wrap
modulo ``2**32`` (what int32 hardware does); :func:`parconv.conv2d` refuses such layers
unless ``allow_overflow=True``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = dict(nogil=True, cache=True, boundscheck=False)

#: integer input dtypes and weight dtypes the kernels accept.
INT_INPUTS = (np.dtype(np.int8), np.dtype(np.uint8))
INT_WEIGHTS = (np.dtype(np.int8),)


def product_range(x_dtype, w_dtype) -> tuple[int, int]:
    """Smallest and largest product of one element of each integer dtype."""
    xi, wi = np.iinfo(x_dtype), np.iinfo(w_dtype)
    corners = [a * b for a in (int(xi.min), int(xi.max)) for b in (int(wi.min), int(wi.max))]
    return min(corners), max(corners)


def exact_chunk_rows(x_dtype, w_dtype) -> int:
    """Longest reduction chunk whose float32 sums are exact integers (``<= 2**24``)."""
    lo, hi = product_range(x_dtype, w_dtype)
    return max(1, 2 ** 24 // max(abs(lo), abs(hi), 1))


def int32_safe_reduction(x_dtype, w_dtype) -> int:
    """Longest reduction length ``C*R*S`` for which no int32 result can overflow.

    int8 x int8: 131071 (products in [-16256, 16384]); uint8 x int8: 65793
    (products in [-32640, 32385]).
    """
    lo, hi = product_range(x_dtype, w_dtype)
    return min((2 ** 31 - 1) // max(hi, 1), 2 ** 31 // max(-lo, 1))


@njit(**_JIT)
def scatter_int(out, block, u0, nunits, H, W, assign):
    """``out[b, :, h, :] (+)= int32(block[:, cols])`` with int32 wrap-around on overflow.

    ``block`` holds exact integers in float32 (see the module docstring).
    """
    K = out.shape[1]
    for u in range(nunits):
        uu = u0 + u
        b = uu // H
        h = uu - b * H
        j0 = u * W
        for k in range(K):
            if assign:
                for w in range(W):
                    out[b, k, h, w] = np.int32(block[k, j0 + w])
            else:
                for w in range(W):
                    out[b, k, h, w] = out[b, k, h, w] + np.int32(block[k, j0 + w])
