"""parconv.conv2d and parconv.kernels.conv2d_window against the numpy reference.

Tolerances: integers bit-exact; float64 rtol 1e-10; float32 (and float16/bfloat16
inputs, which are exact in float32) atol = rtol = 2e-5 * sqrt(C*R*S) relative to the
output scale of standard-normal operands.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parconv import conv2d
from parconv.kernels import (
    accumulator_dtype,
    conv2d_window,
    exact_chunk_rows,
    int32_safe_reduction,
    plan_blocks,
    plan_chunks,
    resolve_threads,
    warmup,
)
from parconv.reference import conv2d_reference

BF16 = np.dtype(ml_dtypes.bfloat16)
PAIRS = [(np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float16),
         (BF16, BF16), (np.int8, np.int8), (np.uint8, np.int8), (np.float32, np.float16)]


def operands(shape_x, shape_w, xd, wd, seed=0, extreme=False):
    rng = np.random.default_rng(seed)
    out = []
    for shape, dt in ((shape_x, np.dtype(xd)), (shape_w, np.dtype(wd))):
        if dt.kind in "iu":
            info = np.iinfo(dt)
            if extreme:
                out.append(np.full(shape, info.min if dt.kind == "i" else info.max, dtype=dt))
            else:
                out.append(rng.integers(int(info.min), int(info.max) + 1, size=shape).astype(dt))
        else:
            out.append(rng.standard_normal(shape).astype(dt))
    return out


def assert_matches(got, ref, reduction):
    assert got.shape == ref.shape
    if ref.dtype.kind in "iu":
        assert got.dtype == ref.dtype
        np.testing.assert_array_equal(got, ref)
    elif got.dtype == np.float64:
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10 * np.sqrt(reduction))
    else:
        tol = 2e-5 * np.sqrt(reduction)
        np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64),
                                   rtol=tol, atol=tol)


def reference(x, w, stride, padding, dilation):
    out_dtype = str(accumulator_dtype(x.dtype, w.dtype))
    return conv2d_reference(x, w, stride, padding, dilation, out_dtype)


# (B, C, K, Hin, Win, R, S, stride, padding, dilation)
SHAPES = [
    (2, 3, 4, 9, 11, 3, 3, 1, 1, 1),
    (1, 5, 2, 8, 7, 2, 4, (2, 3), (1, 2), (2, 1)),   # even kernels, mixed axes
    (2, 4, 3, 15, 15, 7, 7, 2, 3, 1),                 # 7x7/2 stem
    (3, 6, 5, 5, 5, 1, 1, 1, 0, 1),                   # 1x1
    (2, 3, 3, 12, 13, 3, 3, 3, 0, 2),                 # stride 3, dilation 2
    (1, 1, 1, 6, 6, 3, 3, 1, 1, 1),                   # C = K = 1
    (2, 1, 7, 10, 9, 2, 2, 2, 1, 1),                  # C = 1, even kernel, stride 2
    (1, 9, 1, 7, 8, 1, 3, 1, (0, 1), (1, 2)),         # K = 1
    (1, 2, 3, 4, 4, 5, 5, 1, 2, 1),                   # kernel larger than input
    (2, 16, 8, 33, 31, 3, 3, 2, 1, 1),                # odd sizes, several blocks
]


@pytest.mark.parametrize("xd,wd", PAIRS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=range(len(SHAPES)))
def test_conv2d_matches_reference(shape, xd, wd):
    B, C, K, Hin, Win, R, S, stride, padding, dilation = shape
    x, w = operands((B, C, Hin, Win), (K, C, R, S), xd, wd, seed=hash(shape) % 1000)
    got = conv2d(x, w, stride, padding, dilation)
    assert got.dtype == accumulator_dtype(x.dtype, w.dtype)
    assert_matches(got, reference(x, w, stride, padding, dilation), C * R * S)


@pytest.mark.parametrize("block_cols,chunk_rows", [(1, 1), (7, 5), (25, 13), (4096, 4096)])
@pytest.mark.parametrize("xd,wd", PAIRS[:6], ids=lambda d: np.dtype(d).name)
def test_blocking_does_not_change_result(block_cols, chunk_rows, xd, wd):
    """Blocks inside one image, spanning images, and reduction chunks of any length."""
    x, w = operands((3, 5, 9, 8), (4, 5, 3, 2), xd, wd, seed=3)
    ref = reference(x, w, (2, 1), (1, 0), (1, 2))
    out = np.full(ref.shape, 7, dtype=accumulator_dtype(x.dtype, w.dtype))
    conv2d_window(x, w, out, (2, 1), (1, 2), (-1, 0), block_cols=block_cols,
                  chunk_rows=chunk_rows)
    assert_matches(out, ref, 30)


@pytest.mark.parametrize("xd,wd", [(np.float32, np.float32), (np.int8, np.int8),
                                   (np.uint8, np.int8), (BF16, BF16)],
                         ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("offset,xslice", [
    ((-2, -1), (slice(None), slice(None))),   # negative offset = top/left padding
    ((1, 2), (slice(None), slice(None))),     # positive offset: window inside x
    ((0, 0), (slice(0, 7), slice(0, 9))),     # short x: implicit bottom/right padding
    ((-1, 3), (slice(2, 11), slice(1, 12))),  # both
])
def test_window_offsets_and_accumulate(xd, wd, offset, xslice):
    """conv2d_window == reference on a zero-padded copy, and accumulate=True adds."""
    x, w = operands((2, 3, 12, 13), (4, 3, 3, 2), xd, wd, seed=5)
    xs = np.ascontiguousarray(x[:, :, xslice[0], xslice[1]])
    H, W, stride, dil = 5, 6, (2, 1), (1, 2)
    pad = 8
    big = np.zeros((2, 3) + tuple(n + 2 * pad for n in xs.shape[2:]), dtype=xs.dtype)
    big[:, :, pad:pad + xs.shape[2], pad:pad + xs.shape[3]] = xs
    lo_h, lo_w = pad + offset[0], pad + offset[1]
    need_h = stride[0] * (H - 1) + dil[0] * 2 + 1
    need_w = stride[1] * (W - 1) + dil[1] * 1 + 1
    window = big[:, :, lo_h:lo_h + need_h, lo_w:lo_w + need_w]
    ref = reference(window, w, stride, 0, dil)
    assert ref.shape == (2, 4, H, W)
    acc = accumulator_dtype(x.dtype, w.dtype)
    out = np.zeros(ref.shape, dtype=acc)
    conv2d_window(xs, w, out, stride, dil, offset)
    assert_matches(out, ref, 18)
    base = operands((2, 4, H, W), (1,), acc if acc.kind == "f" else np.int8, np.int8, seed=6)[0]
    out = base.astype(acc)
    conv2d_window(xs, w, out, stride, dil, offset, accumulate=True, block_cols=4, chunk_rows=5)
    assert_matches(out, (ref.astype(np.float64) + base).astype(acc), 18)


def test_window_outside_input_is_zero():
    x, w = operands((1, 2, 4, 4), (3, 2, 2, 2), np.float32, np.float32)
    out = np.full((1, 3, 2, 2), 5.0, dtype=np.float32)
    conv2d_window(x, w, out, 1, 1, (10, -20))
    assert not out.any()


def test_int8_extremes_exact_across_chunks():
    """All -128: every product is +16384; long reductions cross exact-float32 chunks."""
    C = 3 * exact_chunk_rows(np.int8, np.int8) // 9 + 5
    x, w = operands((1, C, 3, 3), (2, C, 3, 3), np.int8, np.int8, extreme=True)
    got = conv2d(x, w)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.full((1, 2, 1, 1), C * 9 * 16384, dtype=np.int32))
    xu = np.full((1, C, 3, 3), 255, dtype=np.uint8)
    np.testing.assert_array_equal(conv2d(xu, w), np.full((1, 2, 1, 1), -C * 9 * 255 * 128))


def test_int32_bounds_and_overflow_refused():
    assert int32_safe_reduction(np.int8, np.int8) == 131071
    assert int32_safe_reduction(np.uint8, np.int8) == 65793
    assert exact_chunk_rows(np.int8, np.int8) == 1024
    assert exact_chunk_rows(np.uint8, np.int8) == 514
    C = 131072 // 16 + 1   # C*4*4 > 131071
    x = np.full((1, C, 4, 4), -128, dtype=np.int8)
    w = np.full((1, C, 4, 4), -128, dtype=np.int8)
    with pytest.raises(OverflowError, match="131071"):
        conv2d(x, w)
    wrapped = conv2d(x, w, allow_overflow=True)
    exact = C * 16 * 16384
    assert exact > 2 ** 31 - 1
    assert int(wrapped[0, 0, 0, 0]) == (exact + 2 ** 31) % 2 ** 32 - 2 ** 31


@pytest.mark.parametrize("out_dtype", ["float16", "bfloat16", "float64"])
def test_out_dtype_cast(out_dtype):
    x, w = operands((1, 3, 6, 6), (2, 3, 3, 3), np.float32, np.float32)
    got = conv2d(x, w, padding=1, out_dtype=out_dtype)
    assert got.dtype.name == out_dtype
    ref = reference(x, w, 1, 1, 1)
    np.testing.assert_allclose(got.astype(np.float64), ref, rtol=1e-2, atol=1e-2)


def test_int_out_dtype_int64():
    x, w = operands((1, 3, 6, 6), (2, 3, 3, 3), np.int8, np.int8)
    got = conv2d(x, w, out_dtype="int64")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, reference(x, w, 1, 0, 1))


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_same_result(threads):
    x, w = operands((3, 4, 17, 9), (5, 4, 3, 3), np.float32, np.float32)
    ref = conv2d(x, w, 1, 1)
    got = conv2d(x, w, 1, 1, threads=threads)
    np.testing.assert_array_equal(got, ref)   # same blocks, same arithmetic
    out = np.zeros(ref.shape, dtype=np.float32)
    conv2d_window(x, w, out, 1, 1, (-1, -1), threads=threads, block_cols=9)
    assert_matches(out, reference(x, w, 1, 1, 1), 36)


def test_threads_env(monkeypatch):
    monkeypatch.setenv("PARCONV_THREADS", "3")
    assert resolve_threads() == 3
    assert resolve_threads(2) == 2
    monkeypatch.setenv("PARCONV_THREADS", "many")
    with pytest.raises(ValueError, match="PARCONV_THREADS"):
        resolve_threads()
    monkeypatch.delenv("PARCONV_THREADS")
    assert resolve_threads() == 1
    with pytest.raises(ValueError, match="threads"):
        resolve_threads(0)


def test_plans_cover_everything():
    for B, H, W, cols in [(8, 56, 56, 1024), (8, 7, 7, 1024), (3, 5, 4, 7), (1, 1, 1, 1),
                          (5, 14, 14, 1024)]:
        units = [u for u0, n in plan_blocks(B, H, W, cols) for u in range(u0, u0 + n)]
        assert units == list(range(B * H))
    for rows, chunk in [(4608, 1024), (7, 3), (1, 5), (147, 2304)]:
        chunks = plan_chunks(rows, chunk)
        assert [q for a, b in chunks for q in range(a, b)] == list(range(rows))
        assert max(b - a for a, b in chunks) <= chunk


def test_warmup_runs():
    assert warmup() >= 0.0


@pytest.mark.parametrize("args,match", [
    (((1, 3, 5, 5), (2, 4, 3, 3), np.float32, np.float32, {}), "channels"),
    (((3, 5, 5), (2, 3, 3, 3), np.float32, np.float32, {}), "4-D"),
    (((1, 3, 5, 5), (2, 3, 3, 3), np.float32, np.int8, {}), "integer"),
    (((1, 3, 5, 5), (2, 3, 3, 3), np.int16, np.int8, {}), "int8"),
    (((1, 3, 5, 5), (2, 3, 3, 3), np.int32, np.int32, {}), "int8"),
    (((1, 3, 5, 5), (2, 3, 3, 3), np.float32, np.float32, {"stride": 0}), "stride"),
    (((1, 3, 5, 5), (2, 3, 3, 3), np.float32, np.float32, {"dilation": (1, 0)}), "dilation"),
    (((1, 3, 5, 5), (2, 3, 3, 3), np.float32, np.float32, {"padding": -1}), "padding"),
    (((1, 3, 5, 5), (2, 3, 7, 3), np.float32, np.float32, {}), "empty output"),
    (((1, 3, 5, 5), (2, 3, 3, 3), np.float32, np.float32, {"stride": (1, 2, 3)}), "stride"),
    (((1, 3, 5, 5), (2, 3, 3, 3), np.float32, np.float32, {"out_dtype": "int32"}), "out_dtype"),
    (((1, 3, 5, 5), (2, 3, 3, 3), np.int8, np.int8, {"out_dtype": "int8"}), "out_dtype"),
    (((0, 3, 5, 5), (2, 3, 3, 3), np.float32, np.float32, {}), "batch"),
])
def test_conv2d_rejects_bad_input(args, match):
    xs, ws, xd, wd, kw = args
    with pytest.raises(ValueError, match=match):
        conv2d(np.zeros(xs, dtype=xd), np.zeros(ws, dtype=wd), **kw)


def test_window_rejects_bad_out():
    x, w = operands((1, 2, 5, 5), (3, 2, 3, 3), np.float32, np.float32)
    with pytest.raises(ValueError, match="accumulator"):
        conv2d_window(x, w, np.zeros((1, 3, 3, 3), dtype=np.float64))
    with pytest.raises(ValueError, match="out shape"):
        conv2d_window(x, w, np.zeros((1, 4, 3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        conv2d_window(x, w, np.zeros((1, 3, 3, 6), dtype=np.float32)[..., ::2])
    with pytest.raises(ValueError, match="offset"):
        conv2d_window(x, w, np.zeros((1, 3, 3, 3), dtype=np.float32), offset="top")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 3), C=st.integers(1, 6), K=st.integers(1, 6), R=st.integers(1, 4),
       S=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2),
       dw=st.integers(1, 2), ph=st.integers(0, 3), pw=st.integers(0, 3),
       extra_h=st.integers(0, 9), extra_w=st.integers(0, 9), pair=st.sampled_from(PAIRS),
       block_cols=st.sampled_from([1, 5, 64, 1024]), chunk_rows=st.sampled_from([1, 7, 2304]))
def test_random_shapes(B, C, K, R, S, sh, sw, dh, dw, ph, pw, extra_h, extra_w, pair,
                       block_cols, chunk_rows):
    Hin = max(1, dh * (R - 1) + 1 - 2 * ph) + extra_h
    Win = max(1, dw * (S - 1) + 1 - 2 * pw) + extra_w
    x, w = operands((B, C, Hin, Win), (K, C, R, S), *pair, seed=B * 100 + C)
    ref = reference(x, w, (sh, sw), (ph, pw), (dh, dw))
    out = np.zeros(ref.shape, dtype=ref.dtype)
    conv2d_window(x, w, out, (sh, sw), (dh, dw), (-ph, -pw), block_cols=block_cols,
                  chunk_rows=chunk_rows)
    assert_matches(out, ref, C * R * S)


@pytest.mark.parametrize("xd", [np.float32, np.float64])
@pytest.mark.parametrize("oh,hx,chunk_rows,accumulate", [
    (0, 17, 2304, False), (2, 21, 2304, False), (1, 18, 3, True), (0, 17, 4, False)])
def test_1x1_reads_input_in_place(xd, oh, hx, chunk_rows, accumulate):
    """1x1 stride 1 with whole input rows and >= DIRECT_MIN_COLS outputs: GEMM on views."""
    from parconv.kernels import window
    x, w = operands((2, 7, hx, 16), (5, 7, 1, 1), xd, xd, seed=9)
    H = 17
    assert H * 16 >= window.DIRECT_MIN_COLS
    ref = reference(np.ascontiguousarray(x[:, :, oh:oh + H]), w, 1, 0, 1)
    out = np.ones(ref.shape, dtype=ref.dtype)
    conv2d_window(x, w, out, 1, 1, (oh, 0), accumulate=accumulate, chunk_rows=chunk_rows)
    assert_matches(out, ref + (1 if accumulate else 0), 7)


@pytest.mark.parametrize("offset,hx", [((-1, -1), 9), ((-2, -1), 9), ((0, 1), 12), ((2, -2), 7)])
@pytest.mark.parametrize("block_cols,chunk_rows", [(8, 5), (20, 2304), (1024, 7)])
def test_same_width_row_runs(offset, hx, block_cols, chunk_rows):
    """Stride 1 with input rows as wide as output rows (the packer copies whole runs of
    rows, then zeroes wrapped edge columns); blocks inside and across images."""
    x, w = operands((3, 4, hx, 8), (5, 4, 3, 3), np.float32, np.float32, seed=11)
    H, W, dil = 6, 8, (2, 1)
    pad = 8
    big = np.zeros((3, 4, hx + 2 * pad, 8 + 2 * pad), dtype=np.float32)
    big[:, :, pad:pad + hx, pad:pad + 8] = x
    lo_h, lo_w = pad + offset[0], pad + offset[1]
    window = big[:, :, lo_h:lo_h + H + 2 * dil[0], lo_w:lo_w + W + 2 * dil[1]]
    ref = reference(window, w, 1, 0, dil)
    out = np.zeros(ref.shape, dtype=np.float32)
    conv2d_window(x, w, out, 1, dil, offset, block_cols=block_cols, chunk_rows=chunk_rows)
    assert_matches(out, ref, 36)


def test_blas_held_at_one_thread_inside_calls():
    from parconv.kernels import threads
    before = threads.blas_threads()
    if before is None:
        pytest.skip("numpy's OpenBLAS thread control not found")
    with threads.single_threaded_blas():
        assert threads.blas_threads() == 1
    assert threads.blas_threads() == before


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_blas_gemm_strided_beta(dt):
    from parconv.kernels import blas
    rng = np.random.default_rng(1)
    a_full, b_full = rng.random((7, 30)).astype(dt), rng.random((30, 50)).astype(dt)
    c_full = rng.random((9, 60)).astype(dt)
    a, b, c = a_full[:, 3:20], b_full[3:20, 5:45], c_full[1:8, 10:50]
    want = c.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64)
    blas.gemm(a, b, c, 1.0)
    np.testing.assert_allclose(c, want, rtol=1e-5)
    blas.gemm(a, b, c, 0.0)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-5)
    untouched = np.random.default_rng(1)
    untouched.random((7, 30))
    untouched.random((30, 50))
    c_before = untouched.random((9, 60)).astype(dt)
    np.testing.assert_array_equal(c_full[0], c_before[0])   # outside the view: untouched
    np.testing.assert_array_equal(c_full[1:8, :10], c_before[1:8, :10])


@pytest.mark.parametrize("xd,wd", [(np.float32, np.float32), (np.float64, np.float64),
                                   (np.int8, np.int8)], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("block_cols", [9, 1024])
def test_numpy_gemm_fallback(monkeypatch, xd, wd, block_cols):
    """Without the ctypes BLAS (other numpy builds) the np.matmul fallback gives the same."""
    from parconv.kernels import blas
    monkeypatch.setattr(blas, "GEMM", False)
    x, w = operands((3, 6, 9, 9), (4, 6, 3, 3), xd, wd, seed=12)
    ref = reference(x, w, 1, 1, 1)
    out = np.ones(ref.shape, dtype=ref.dtype)
    conv2d_window(x, w, out, 1, 1, (-1, -1), accumulate=True, block_cols=block_cols,
                  chunk_rows=10)
    assert_matches(out, ref + 1, 54)
