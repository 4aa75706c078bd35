"""The kernels' entry point: :func:`conv2d_window`, a small-buffer implicit GEMM.

The output is cut into *blocks* of whole output rows (``u = b*H + h`` row units; a block
stays inside one image unless images are smaller than a block) and the reduction
``(c, r, s)`` into *chunks* of rows. Per block and chunk a numba kernel packs a bounded
im2col panel (``chunk_rows x block_cols``, decoding 16-bit/int inputs on the fly), one
BLAS GEMM (:func:`parconv.kernels.blas.gemm`, ``beta = 1`` for later chunks) multiplies
the packed weights by it, and the result lands in the NCHW output: directly (a strided
view of the output as the GEMM's ``C``) for float blocks inside one image, otherwise in a
``K x block_cols`` buffer that a numba scatter adds into the output (floats once per
block, integers once per exact chunk). No full im2col buffer
is ever built: the extra memory is one panel (``chunk_rows x block_cols``) plus one
``K x block_cols`` buffer per worker, plus a ``K x chunk_rows`` buffer for weights that are
not already float32/float64 (int8, float16, bfloat16: converted chunk by chunk). 1x1
stride-1 layers whose input rows are whole read ``x`` in place: no panel at all.

Integer inputs run by default (x86-64 with AVX2) on the exact 16-bit SIMD kernel of
:mod:`.int_simd` (:func:`_int_simd`: same blocks, int8 panels interleaved in pairs,
``vpmaddwd`` tiles into int32); ``int_kernel='float'`` / ``PARCONV_INT_KERNEL=float`` (and
the default elsewhere) keeps the exact float32-chunk path of :mod:`.int_kernels`.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np

from .blas import gemm
from .float_kernels import pack_panel, scatter_float
from .int_kernels import INT_INPUTS, INT_WEIGHTS, exact_chunk_rows, scatter_int
from .int_simd import (
    MR,
    NR,
    chunk_table,
    gemm_chunk,
    pack_strips,
    pack_weight_pairs,
    packed_weight_words,
    scatter_images,
)
from .threads import resolve_threads, single_threaded_blas

#: default block width (output columns per GEMM) and float reduction chunk (panel rows).
BLOCK_COLS = 1024
CHUNK_ROWS = 1024
#: smallest image (output columns) for which 1x1 stride-1 GEMMs read the input in place.
DIRECT_MIN_COLS = 256
#: integer SIMD path: longest reduction chunk (a block's panel, chunk x cols bytes, and
#: its strips stay in L2; one 6-filter weight tile, 12 * chunk bytes, in L1).
INT_CHUNK_ROWS = 512
#: environment variable choosing the integer kernel (``simd`` / ``float`` / ``auto``).
INT_KERNEL_ENV = "PARCONV_INT_KERNEL"
INT_KERNELS = ("simd", "float")

_F16 = np.dtype(np.float16)
_BF16 = np.dtype(ml_dtypes.bfloat16)
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
FLOAT_DTYPES = (_F16, _BF16, _F32, _F64)
_LUTS: dict[np.dtype, np.ndarray] = {}
_DUMMY_LUT = np.zeros(1, dtype=np.float32)


def accumulator_dtype(x_dtype, w_dtype) -> np.dtype:
    """Accumulator dtype for an input/weight dtype pair.

    int8/uint8 x int8 -> int32; float64 on either side -> float64; other floats
    (float16, bfloat16, float32) -> float32.

    Raises
    ------
    ValueError
        For unsupported dtypes or an integer/float mix.
    """
    xd, wd = np.dtype(x_dtype), np.dtype(w_dtype)
    if xd in INT_INPUTS or wd in INT_WEIGHTS or wd in INT_INPUTS:
        if xd not in INT_INPUTS or wd not in INT_WEIGHTS:
            raise ValueError(f"integer convolution needs int8/uint8 input and int8 weight, got "
                             f"input {xd} and weight {wd}")
        return np.dtype(np.int32)
    for role, dt in (("input", xd), ("weight", wd)):
        if dt not in FLOAT_DTYPES:
            raise ValueError(f"unsupported {role} dtype {dt}; supported: float16, bfloat16, "
                             "float32, float64, int8, uint8 (input) / int8 (weight)")
    return _F64 if _F64 in (xd, wd) else _F32


def _lut(dt: np.dtype) -> np.ndarray:
    """float32 value of every 16-bit pattern of ``dt``."""
    if dt not in _LUTS:
        _LUTS[dt] = np.arange(65536, dtype=np.uint16).view(dt).astype(np.float32)
    return _LUTS[dt]


def _decoder(x: np.ndarray, panel_dtype: np.dtype):
    """(array numba can read, decode code, lut) for the packing kernel."""
    if x.dtype == _BF16 and panel_dtype == _F32:
        return x.view(np.uint16), 1, _DUMMY_LUT
    if x.dtype in (_BF16, _F16):
        return x.view(np.uint16), 2, _lut(x.dtype)
    return x, 0, _DUMMY_LUT


def _pair(name: str, value) -> tuple[int, int]:
    try:
        a, b = (value, value) if np.ndim(value) == 0 else tuple(value)
        return int(a), int(b)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None


def _geometry(stride, dilation, offset, block_cols, chunk_rows):
    """``(sh, sw, dh, dw, oh, ow)`` of a window kernel's geometry arguments, validated."""
    sh, sw = _pair("stride", stride)
    dh, dw = _pair("dilation", dilation)
    oh, ow = _pair("offset", offset)
    if min(sh, sw, dh, dw) < 1:
        raise ValueError(f"stride {(sh, sw)} and dilation {(dh, dw)} must be >= 1")
    if block_cols < 1 or chunk_rows < 1:
        raise ValueError("block_cols and chunk_rows must be >= 1")
    return sh, sw, dh, dw, oh, ow


def simd_supported() -> bool:
    """True where the 16-bit SIMD integer kernel is the default: an x86-64 host with AVX2
    (its ``vpmaddwd`` runs 16 multiply-adds per instruction). Elsewhere the generic IR
    still compiles to exact code, but the float32-chunk path (BLAS) is the safe default."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        from llvmlite import binding as llvm

        return "+avx2" in llvm.get_host_cpu_features().flatten().split(",")
    except Exception:  # noqa: BLE001 - any failure means: use the portable path
        return False


_SIMD_DEFAULT = simd_supported()


def resolve_int_kernel(kernel: str | None = None) -> str:
    """Integer kernel for a call: ``kernel``, else ``$PARCONV_INT_KERNEL``, else ``auto``;
    ``auto`` is ``simd`` where :func:`simd_supported`, else ``float``.

    Raises
    ------
    ValueError
        For a value other than ``auto``, ``simd`` or ``float``.
    """
    import os

    source = "int_kernel"
    if kernel is None:
        source = INT_KERNEL_ENV
        kernel = os.environ.get(INT_KERNEL_ENV, "").strip() or "auto"
    if kernel == "auto":
        return "simd" if _SIMD_DEFAULT else "float"
    if kernel not in INT_KERNELS:
        raise ValueError(f"{source} must be 'auto', 'simd' or 'float', got {kernel!r}")
    return kernel


def plan_blocks(B: int, H: int, W: int, block_cols: int) -> list[tuple[int, int]]:
    """Output row-unit blocks ``(u0, nunits)`` of about ``block_cols`` columns each."""
    if H * W >= block_cols:
        per_img = math.ceil(H * W / block_cols)
        rows = math.ceil(H / per_img)
        return [(b * H + h, min(rows, H - h)) for b in range(B) for h in range(0, H, rows)]
    nblocks = math.ceil(B * H * W / block_cols)
    imgs = math.ceil(B / nblocks)
    return [(b * H, (min(b + imgs, B) - b) * H) for b in range(0, B, imgs)]


def plan_chunks(rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    """Balanced reduction chunks ``(q0, q1)`` of at most ``chunk_rows`` rows."""
    n = math.ceil(rows / chunk_rows)
    step = math.ceil(rows / n)
    return [(q, min(q + step, rows)) for q in range(0, rows, step)]


def direct_view(x: np.ndarray, R: int, S: int, H: int, W: int, stride, offset,
                panel_dtype: np.dtype) -> np.ndarray | None:
    """``x`` as the ``(B, C, H*W)`` im2col matrix when no packing is needed (1x1, stride
    1, whole input rows, ``x`` already in the panel dtype, images of at least
    :data:`DIRECT_MIN_COLS` outputs), else None."""
    (sh, sw), (oh, ow) = stride, offset
    if (R == 1 and S == 1 and sh == 1 and sw == 1 and ow == 0 and x.shape[3] == W
            and 0 <= oh and oh + H <= x.shape[2] and x.dtype == panel_dtype
            and H * W >= DIRECT_MIN_COLS and x.flags.c_contiguous):
        return x.reshape(x.shape[0], x.shape[1], x.shape[2] * W)[:, :, oh * W:(oh + H) * W]
    return None


def conv2d_window(x: np.ndarray, w: np.ndarray, out: np.ndarray, stride=1, dilation=1,
                  offset=(0, 0), accumulate: bool = False, threads: int | None = None,
                  *, block_cols: int = BLOCK_COLS, chunk_rows: int = CHUNK_ROWS,
                  int_kernel: str | None = None) -> None:
    """Local convolution over a window of the input, written into ``out`` in place.

    ``out[b,k,h,w] (+)= sum_{c,r,s} x[b, c, sh*h + dh*r + offset[0], sw*w + dw*s +
    offset[1]] * w[k,c,r,s]``, with every index outside ``x`` reading zero (a negative
    offset or a short ``x`` is implicit padding).

    Parameters
    ----------
    x : ndarray (B, C, Hx, Wx)
        float16, bfloat16, float32, float64, int8 or uint8.
    w : ndarray (K, C, R, S)
        float dtype for float ``x``, int8 for integer ``x``.
    out : ndarray (B, K, H, W)
        In the accumulator dtype (:func:`accumulator_dtype`): float32, float64 or int32.
        Each ``out[b, k]`` plane must be C-contiguous (unit column stride, rows of ``W``);
        ``b`` and ``k`` may have any strides, e.g. ``out = buf.transpose(1, 0, 2, 3)`` of a
        C-contiguous ``(K, B, H, W)`` buffer (the layout a reduce-scatter over ``k`` needs).
    stride, dilation : int or pair, >= 1
    offset : int or pair (any sign)
    accumulate : bool
        Add to ``out`` instead of overwriting it.
    threads : int, optional
        Worker threads (default ``$PARCONV_THREADS`` or 1), see :mod:`.threads`.
    block_cols, chunk_rows : int
        Tuning: output columns per GEMM block and panel rows per reduction chunk (the
        integer paths cap chunks at :data:`INT_CHUNK_ROWS` (SIMD) or the float32-exact
        length (float)).
    int_kernel : {'auto', 'simd', 'float'}, optional
        Integer inputs only: ``simd`` = exact 16-bit multiply-add kernel
        (:mod:`.int_simd`), ``float`` = exact float32 chunks through BLAS; default
        ``$PARCONV_INT_KERNEL`` or ``auto`` (:func:`resolve_int_kernel`).

    Raises
    ------
    ValueError
        On a shape, dtype or parameter problem (named in the message). Integer int32
        overflow is *not* checked here (it wraps modulo 2**32); see
        :func:`parconv.kernels.int32_safe_reduction` and :func:`parconv.conv2d`.
    """
    if not (isinstance(x, np.ndarray) and isinstance(w, np.ndarray) and isinstance(out, np.ndarray)):
        raise ValueError("x, w and out must be numpy arrays")
    if x.ndim != 4 or w.ndim != 4 or out.ndim != 4:
        raise ValueError(f"x, w, out must be 4-D (NCHW, OIHW, NKHW), got shapes {x.shape}, "
                         f"{w.shape}, {out.shape}")
    B, C = x.shape[:2]
    K, Cw, R, S = w.shape
    if Cw != C:
        raise ValueError(f"x has {C} channels but w expects {Cw}")
    if out.shape[0] != B or out.shape[1] != K:
        raise ValueError(f"out shape {out.shape} does not match batch {B} and {K} filters")
    acc = accumulator_dtype(x.dtype, w.dtype)
    if out.dtype != acc:
        raise ValueError(f"out has dtype {out.dtype}; the accumulator for {x.dtype} x {w.dtype} "
                         f"is {acc}")
    if not out.flags.writeable or not _planes_contiguous(out):
        raise ValueError("out must be writeable with C-contiguous (H, W) planes")
    sh, sw, dh, dw, oh, ow = _geometry(stride, dilation, offset, block_cols, chunk_rows)
    nthreads = resolve_threads(threads)
    int_path = resolve_int_kernel(int_kernel) if acc.kind == "i" else None
    H, W = out.shape[2:]
    if out.size == 0:
        return
    if C == 0 or R == 0 or S == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        if not accumulate:
            out[...] = 0
        return

    integer = acc.kind == "i"
    panel_dtype = _F32 if integer else acc
    x = np.ascontiguousarray(x)
    if int_path == "simd":
        _int_simd(x, w, out, (H, W, R, S, sh, sw, dh, dw, oh, ow), accumulate, nthreads,
                  block_cols, chunk_rows)
        return
    xk, code, lut = _decoder(x, panel_dtype)
    rows = C * R * S
    # float32/float64 weights are used in place; others are converted chunk by chunk
    # into a K x chunk buffer (never a full-size copy).
    convert_w = not (w.dtype == panel_dtype and w.flags.c_contiguous)
    wm = np.ascontiguousarray(w).reshape(K, rows)
    if integer:
        chunk_rows = min(chunk_rows, exact_chunk_rows(x.dtype, w.dtype))
    chunks = plan_chunks(rows, chunk_rows)
    blocks = plan_blocks(B, H, W, block_cols)
    # 1x1, stride 1, whole input rows: the GEMM reads x itself, nothing is packed.
    x_view = direct_view(x, R, S, H, W, (sh, sw), (oh, ow), panel_dtype)
    if x_view is not None:
        blocks = [(b * H, H) for b in range(B)]
    max_rows = max(q1 - q0 for q0, q1 in chunks)
    max_cols = max(n for _, n in blocks) * W
    out_mat = out.view()
    out_mat.shape = (B, K, H * W)   # a view (raises instead of copying)
    geometry = (H, W, R, S, sh, sw, dh, dw, oh, ow)

    def run(block_list):
        panel_buf = np.empty(0 if x_view is not None else max_rows * max_cols, dtype=panel_dtype)
        need_tmp = integer or any((u0 + nu - 1) // H != u0 // H for u0, nu in block_list)
        tmp_buf = np.empty(K * max_cols if need_tmp else 0, dtype=panel_dtype)
        wsrc, wbuf = wm, None
        if convert_w:
            wbuf = np.empty(K * max_rows, dtype=panel_dtype)
            if len(chunks) == 1:   # convert once per worker
                wsrc = wbuf.reshape(K, rows)
                np.copyto(wsrc, wm, casting="unsafe")
                wbuf = None
        for u0, nu in block_list:
            _block(xk, x_view, wsrc, wbuf, out, out_mat, lut, code, integer, accumulate,
                   chunks, u0, nu, geometry, panel_buf, tmp_buf)

    with single_threaded_blas():
        if nthreads == 1 or len(blocks) == 1:
            run(blocks)
        else:
            n = min(nthreads, len(blocks))
            parts = [blocks[i::n] for i in range(n)]
            with ThreadPoolExecutor(max_workers=n) as pool:
                for fut in [pool.submit(run, p) for p in parts]:
                    fut.result()


def _int_simd(x, w, out, geometry, accumulate, nthreads, block_cols, chunk_rows) -> None:
    """Integer convolution on the 16-bit SIMD kernel (:mod:`.int_simd`): weights packed
    once per call (int16 pairs), per output block and reduction chunk one panel in the
    pair-interleaved strip layout and one :func:`gemm_chunk` into ``out`` (blocks inside
    one image) or into a ``K x cols`` int32 buffer scattered afterwards."""
    H, W, R, S, sh, sw, dh, dw, oh, ow = geometry
    B, C = x.shape[:2]
    K = w.shape[0]
    rows = C * R * S
    chunks = plan_chunks(rows, min(chunk_rows, INT_CHUNK_ROWS))
    table = chunk_table(chunks)
    ap = np.empty(packed_weight_words(K, chunks), dtype=np.int32)
    pack_weight_pairs(np.ascontiguousarray(w).reshape(K, rows), ap, table)
    kblocks = -(-K // MR)
    a_base, base = [], 0
    for q0, q1 in chunks:
        a_base.append(base)
        base += kblocks * ((q1 - q0 + 1) // 2) * MR
    blocks = plan_blocks(B, H, W, block_cols)
    max_rows = max(q1 - q0 for q0, q1 in chunks)
    max_pairs = (max_rows + 1) // 2
    max_cols = max(n for _, n in blocks) * W
    width = -(-max_cols // NR) * NR
    out_mat = out.view()
    out_mat.shape = (B, K, H * W)
    Hx, Wx = x.shape[2:]
    # 1x1, stride 1, whole input rows: panel rows are stretches of x itself
    direct = (R == 1 and S == 1 and sh == 1 and sw == 1 and ow == 0 and Wx == W
              and 0 <= oh and oh + H <= Hx)
    xflat = x.reshape(-1)
    zero = np.zeros(NR, dtype=x.dtype)
    dummy_bits = np.zeros(1, dtype=np.uint32)

    def run(block_list):
        strips = np.empty(width * 2 * max_pairs, dtype=x.dtype)
        spans = any((u0 + nu - 1) // H != u0 // H for u0, nu in block_list)
        panel_buf = np.empty(0 if direct and not spans else max_rows * max_cols, dtype=x.dtype)
        scratch = np.empty((MR, NR), dtype=np.int32)
        tmp_buf = np.empty(K * max_cols if spans else 0, dtype=np.int32)
        for u0, nu in block_list:
            ncols = nu * W
            b0 = u0 // H
            h0 = u0 - b0 * H
            inside = (u0 + nu - 1) // H == b0
            if inside:
                cmat = out_mat[b0, :, h0 * W:h0 * W + ncols]
            else:
                cmat = tmp_buf[:K * ncols].reshape(K, ncols)
            for t, (q0, q1) in enumerate(chunks):
                npairs = (q1 - q0 + 1) // 2
                if direct and inside:
                    src, off, ld = xflat, ((b0 * C + q0) * Hx + oh + h0) * W, Hx * W
                else:
                    panel = panel_buf[:(q1 - q0) * ncols].reshape(q1 - q0, ncols)
                    pack_panel(x, panel, dummy_bits, _DUMMY_LUT, 0, q0, q1, u0, nu, H, W, R,
                               S, sh, sw, dh, dw, oh, ow)
                    src, off, ld = panel_buf, 0, ncols
                pack_strips(src, off, ld, q1 - q0, ncols, strips, zero)
                assign = t == 0 and not (inside and accumulate)
                gemm_chunk(ap, a_base[t], strips, npairs, K, ncols, cmat, assign, scratch)
            if not inside:   # a block spanning images holds whole images
                scatter_images(out_mat, cmat, b0, nu // H, not accumulate)

    if nthreads == 1 or len(blocks) == 1:
        run(blocks)
    else:
        n = min(nthreads, len(blocks))
        with ThreadPoolExecutor(max_workers=n) as pool:
            for fut in [pool.submit(run, blocks[i::n]) for i in range(n)]:
                fut.result()


def _planes_contiguous(out: np.ndarray) -> bool:
    """True when every ``out[b, k]`` (H, W) plane is C-contiguous."""
    H, W = out.shape[2:]
    item = out.itemsize
    return (W <= 1 or out.strides[3] == item) and (H <= 1 or out.strides[2] == W * item)


def panel_sizes(B, C, H, W, R, S, direct=False, block_cols: int = BLOCK_COLS,
                chunk_rows: int = CHUNK_ROWS):
    """``(max_rows, max_cols, n_blocks, spans)`` of the packing geometry (vectorised): the
    largest reduction chunk of :func:`plan_chunks` over ``C·R·S`` rows, the widest output
    block of :func:`plan_blocks` (whole images when ``direct``), the number of blocks and
    whether a block spans several images. Shared by the forward and backward workspace
    formulas."""
    B, C, H, W, R, S = (np.asarray(v, dtype=np.int64) for v in (B, C, H, W, R, S))
    rows = C * R * S
    n_chunks = -(-rows // chunk_rows)
    max_rows = np.where(rows > 0, -(-rows // np.maximum(n_chunks, 1)), 0)
    hw = H * W
    big = hw >= block_cols
    per_img = -(-hw // block_cols)
    units = -(-H // np.maximum(per_img, 1))
    n_blocks_small = np.maximum(-(-(B * hw) // block_cols), 1)
    imgs = np.minimum(-(-B // n_blocks_small), B)
    direct = np.asarray(direct, dtype=bool)
    max_cols = np.where(direct, hw, np.where(big, units * W, imgs * hw))
    n_blocks = np.where(direct, B, np.where(big, B * -(-H // np.maximum(units, 1)),
                                            -(-B // np.maximum(imgs, 1))))
    spans = ~direct & ~big & (imgs > 1)
    return max_rows, max_cols, n_blocks, spans


def workspace_bytes(B, K, C, H, W, R, S, x_dtype, w_dtype, direct=False, threads: int = 1,
                    block_cols: int = BLOCK_COLS, chunk_rows: int = CHUNK_ROWS,
                    int_kernel: str | None = None):
    """Bytes :func:`conv2d_window` allocates besides its arguments (numpy-vectorised over
    the integer arguments).

    Per worker: one packing panel ``max_rows x max_cols`` (none when ``direct``: the 1x1
    stride-1 path that reads ``x`` in place), a ``K x max_cols`` buffer when a block spans
    images or the inputs are integers, and a ``K x max_rows`` weight-conversion buffer
    for weights not in the panel dtype; ``max_rows`` / ``max_cols`` are the largest
    reduction chunk and output block of :func:`plan_chunks` / :func:`plan_blocks`. Zero
    when the output or the reduction is empty. Workers: ``min(threads, blocks)``.

    Integer inputs on the SIMD kernel (``int_kernel`` resolved as by
    :func:`conv2d_window`): the packed weights once per call (int16, ``K`` rounded up to
    the 6-row tile, every chunk rounded up to an even length), and per worker the
    pair-interleaved panel (``16*ceil(cols/16)`` x even chunk bytes), the row-major
    panel it is interleaved from (none when ``direct``: 1x1 stride-1 blocks inside one
    image interleave ``x`` itself), an edge tile and the ``K x max_cols`` int32 buffer
    when a block spans images.
    """
    acc = accumulator_dtype(x_dtype, w_dtype)
    integer = acc.kind == "i"
    panel_dt = _F32 if integer else acc
    B, K, C, H, W, R, S = (np.asarray(v, dtype=np.int64) for v in (B, K, C, H, W, R, S))
    if integer and resolve_int_kernel(int_kernel) == "simd":
        return _simd_workspace(B, K, C, H, W, R, S, threads, block_cols,
                               min(chunk_rows, INT_CHUNK_ROWS), direct)
    if integer:   # the float32-chunk path always packs
        chunk_rows = min(chunk_rows, exact_chunk_rows(x_dtype, w_dtype))
        direct = False
    rows = C * R * S
    hw = H * W
    direct = np.asarray(direct, dtype=bool)
    max_rows, max_cols, n_blocks, spans = panel_sizes(B, C, H, W, R, S, direct, block_cols,
                                                      chunk_rows)
    panel = np.where(direct, 0, max_rows * max_cols)
    tmp = np.where(spans | integer, K * max_cols, 0)
    convert = np.dtype(w_dtype) != panel_dt
    wbuf = K * max_rows if convert else 0
    workers = np.minimum(threads, np.maximum(n_blocks, 1))
    total = workers * (panel + tmp + wbuf) * panel_dt.itemsize
    empty = (B * K * hw == 0) | (rows == 0)
    return np.where(empty, 0, total)


def _simd_workspace(B, K, C, H, W, R, S, threads, block_cols, chunk_rows, direct):
    """:func:`workspace_bytes` of the integer SIMD path (int64 numpy arguments)."""
    rows = C * R * S
    n = np.maximum(-(-rows // chunk_rows), 1)
    step = np.maximum(-(-rows // n), 1)
    m = -(-rows // step)                       # chunks of plan_chunks
    last = rows - (m - 1) * step
    pair_rows = (m - 1) * 2 * (-(-step // 2)) + 2 * (-(-last // 2))
    weights = 2 * (-(-K // MR)) * MR * pair_rows
    hw = H * W
    big = hw >= block_cols
    units = -(-H // np.maximum(-(-hw // block_cols), 1))
    imgs = np.minimum(-(-B // np.maximum(-(-(B * hw) // block_cols), 1)), B)
    max_cols = np.where(big, units * W, imgs * hw)
    n_blocks = np.where(big, B * -(-H // np.maximum(units, 1)), -(-B // np.maximum(imgs, 1)))
    width = -(-max_cols // NR) * NR
    spans = ~big & (imgs > 1)
    direct = ((R == 1) & (S == 1) & np.asarray(direct, dtype=bool)) & ~spans
    worker = (width * 2 * (-(-step // 2)) + np.where(direct, 0, step * max_cols)
              + MR * NR * 4 + np.where(spans, K * max_cols * 4, 0))
    workers = np.minimum(threads, np.maximum(n_blocks, 1))
    total = weights + workers * worker
    empty = (B * K * hw == 0) | (rows == 0)
    return np.where(empty, 0, total)


def _block(xk, x_view, wm, wbuf, out, out_mat, lut, code, integer, accumulate, chunks, u0,
           nu, geometry, panel_buf, tmp_buf) -> None:
    """One output block: pack + GEMM per reduction chunk, result into ``out``.

    ``wm`` is the (K, C*R*S) weight matrix; with ``wbuf`` given, each chunk of it is
    first converted into ``wbuf`` (the panel dtype)."""
    H, W, R, S, sh, sw, dh, dw, oh, ow = geometry
    K = wm.shape[0]
    ncols = nu * W
    b0 = u0 // H
    direct = (not integer) and (u0 + nu - 1) // H == b0
    first = True
    for q0, q1 in chunks:
        if x_view is not None:
            h0 = u0 - b0 * H
            panel = x_view[b0, q0:q1, h0 * W:h0 * W + ncols]
        else:
            panel = panel_buf[:(q1 - q0) * ncols].reshape(q1 - q0, ncols)
            _pack_rows(xk, panel, lut, code, u0, nu, q0, q1, geometry)
        if wbuf is None:
            wchunk = wm[:, q0:q1]
        else:
            wchunk = wbuf[:K * (q1 - q0)].reshape(K, q1 - q0)
            np.copyto(wchunk, wm[:, q0:q1], casting="unsafe")
        assign = first and not accumulate
        if direct:
            # float block inside one image: GEMM straight into the output (beta = 1 for
            # later chunks and for accumulate=True)
            h0 = u0 - b0 * H
            dst = out_mat[b0, :, h0 * W:h0 * W + ncols]
            gemm(wchunk, panel, dst, 0.0 if assign else 1.0)
        elif integer:
            # exact float32 chunk -> int32, added per chunk (float32 sums of several
            # chunks could exceed 2**24)
            tmp = tmp_buf[:K * ncols].reshape(K, ncols)
            gemm(wchunk, panel, tmp, 0.0)
            scatter_int(out, tmp, u0, nu, H, W, assign)
        else:
            # block spanning images: chunks accumulate in the K x cols buffer, one scatter
            tmp = tmp_buf[:K * ncols].reshape(K, ncols)
            gemm(wchunk, panel, tmp, 0.0 if first else 1.0)
        first = False
    if not direct and not integer:
        scatter_float(out, tmp, u0, nu, H, W, not accumulate)


def _pack_rows(xk, panel, lut, code, u0, nu, q0, q1, geometry) -> None:
    """Pack panel rows ``q0..q1`` of the flattened ``(c, r, s)`` reduction."""
    H, W, R, S, sh, sw, dh, dw, oh, ow = geometry
    bits = panel.view(np.uint32) if panel.dtype == _F32 else panel.view(np.uint64)
    pack_panel(xk, panel, bits, lut, code, q0, q1, u0, nu, H, W, R, S, sh, sw, dh, dw, oh, ow)
