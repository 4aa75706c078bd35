"""Backward kernels (dgrad/wgrad) against the float64 numpy references, adjoint identities
of the forward convolution, windows/offsets, blocking and threads, integer refusal.

Tolerances as in ``test_kernels.py``: float64 rtol 1e-10; float32 (and float16/bfloat16,
exact in float32) atol = rtol = 2e-5 * sqrt(n) for reductions of length n of
standard-normal operands.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parconv import conv2d, conv2d_grad_input, conv2d_grad_weight
from parconv.kernels import blas, conv2d_window, dgrad_window, wgrad_window
from parconv.reference import conv2d_grad_input_reference, conv2d_grad_weight_reference

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.float64, np.float32, BF16, np.float16]

# (B, C, K, Hin, Win, R, S, stride, padding, dilation)
SHAPES = [
    (2, 3, 4, 9, 11, 3, 3, 1, 1, 1),
    (1, 5, 2, 8, 7, 2, 4, (2, 3), (1, 2), (2, 1)),   # even kernels, mixed axes
    (2, 4, 3, 15, 15, 7, 7, 2, 3, 1),                 # 7x7/2 stem
    (3, 6, 5, 5, 5, 1, 1, 1, 0, 1),                   # 1x1
    (2, 6, 4, 9, 10, 1, 1, 2, 0, 1),                  # 1x1 stride 2 (downsample)
    (2, 3, 2, 20, 20, 1, 1, 1, 0, 1),                 # 1x1 on input/grad in place
    (2, 3, 3, 12, 13, 3, 3, 3, 5, 2),                 # stride 3, dilation 2, big padding
    (1, 4, 5, 6, 7, 2, 2, 1, 4, 2),                   # big padding, stride 1
    (1, 2, 3, 4, 4, 5, 5, 1, 2, 1),                   # kernel larger than input
    (1, 2, 2, 10, 10, 3, 3, 3, 0, 1),                 # stride leaves input rows unused
    (1, 8, 8, 17, 9, 3, 1, (1, 2), (1, 0), (1, 2)),   # non-square everything
    (2, 16, 8, 33, 31, 3, 3, 2, 1, 1),                # several blocks
]


def operands(B, C, K, Hin, Win, R, S, stride, padding, dilation, dt, seed=0):
    """x, w, grad_out (standard normal, cast to ``dt``) for one layer."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C, Hin, Win)).astype(dt)
    w = rng.standard_normal((K, C, R, S)).astype(dt)
    H, W = conv2d(x.astype(np.float64), w.astype(np.float64), stride, padding,
                  dilation).shape[2:]
    g = rng.standard_normal((B, K, H, W)).astype(dt)
    return x, w, g


def assert_close(got, ref, n):
    assert got.shape == ref.shape
    if got.dtype == np.float64:
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10 * np.sqrt(n))
    else:
        tol = 2e-5 * np.sqrt(n)
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=tol, atol=tol)


def acc_of(dt):
    return np.dtype(np.float64) if np.dtype(dt) == np.float64 else np.dtype(np.float32)


@pytest.mark.parametrize("dt", FLOATS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=range(len(SHAPES)))
def test_grads_match_reference(shape, dt):
    B, C, K, Hin, Win, R, S, stride, padding, dilation = shape
    x, w, g = operands(*shape, dt, seed=len(SHAPES) + B * C * K)
    dx = conv2d_grad_input(g, w, x.shape, stride, padding, dilation)
    dw = conv2d_grad_weight(x, g, (R, S), stride, padding, dilation)
    assert dx.dtype == acc_of(dt) and dw.dtype == acc_of(dt)
    assert_close(dx, conv2d_grad_input_reference(g, w, x.shape, stride, padding, dilation),
                 K * R * S)
    assert_close(dw, conv2d_grad_weight_reference(x, g, (R, S), stride, padding, dilation),
                 B * g.shape[2] * g.shape[3])
    # the full weight shape is accepted as kernel_size too
    np.testing.assert_array_equal(conv2d_grad_weight(x, g, w.shape, stride, padding, dilation),
                                  dw)


def test_reference_grads_on_a_hand_example():
    """1 channel, 2x2 filter, stride 2, padding 1: each input element meets one tap."""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    g = np.ones((1, 1, 3, 3))
    dx = conv2d_grad_input_reference(g, w, x.shape, 2, 1)
    # x[i, j] is read by output (h, w) = ((i+1)//2, (j+1)//2) through tap ((i+1)%2, (j+1)%2)
    expect = np.array([[w[0, 0, (i + 1) % 2, (j + 1) % 2] for j in range(4)] for i in range(4)])
    np.testing.assert_array_equal(dx[0, 0], expect)
    dw = conv2d_grad_weight_reference(x, g, 2, 2, 1)
    xp = np.pad(x[0, 0], 1)
    np.testing.assert_array_equal(dw[0, 0], [[xp[0::2, 0::2].sum(), xp[0::2, 1::2].sum()],
                                             [xp[1::2, 0::2].sum(), xp[1::2, 1::2].sum()]])
    np.testing.assert_array_equal(conv2d_grad_input(g, w, x.shape, 2, 1), dx)
    np.testing.assert_array_equal(conv2d_grad_weight(x, g, 2, 2, 1), dw)


def adjoint_check(x, w, g, stride, dilation, offset):
    """<conv(x, w), g> == <x, dgrad(g, w)> == <w, wgrad(x, g)> with window semantics."""
    y = np.zeros(g.shape)
    conv2d_window(x, w, y, stride, dilation, offset)
    dx = np.full(x.shape, np.nan)
    dgrad_window(g, w, dx, stride, dilation, offset, accumulate=False)
    dw = np.full(w.shape, np.nan)
    wgrad_window(x, g, dw, stride, dilation, offset, accumulate=False)
    a, b, c = np.vdot(y, g), np.vdot(x, dx), np.vdot(w, dw)
    scale = np.abs(y).sum() * np.abs(g).max() + 1e-300
    assert abs(a - b) <= 1e-12 * scale, (a, b)
    assert abs(a - c) <= 1e-12 * scale, (a, c)
    return a


@pytest.mark.parametrize("shape", SHAPES, ids=range(len(SHAPES)))
def test_adjoint_identities(shape):
    B, C, K, Hin, Win, R, S, stride, padding, dilation = shape
    x, w, g = operands(*shape, np.float64, seed=7)
    ph, pw = (padding, padding) if np.ndim(padding) == 0 else padding
    assert adjoint_check(x, w, g, stride, dilation, (-ph, -pw)) != 0


@pytest.mark.parametrize("offset,hx,wx", [((2, 1), 20, 20), ((-3, 4), 6, 30), ((5, -6), 9, 4)])
def test_adjoint_windows(offset, hx, wx):
    """Windows with positive offsets (inside a bigger input) and short windows."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, hx, wx))
    w = rng.standard_normal((4, 3, 3, 2))
    g = rng.standard_normal((2, 4, 5, 6))
    for stride, dilation in (((1, 1), (1, 1)), ((2, 3), (2, 1))):
        adjoint_check(x, w, g, stride, dilation, offset)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 3), C=st.integers(1, 5), K=st.integers(1, 5), R=st.integers(1, 4),
       S=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2),
       dw=st.integers(1, 2), ph=st.integers(0, 4), pw=st.integers(0, 4),
       extra_h=st.integers(0, 8), extra_w=st.integers(0, 8), dt=st.sampled_from(FLOATS),
       block_cols=st.sampled_from([1, 5, 64, 1024]), chunk_rows=st.sampled_from([1, 7, 1024]))
def test_random_shapes(B, C, K, R, S, sh, sw, dh, dw, ph, pw, extra_h, extra_w, dt,
                       block_cols, chunk_rows):
    Hin = max(1, dh * (R - 1) + 1 - 2 * ph) + extra_h
    Win = max(1, dw * (S - 1) + 1 - 2 * pw) + extra_w
    shape = (B, C, K, Hin, Win, R, S, (sh, sw), (ph, pw), (dh, dw))
    x, w, g = operands(*shape, dt, seed=B * 100 + C)
    acc = acc_of(dt)
    dx = np.full(x.shape, np.nan, dtype=acc)
    dgrad_window(g, w, dx, (sh, sw), (dh, dw), (-ph, -pw), accumulate=False,
                 block_cols=block_cols, chunk_rows=chunk_rows)
    assert_close(dx, conv2d_grad_input_reference(g, w, x.shape, *shape[7:]), K * R * S)
    dwt = np.full(w.shape, np.nan, dtype=acc)
    wgrad_window(x, g, dwt, (sh, sw), (dh, dw), (-ph, -pw), accumulate=False,
                 block_cols=block_cols, chunk_rows=chunk_rows)
    assert_close(dwt, conv2d_grad_weight_reference(x, g, (R, S), *shape[7:]),
                 B * g.shape[2] * g.shape[3])


@pytest.mark.parametrize("dt", [np.float64, np.float32, BF16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("stride", [1, 2])
def test_window_rows_sum_to_full_gradient(dt, stride):
    """Split the input rows into two windows (as two ranks would): each window's dgrad is
    that slice of the full dgrad; wgrad over the output rows of each window accumulates
    to the full wgrad."""
    shape = (2, 3, 4, 14, 9, 3, 3, stride, 1, 1)
    x, w, g = operands(*shape, dt, seed=5)
    acc = acc_of(dt)
    full_dx = conv2d_grad_input_reference(g, w, x.shape, stride, 1)
    for lo, hi in ((0, 6), (6, 14)):
        win = np.full((2, 3, hi - lo, 9), 1.0, dtype=acc)
        dgrad_window(g, w, win, stride, 1, (-1 - lo, -1))   # accumulates onto the ones
        assert_close(win, full_dx[:, :, lo:hi] + 1.0, 36)
    # wgrad: output rows [h0, h1) read input rows [stride*h0 - 1, stride*(h1-1) + 2)
    H = g.shape[2]
    dw = np.zeros(w.shape, dtype=acc)
    for h0, h1 in ((0, H // 2), (H // 2, H)):
        lo = max(0, stride * h0 - 1)
        hi = min(14, stride * (h1 - 1) + 2)
        xw = np.ascontiguousarray(x[:, :, lo:hi])
        gw = np.ascontiguousarray(g[:, :, h0:h1])
        wgrad_window(xw, gw, dw, stride, 1, (stride * h0 - 1 - lo, -1))
    assert_close(dw, conv2d_grad_weight_reference(x, g, 3, stride, 1), 2 * H * g.shape[3])


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_threads_same_result(threads, stride):
    x, w, g = operands(3, 5, 4, 16, 13, 3, 3, stride, 1, 1, np.float64, seed=2)
    kw = dict(block_cols=20, chunk_rows=11)
    dx1, dx2 = np.zeros(x.shape), np.zeros(x.shape)
    dgrad_window(g, w, dx1, stride, 1, (-1, -1), threads=1, **kw)
    dgrad_window(g, w, dx2, stride, 1, (-1, -1), threads=threads, **kw)
    np.testing.assert_allclose(dx2, dx1, rtol=1e-12, atol=1e-12)
    dw1, dw2 = np.zeros(w.shape), np.zeros(w.shape)
    wgrad_window(x, g, dw1, stride, 1, (-1, -1), threads=1, **kw)
    wgrad_window(x, g, dw2, stride, 1, (-1, -1), threads=threads, **kw)
    np.testing.assert_allclose(dw2, dw1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw1, conv2d_grad_weight_reference(x, g, 3, stride, 1),
                               rtol=1e-10)


@pytest.mark.parametrize("api", ["grad_input", "grad_weight", "dgrad_window", "wgrad_window",
                                 "ref_input", "ref_weight"])
@pytest.mark.parametrize("dt", [np.int8, np.uint8, np.int32])
def test_integer_training_refused(api, dt):
    x = np.ones((1, 2, 5, 5), dtype=dt)
    w = np.ones((3, 2, 3, 3), dtype=np.int8 if dt != np.int32 else dt)
    g = np.ones((1, 3, 3, 3), dtype=dt)
    calls = {
        "grad_input": lambda: conv2d_grad_input(g, w, x.shape),
        "grad_weight": lambda: conv2d_grad_weight(x, g, 3),
        "dgrad_window": lambda: dgrad_window(g, w, np.zeros(x.shape, np.int32)),
        "wgrad_window": lambda: wgrad_window(x, g, np.zeros(w.shape, np.int32)),
        "ref_input": lambda: conv2d_grad_input_reference(g, w, x.shape),
        "ref_weight": lambda: conv2d_grad_weight_reference(x, g, 3),
    }
    with pytest.raises(ValueError, match="integer"):
        calls[api]()
    # a float gradient with an integer weight/input is refused too
    if api == "grad_input":
        with pytest.raises(ValueError, match="integer"):
            conv2d_grad_input(g.astype(np.float32), w, x.shape)


@pytest.mark.parametrize("call,match", [
    (lambda x, w, g: conv2d_grad_input(g, w, (1, 2, 6, 5)), "forward output"),
    (lambda x, w, g: conv2d_grad_input(g, w, (1, 4, 5, 5)), "channels"),
    (lambda x, w, g: conv2d_grad_input(g, w, (1, 2, 5)), "input_shape"),
    (lambda x, w, g: conv2d_grad_input(g, w, x.shape, stride=0), "stride"),
    (lambda x, w, g: conv2d_grad_input(g, w, x.shape, padding=-1), "padding"),
    (lambda x, w, g: conv2d_grad_weight(x, g, 2), "forward output"),
    (lambda x, w, g: conv2d_grad_weight(x, g, (4, 2, 3, 3)), "does not match"),
    (lambda x, w, g: conv2d_grad_weight(x, g[0], 3), "4-D"),
    (lambda x, w, g: conv2d_grad_weight(x, g, 3, dilation=(1, 0)), "dilation"),
    (lambda x, w, g: dgrad_window(g, w, np.zeros(x.shape, np.float64)), "accumulator"),
    (lambda x, w, g: dgrad_window(g, w, np.zeros((1, 2, 5, 10), np.float32)[..., ::2]),
     "contiguous"),
    (lambda x, w, g: wgrad_window(x, g, np.zeros((3, 3, 3, 3), np.float32)), "match"),
])
def test_bad_input_rejected(call, match):
    x = np.ones((1, 2, 5, 5), dtype=np.float32)
    w = np.ones((3, 2, 3, 3), dtype=np.float32)
    g = np.ones((1, 3, 3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        call(x, w, g)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True),
                                             (True, True)])
@pytest.mark.parametrize("use_blas", [True, False])
def test_gemm_transposes(dt, trans_a, trans_b, use_blas):
    """blas.gemm with transposed operands on strided views, BLAS and numpy fallback."""
    rng = np.random.default_rng(1)
    M, N, Kd = 4, 6, 5

    def stored(rows, cols):   # a strided view (leading dimension > cols)
        return rng.standard_normal((rows + 2, cols + 3)).astype(dt)[1:rows + 1, 2:cols + 2]
    a = stored(Kd, M) if trans_a else stored(M, Kd)
    b = stored(N, Kd) if trans_b else stored(Kd, N)
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    c0 = stored(M, N)
    c = c0.copy()
    blas.gemm(a, b, c, 1.0, use_blas=use_blas, trans_a=trans_a, trans_b=trans_b)
    tol = 1e-5 if dt == np.float32 else 1e-12
    np.testing.assert_allclose(c, c0 + opa.astype(np.float64) @ opb, rtol=tol, atol=tol)
    blas.gemm(a, b, c, 0.0, use_blas=use_blas, trans_a=trans_a, trans_b=trans_b)
    np.testing.assert_allclose(c, opa.astype(np.float64) @ opb, rtol=tol, atol=tol)
