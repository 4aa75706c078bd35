"""The two exact integer kernels (16-bit SIMD multiply-add and float32 chunks) against the
int64 reference, bit for bit, and the SIMD kernel's machine code.

Both kernels are run explicitly (``int_kernel='simd'`` / ``'float'``); the default and
``$PARCONV_INT_KERNEL`` are checked separately.
"""

from __future__ import annotations

import platform

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from parconv import conv2d
from parconv.kernels import (
    INT_KERNEL_ENV,
    conv2d_window,
    int32_safe_reduction,
    int_simd,
    resolve_int_kernel,
    simd_supported,
)
from parconv.reference import conv2d_reference

KERNELS = ["simd", "float"]
XDTYPES = [np.int8, np.uint8]


def ints(shape, dt, rng, mode="random"):
    info = np.iinfo(dt)
    if mode == "min":
        return np.full(shape, info.min, dtype=dt)
    if mode == "max":
        return np.full(shape, info.max, dtype=dt)
    if mode == "ends":   # only the two extreme values, mixed
        return rng.choice(np.array([info.min, info.max], dtype=dt), size=shape)
    return rng.integers(int(info.min), int(info.max) + 1, size=shape).astype(dt)


def ref32(x, w, stride, padding, dilation):
    return conv2d_reference(x, w, stride, padding, dilation, "int32")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 3), C=st.integers(1, 9), K=st.integers(1, 14), R=st.integers(1, 4),
       S=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2),
       dw=st.integers(1, 2), ph=st.integers(0, 3), pw=st.integers(0, 3),
       extra_h=st.integers(0, 12), extra_w=st.integers(0, 21), xd=st.sampled_from(XDTYPES),
       mode=st.sampled_from(["random", "random", "ends", "min", "max"]),
       kernel=st.sampled_from(KERNELS), block_cols=st.sampled_from([1, 17, 64, 1024]),
       chunk_rows=st.sampled_from([1, 2, 7, 2304]), seed=st.integers(0, 2 ** 16))
def test_random_shapes_bit_exact(B, C, K, R, S, sh, sw, dh, dw, ph, pw, extra_h, extra_w, xd,
                                 mode, kernel, block_cols, chunk_rows, seed):
    """Strides, dilations, paddings, odd channel counts and reduction lengths (the pair
    padding), K not a multiple of the 6-row tile, widths not a multiple of 16 columns,
    extreme values; blocks inside and across images, chunks of 1 row and longer."""
    rng = np.random.default_rng(seed)
    Hin = max(1, dh * (R - 1) + 1 - 2 * ph) + extra_h
    Win = max(1, dw * (S - 1) + 1 - 2 * pw) + extra_w
    x = ints((B, C, Hin, Win), xd, rng, mode)
    w = ints((K, C, R, S), np.int8, rng, "min" if mode == "min" else mode)
    ref = ref32(x, w, (sh, sw), (ph, pw), (dh, dw))
    out = np.full(ref.shape, 99, dtype=np.int32)
    conv2d_window(x, w, out, (sh, sw), (dh, dw), (-ph, -pw), block_cols=block_cols,
                  chunk_rows=chunk_rows, int_kernel=kernel)
    np.testing.assert_array_equal(out, ref)


# (B, C, K, H, W, R, S, stride, padding, dilation): ResNet-like and awkward shapes
SHAPES = [
    (2, 64, 64, 14, 14, 3, 3, 1, 1, 1),     # 3x3, K a multiple of 16 but not of 6
    (1, 3, 64, 37, 37, 7, 7, 2, 3, 1),      # stem-like, odd reduction 147
    (3, 33, 13, 9, 11, 1, 1, 1, 0, 1),      # 1x1 with an odd channel count
    (2, 130, 20, 7, 7, 3, 3, 1, 1, 1),      # reduction 1170: several 256-row chunks
    (1, 5, 7, 20, 23, 3, 2, (2, 3), (1, 0), (2, 1)),
]


@pytest.mark.parametrize("xd", XDTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", SHAPES, ids=range(len(SHAPES)))
def test_layer_shapes_and_accumulate_into_transposed_view(shape, kernel, xd):
    """conv2d on both kernels == reference; conv2d_window with accumulate=True into the
    transposed view of a (K, B, H, W) buffer (the runtime's layout) adds exactly."""
    B, C, K, Hin, Win, R, S, stride, padding, dilation = shape
    rng = np.random.default_rng(C * K)
    x, w = ints((B, C, Hin, Win), xd, rng), ints((K, C, R, S), np.int8, rng)
    ref = ref32(x, w, stride, padding, dilation)
    got = conv2d(x, w, stride, padding, dilation, int_kernel=kernel)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ref)
    base = rng.integers(-2 ** 20, 2 ** 20, size=(K, B) + ref.shape[2:]).astype(np.int32)
    buf = base.copy()
    pad = padding if np.ndim(padding) else (padding, padding)
    conv2d_window(x, w, buf.transpose(1, 0, 2, 3), stride, dilation, (-pad[0], -pad[1]),
                  accumulate=True, int_kernel=kernel)
    np.testing.assert_array_equal(buf, base + ref.transpose(1, 0, 2, 3))


@pytest.mark.parametrize("kernel", KERNELS)
def test_extremes_over_long_reductions(kernel):
    """Every product at its extreme over many chunks: int8 -128 x -128 = +16384 and uint8
    255 x -128 = -32640 (the pair sums of vpmaddwd reach -65280, still exact)."""
    C = 301   # 2709 reduction rows: 11 chunks of 247 (odd: pair padding in each)
    w = np.full((7, C, 3, 3), -128, dtype=np.int8)
    x = np.full((1, C, 5, 5), -128, dtype=np.int8)
    got = conv2d(x, w, int_kernel=kernel)
    np.testing.assert_array_equal(got, np.full((1, 7, 3, 3), C * 9 * 16384))
    xu = np.full((1, C, 5, 5), 255, dtype=np.uint8)
    np.testing.assert_array_equal(conv2d(xu, w, int_kernel=kernel),
                                  np.full((1, 7, 3, 3), -C * 9 * 255 * 128))
    wp = np.full((7, C, 3, 3), 127, dtype=np.int8)
    np.testing.assert_array_equal(conv2d(xu, wp, padding=1, int_kernel=kernel),
                                  ref32(xu, wp, 1, 1, 1))


@pytest.mark.parametrize("kernel", KERNELS)
def test_overflow_refused_and_wraps_identically(kernel):
    """Past int32_safe_reduction conv2d refuses; with allow_overflow both kernels wrap
    modulo 2**32 to the same value."""
    C = int32_safe_reduction(np.uint8, np.int8) // 9 + 1
    x = np.full((1, C, 3, 3), 255, dtype=np.uint8)
    w = np.full((2, C, 3, 3), -128, dtype=np.int8)
    with pytest.raises(OverflowError, match="65793"):
        conv2d(x, w, int_kernel=kernel)
    exact = -C * 9 * 255 * 128
    assert exact < -2 ** 31
    got = conv2d(x, w, allow_overflow=True, int_kernel=kernel)
    assert int(got[0, 1, 0, 0]) == (exact + 2 ** 31) % 2 ** 32 - 2 ** 31


@pytest.mark.parametrize("threads", [2, 3])
def test_simd_threads_same_result(threads):
    rng = np.random.default_rng(4)
    x, w = ints((3, 10, 17, 9), np.uint8, rng), ints((13, 10, 3, 3), np.int8, rng)
    ref = ref32(x, w, 1, 1, 1)
    for bc in (9, 1024):   # blocks inside images / spanning images
        out = np.zeros(ref.shape, dtype=np.int32)
        conv2d_window(x, w, out, 1, 1, (-1, -1), threads=threads, block_cols=bc,
                      int_kernel="simd")
        np.testing.assert_array_equal(out, ref)


def test_kernel_selection(monkeypatch):
    monkeypatch.delenv(INT_KERNEL_ENV, raising=False)
    assert resolve_int_kernel() == ("simd" if simd_supported() else "float")
    assert resolve_int_kernel("float") == "float"
    monkeypatch.setenv(INT_KERNEL_ENV, "float")
    assert resolve_int_kernel() == "float"
    assert resolve_int_kernel("simd") == "simd"   # the argument wins
    monkeypatch.setenv(INT_KERNEL_ENV, "vnni")
    with pytest.raises(ValueError, match="PARCONV_INT_KERNEL"):
        resolve_int_kernel()
    with pytest.raises(ValueError, match="int_kernel"):
        conv2d(np.zeros((1, 1, 3, 3), np.int8), np.zeros((1, 1, 1, 1), np.int8),
               int_kernel="fast")


def test_env_selects_the_path(monkeypatch):
    """PARCONV_INT_KERNEL reaches conv2d_window (the runtime's entry): with 'float' the
    SIMD GEMM is never called, with 'simd' it is."""
    from parconv.kernels import window

    calls = []
    real = window.gemm_chunk
    monkeypatch.setattr(window, "gemm_chunk", lambda *a: (calls.append(1), real(*a)))
    x, w = np.ones((1, 3, 5, 5), np.int8), np.ones((2, 3, 3, 3), np.int8)
    monkeypatch.setenv(INT_KERNEL_ENV, "float")
    np.testing.assert_array_equal(conv2d(x, w), np.full((1, 2, 3, 3), 27))
    assert not calls
    monkeypatch.setenv(INT_KERNEL_ENV, "simd")
    np.testing.assert_array_equal(conv2d(x, w), np.full((1, 2, 3, 3), 27))
    assert calls


X86_AVX2 = platform.machine().lower() in ("x86_64", "amd64") and simd_supported()


@pytest.mark.skipif(not X86_AVX2, reason="vpmaddwd needs an x86-64 host with AVX2")
@pytest.mark.parametrize("xd", XDTYPES, ids=lambda d: np.dtype(d).name)
def test_simd_kernel_uses_vpmaddwd(xd):
    """The compiled micro-kernel multiplies with vpmaddwd (16 exact int16 x int16
    multiply-adds into int32 per instruction) and never with the saturating vpmaddubsw;
    the panel bytes are widened with vpmovsxbw (int8) / vpmovzxbw (uint8)."""
    x = np.ones((1, 4, 6, 6), dtype=xd)
    conv2d(x, np.ones((6, 4, 3, 3), np.int8), int_kernel="simd")
    sigs = [s for s in int_simd.gemm_chunk.signatures if str(s[2].dtype) == np.dtype(xd).name]
    assert sigs
    fresh = njit(nogil=True)(int_simd.gemm_chunk.py_func)   # cached code has no assembly
    fresh.compile(sigs[0])
    asm = fresh.inspect_asm(sigs[0])
    assert asm.count("vpmaddwd") >= 12   # one 6x16 tile: 12 per reduction pair
    assert "vpmaddubsw" not in asm
    assert ("vpmovsxbw" if xd == np.int8 else "vpmovzxbw") in asm
