"""Backward (training) kernels: :func:`dgrad_window` and :func:`wgrad_window`.

Both reuse the forward machinery of :mod:`.window` (blocks of whole output rows,
reduction chunks, :func:`~.float_kernels.pack_panel`, the BLAS :func:`~.blas.gemm`); the
index math of a filter tap exists once (:func:`~.float_kernels.tap_columns`).

* **wgrad** ``dF[k, (c,r,s)] += sum_{(b,h,w)} dOut[b,k,h,w] * P[(c,r,s), (b,h,w)]`` where
  ``P`` is the forward im2col panel of the input window: per output block and reduction
  chunk one packed panel (the forward's packing; 1x1 stride-1 layers read ``x`` in place)
  and one GEMM ``dOut_block (K x cols) @ panel^T`` accumulated (``beta = 1``) into the
  ``K x C*R*S`` weight gradient.
* **dgrad**, stride 1: a forward convolution of ``dOut`` with the flipped, transposed
  filter (``F'[c,k,r',s'] = F[k,c,R-1-r',S-1-s']``, offset ``-dil*(R-1) - offset``), i.e.
  :func:`~.window.conv2d_window` itself with all its fast paths.
* **dgrad**, stride > 1: per output block and reduction chunk one GEMM ``F^T (chunk x K)
  @ dOut_block (K x cols)`` into a panel that :func:`~.float_kernels.col2im_add` (the
  adjoint of the packing) adds into the input gradient, dropping padding positions.

Floats only: float64 accumulates in float64, float16/bfloat16/float32 in float32 (the
forward's :func:`~.window.accumulator_dtype`); integer training raises ``ValueError``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .blas import gemm
from .float_kernels import col2im_add, pack_panel
from .threads import resolve_threads, single_threaded_blas
from .window import (
    BLOCK_COLS,
    CHUNK_ROWS,
    _decoder,
    _geometry,
    _pack_rows,
    _pair,
    accumulator_dtype,
    conv2d_window,
    direct_view,
    panel_sizes,
    plan_blocks,
    plan_chunks,
    workspace_bytes,
)

#: default block width (output columns per GEMM) of the backward kernels.
BWD_BLOCK_COLS = BLOCK_COLS
#: default reduction chunk (panel rows) of the backward kernels.
BWD_CHUNK_ROWS = CHUNK_ROWS


def training_accumulator(a_dtype, b_dtype, what: str = "training") -> np.dtype:
    """Accumulator dtype of a backward kernel; refuses integer dtypes.

    Raises
    ------
    ValueError
        For integer (or unsupported) dtypes.
    """
    for dt in (np.dtype(a_dtype), np.dtype(b_dtype)):
        if dt.kind in "iub":
            raise ValueError(f"{what}: integer {dt} is not supported (integer modes are "
                             "inference only; train in float32, float64, float16 or "
                             "bfloat16)")
    return accumulator_dtype(a_dtype, b_dtype)


def _arrays4(**arrays) -> None:
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(arr).__name__}")
        if arr.ndim != 4:
            raise ValueError(f"{name} must be 4-D, got shape {arr.shape}")


def _check_out(name: str, out: np.ndarray, shape, acc: np.dtype) -> None:
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape}, expected {tuple(shape)}")
    if out.dtype != acc:
        raise ValueError(f"{name} has dtype {out.dtype}; the accumulator is {acc}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be a writeable C-contiguous array")


def _setup(what: str, a: np.ndarray, b: np.ndarray, out_name: str, out: np.ndarray, stride,
           dilation, offset, block_cols, chunk_rows, threads):
    """The checks and normalisation the two window kernels share, in this order: the
    accumulator of ``a x b`` (floats only), ``out`` in it, the geometry, the threads.
    Returns ``(acc, (sh, sw, dh, dw, oh, ow), nthreads)``."""
    acc = training_accumulator(a.dtype, b.dtype, what)
    _check_out(out_name, out, out.shape, acc)
    geometry = _geometry(stride, dilation, offset, block_cols, chunk_rows)
    return acc, geometry, resolve_threads(threads)


def _out_block(gk, g_mat, code, lut, u0, nu, H, W, buf, direct_ok):
    """``dOut`` rows ``u0 .. u0+nu`` as a ``(K, nu*W)`` matrix in the accumulator dtype:
    a strided view of ``dOut`` when possible, else gathered (and decoded) into ``buf`` by
    the forward packing kernel with 1x1 geometry."""
    K = gk.shape[1]
    b0 = u0 // H
    ncols = nu * W
    if direct_ok and (u0 + nu - 1) // H == b0:
        h0 = u0 - b0 * H
        return g_mat[b0, :, h0 * W:h0 * W + ncols]
    mat = buf[:K * ncols].reshape(K, ncols)
    bits = mat.view(np.uint32) if mat.dtype == np.float32 else mat.view(np.uint64)
    pack_panel(gk, mat, bits, lut, code, 0, K, u0, nu, H, W, 1, 1, 1, 1, 1, 1, 0, 0)
    return mat


def _run_parts(nthreads: int, parts: list, fn) -> list:
    with single_threaded_blas():
        if nthreads == 1 or len(parts) == 1:
            return [fn(p) for p in parts]
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            return [f.result() for f in [pool.submit(fn, p) for p in parts]]


def wgrad_window(x: np.ndarray, grad_out: np.ndarray, grad_w: np.ndarray, stride=1,
                 dilation=1, offset=(0, 0), accumulate: bool = True,
                 threads: int | None = None, *, block_cols: int = BWD_BLOCK_COLS,
                 chunk_rows: int = BWD_CHUNK_ROWS) -> None:
    """Weight gradient over a window of the input, accumulated into ``grad_w`` in place.

    ``grad_w[k,c,r,s] (+)= sum_{b,h,w} x[b, c, sh*h + dh*r + offset[0], sw*w + dw*s +
    offset[1]] * grad_out[b,k,h,w]`` (indices outside ``x`` read zero), the adjoint of
    :func:`~.window.conv2d_window` with respect to its weight.

    Parameters
    ----------
    x : ndarray (B, C, Hx, Wx)
        float16, bfloat16, float32 or float64 (the input window of the forward call).
    grad_out : ndarray (B, K, H, W)
        Float gradient of the forward output.
    grad_w : ndarray (K, C, R, S), C-contiguous
        In the accumulator dtype of ``(x, grad_out)``: float64 if either is float64, else
        float32. Its ``(R, S)`` gives the filter size.
    stride, dilation : int or pair, >= 1
    offset : int or pair (any sign)
    accumulate : bool
        Add to ``grad_w`` (default, e.g. over several windows) or overwrite it.
    threads : int, optional
        Worker threads (default ``$PARCONV_THREADS`` or 1); each extra worker sums into a
        private ``K x C*R*S`` buffer.
    block_cols, chunk_rows : int
        Tuning: output columns per GEMM (the GEMM's reduction) and panel rows per chunk.

    Raises
    ------
    ValueError
        On a shape, dtype (integers: training is float only) or parameter problem.
    """
    _arrays4(x=x, grad_out=grad_out, grad_w=grad_w)
    B, C = x.shape[:2]
    K, Cw, R, S = grad_w.shape
    if Cw != C or grad_out.shape[0] != B or grad_out.shape[1] != K:
        raise ValueError(f"shapes do not match: x {x.shape}, grad_out {grad_out.shape}, "
                         f"grad_w {grad_w.shape}")
    acc, (sh, sw, dh, dw, oh, ow), nthreads = _setup(
        "weight gradient", x, grad_out, "grad_w", grad_w, stride, dilation, offset,
        block_cols, chunk_rows, threads)
    H, W = grad_out.shape[2:]
    if not accumulate:
        grad_w[...] = 0
    if (grad_w.size == 0 or grad_out.size == 0 or x.shape[2] == 0 or x.shape[3] == 0):
        return
    x = np.ascontiguousarray(x)
    g = np.ascontiguousarray(grad_out)
    xk, xcode, xlut = _decoder(x, acc)
    gk, gcode, glut = _decoder(g, acc)
    g_direct = gcode == 0 and g.dtype == acc
    g_mat = g.reshape(B, K, H * W)
    rows = C * R * S
    x_view = direct_view(x, R, S, H, W, (sh, sw), (oh, ow), acc)
    blocks = (plan_blocks(B, H, W, block_cols) if x_view is None
              else [(b * H, H) for b in range(B)])
    chunks = plan_chunks(rows, chunk_rows)
    max_rows = max(q1 - q0 for q0, q1 in chunks)
    max_cols = max(n for _, n in blocks) * W
    geometry = (H, W, R, S, sh, sw, dh, dw, oh, ow)
    gw_mat = grad_w.reshape(K, rows)

    def run(part):
        block_list, target = part
        panel_buf = np.empty(0 if x_view is not None else max_rows * max_cols, dtype=acc)
        gbuf = np.empty(K * max_cols, dtype=acc)
        for u0, nu in block_list:
            ncols = nu * W
            gblock = _out_block(gk, g_mat, gcode, glut, u0, nu, H, W, gbuf, g_direct)
            for q0, q1 in chunks:
                if x_view is not None:
                    b0 = u0 // H
                    h0 = u0 - b0 * H
                    panel = x_view[b0, q0:q1, h0 * W:h0 * W + ncols]
                else:
                    panel = panel_buf[:(q1 - q0) * ncols].reshape(q1 - q0, ncols)
                    _pack_rows(xk, panel, xlut, xcode, u0, nu, q0, q1, geometry)
                gemm(gblock, panel, target[:, q0:q1], 1.0, trans_b=True)
        return target

    n = min(nthreads, len(blocks))
    parts = [(blocks[i::n], gw_mat if i == 0 else np.zeros((K, rows), dtype=acc))
             for i in range(n)]
    results = _run_parts(n, parts, run)
    for extra in results[1:]:
        gw_mat += extra


def dgrad_window(grad_out: np.ndarray, w: np.ndarray, grad_x: np.ndarray, stride=1,
                 dilation=1, offset=(0, 0), accumulate: bool = True,
                 threads: int | None = None, *, block_cols: int = BWD_BLOCK_COLS,
                 chunk_rows: int = BWD_CHUNK_ROWS) -> None:
    """Input gradient over a window of the input, accumulated into ``grad_x`` in place.

    ``grad_x[b, c, sh*h + dh*r + offset[0], sw*w + dw*s + offset[1]] (+)= grad_out[b,k,h,w]
    * w[k,c,r,s]`` summed over ``k, r, s`` (and ``h, w``); positions outside ``grad_x``
    (padding, or another rank's window) are dropped. The adjoint of
    :func:`~.window.conv2d_window` with respect to its input window.

    Parameters
    ----------
    grad_out : ndarray (B, K, H, W)
        Float gradient of the forward output.
    w : ndarray (K, C, R, S)
        Float filter.
    grad_x : ndarray (B, C, Hx, Wx), C-contiguous
        In the accumulator dtype of ``(grad_out, w)`` (float64 if either is float64, else
        float32); casting to the activation dtype is the caller's.
    stride, dilation : int or pair, >= 1
    offset : int or pair (any sign)
    accumulate : bool
        Add to ``grad_x`` (default: overlapping windows sum up) or overwrite it.
    threads : int, optional
        Worker threads (default ``$PARCONV_THREADS`` or 1): output blocks (stride 1) or
        input-channel ranges (stride > 1) are split over the workers.
    block_cols, chunk_rows : int
        Tuning, as for :func:`~.window.conv2d_window`.

    Raises
    ------
    ValueError
        On a shape, dtype (integers: training is float only) or parameter problem.
    """
    _arrays4(grad_out=grad_out, w=w, grad_x=grad_x)
    B, K = grad_out.shape[:2]
    Kw, C, R, S = w.shape
    if Kw != K or grad_x.shape[0] != B or grad_x.shape[1] != C:
        raise ValueError(f"shapes do not match: grad_out {grad_out.shape}, w {w.shape}, "
                         f"grad_x {grad_x.shape}")
    acc, (sh, sw, dh, dw, oh, ow), nthreads = _setup(
        "input gradient", grad_out, w, "grad_x", grad_x, stride, dilation, offset,
        block_cols, chunk_rows, threads)
    H, W = grad_out.shape[2:]
    if grad_x.size == 0:
        return
    if grad_out.size == 0 or R == 0 or S == 0:
        if not accumulate:
            grad_x[...] = 0
        return
    if sh == 1 and sw == 1:
        # a stride-1 convolution of grad_out with the flipped, transposed filter
        wt = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        conv2d_window(grad_out, wt, grad_x, 1, (dh, dw), (-dh * (R - 1) - oh,
                                                          -dw * (S - 1) - ow),
                      accumulate, nthreads, block_cols=block_cols, chunk_rows=chunk_rows)
        return
    if not accumulate:
        grad_x[...] = 0
    g = np.ascontiguousarray(grad_out)
    gk, gcode, glut = _decoder(g, acc)
    g_direct = gcode == 0 and g.dtype == acc
    g_mat = g.reshape(B, K, H * W)
    rows = C * R * S
    wm = np.ascontiguousarray(w, dtype=acc).reshape(K, rows)
    blocks = plan_blocks(B, H, W, block_cols)
    max_cols = max(n for _, n in blocks) * W
    # workers own disjoint input-channel ranges (col2im of different channels never
    # touches the same element); chunks never exceed chunk_rows rows
    n = max(1, min(nthreads, C))
    bounds = [C * i // n for i in range(n + 1)]
    parts = []
    for c0, c1 in zip(bounds[:-1], bounds[1:]):
        q_lo, q_hi = c0 * R * S, c1 * R * S
        parts.append([(q_lo + a, q_lo + b) for a, b in plan_chunks(q_hi - q_lo, chunk_rows)])
    max_rows = max(q1 - q0 for part in parts for q0, q1 in part)

    def run(chunks):
        panel_buf = np.empty(max_rows * max_cols, dtype=acc)
        gbuf = np.empty(K * max_cols, dtype=acc)
        for u0, nu in blocks:
            ncols = nu * W
            gblock = _out_block(gk, g_mat, gcode, glut, u0, nu, H, W, gbuf, g_direct)
            for q0, q1 in chunks:
                panel = panel_buf[:(q1 - q0) * ncols].reshape(q1 - q0, ncols)
                gemm(wm[:, q0:q1], gblock, panel, 0.0, trans_a=True)
                col2im_add(grad_x, panel, q0, q1, u0, nu, H, W, R, S, sh, sw, dh, dw, oh, ow)

    _run_parts(n, parts, run)


def wgrad_workspace_bytes(B, K, C, H, W, R, S, x_rows, x_cols, x_dtype, g_dtype,
                          direct=False, *, block_cols: int = BWD_BLOCK_COLS,
                          chunk_rows: int = BWD_CHUNK_ROWS):
    """Bytes :func:`wgrad_window` allocates besides its arguments, one worker
    (vectorised over the integer arguments): a packing panel ``max_rows x max_cols``
    (none when ``direct``: the 1x1 stride-1 window read in place) and the ``K x max_cols``
    gradient block buffer, in the accumulator dtype. ``x_rows x x_cols`` is the window;
    zero when the filter gradient, the output gradient or the window is empty."""
    acc = training_accumulator(x_dtype, g_dtype, "weight gradient")
    B, K, C, H, W, R, S, x_rows, x_cols = (np.asarray(v, dtype=np.int64)
                                           for v in (B, K, C, H, W, R, S, x_rows, x_cols))
    max_rows, max_cols, _, _ = panel_sizes(B, C, H, W, R, S, direct, block_cols, chunk_rows)
    panel = np.where(np.asarray(direct, dtype=bool), 0, max_rows * max_cols)
    total = (panel + K * max_cols) * acc.itemsize
    empty = (K * C * R * S == 0) | (B * K * H * W == 0) | (x_rows * x_cols == 0)
    return np.where(empty, 0, total)


def dgrad_workspace_bytes(B, K, C, H, W, R, S, x_rows, x_cols, stride, g_dtype, w_dtype,
                          direct=False, *, block_cols: int = BWD_BLOCK_COLS,
                          chunk_rows: int = BWD_CHUNK_ROWS):
    """Bytes :func:`dgrad_window` allocates besides its arguments, one worker
    (vectorised over the integer arguments). ``K``: output channels of the layer (of
    ``grad_out``), ``C``: input channels (of ``grad_x``), ``x_rows x x_cols``: the
    input-gradient window.

    Stride 1: the flipped, transposed filter copy (``w`` dtype; none when that view is
    already contiguous) plus :func:`~.window.workspace_bytes` of the forward convolution
    ``grad_out * F'`` (``direct``: its 1x1 in-place path). Stride > 1: the packing panel
    and the ``K x max_cols`` gradient block buffer in the accumulator dtype, plus a copy
    of the filter in the accumulator dtype when its dtype differs. Zero when ``grad_x`` or
    ``grad_out`` is empty.
    """
    acc = training_accumulator(g_dtype, w_dtype, "input gradient")
    B, K, C, H, W, R, S, x_rows, x_cols = (np.asarray(v, dtype=np.int64)
                                           for v in (B, K, C, H, W, R, S, x_rows, x_cols))
    sh, sw = _pair("stride", stride)
    empty = (B * C * x_rows * x_cols == 0) | (B * K * H * W == 0) | (R * S == 0)
    if sh == 1 and sw == 1:
        contiguous = ((K == 1) | (C == 1)) & (R == 1) & (S == 1)
        wt = np.where(contiguous, 0, K * C * R * S * np.dtype(w_dtype).itemsize)
        conv = workspace_bytes(B, C, K, x_rows, x_cols, R, S, g_dtype, w_dtype, direct,
                               block_cols=block_cols, chunk_rows=chunk_rows)
        return np.where(empty, 0, wt + conv)
    max_rows, max_cols, _, _ = panel_sizes(B, C, H, W, R, S, False, block_cols, chunk_rows)
    wm = K * C * R * S if np.dtype(w_dtype) != acc else 0
    total = (max_rows * max_cols + K * max_cols + wm) * acc.itemsize
    return np.where(empty, 0, total)
