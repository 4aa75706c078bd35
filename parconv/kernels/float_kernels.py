"""Numba kernels of the implicit-GEMM convolution: panel packing and output scatter.

The local convolution is computed block by block (see :mod:`parconv.kernels.window`):
for a block of whole output rows and a chunk of input channels, :func:`pack_panel`
builds a small im2col panel ``P[(c, r, s), (u, w)]`` (zero where the window leaves the
input), a BLAS GEMM multiplies the packed weight chunk ``(K, c·R·S)`` by it, and
:func:`scatter_float` adds (or writes) the ``(K, columns)`` result into the NCHW output.

Element decoding happens while packing, so 16-bit and integer inputs never get an
input-sized float copy:

* ``code 0``: plain cast (float32, float64, int8, uint8 -> the panel dtype),
* ``code 1``: bfloat16 bit patterns (``uint16`` view) -> float32, written through the
  panel's ``uint32`` view as ``bits << 16`` (exact),
* ``code 2``: 16-bit patterns decoded through a 65536-entry float32 table (float16, or
  bfloat16 into a float64 panel).
"""

from __future__ import annotations

from numba import intp, njit, uint32, uint64

_JIT = dict(nogil=True, cache=True, boundscheck=False)


@njit(**_JIT)
def _pack_row_runs(xf, pf, d_row, c, r, u0, nunits, C, H, W, Hx, dh, oh, iw0, wlo, whi):
    """One panel row when ``sh == sw == 1`` and input rows are as wide as output rows:
    consecutive output rows read consecutive input rows, so each image's stretch is one
    contiguous copy; the columns that wrapped into a neighbouring row (``w < wlo`` or
    ``w >= whi``) are zeroed afterwards."""
    size = xf.shape[0]
    u = 0
    while u < nunits:
        uu = u0 + u
        b = uu // H
        h = uu - b * H
        m = min(nunits - u, H - h)
        ih0 = h + dh * r + oh
        lo = min(max(0, -ih0), m)
        hi = max(min(m, Hx - ih0), lo)
        for j in range(u * W, (u + lo) * W):
            pf[uint64(d_row + j)] = 0
        for j in range((u + hi) * W, (u + m) * W):
            pf[uint64(d_row + j)] = 0
        if hi > lo:
            src = ((b * C + c) * Hx + ih0 + lo) * W + iw0
            dst = d_row + (u + lo) * W
            i0 = max(0, -src)
            i1 = min((hi - lo) * W, size - src)
            s0 = uint64(src + i0)
            d0 = uint64(dst + i0)
            for i in range(uint64(max(i1 - i0, 0))):
                pf[d0 + i] = xf[s0 + i]
            for j in range(lo, hi):
                e = dst + (j - lo) * W
                for k in range(wlo):
                    pf[uint64(e + k)] = 0
                for k in range(whi, W):
                    pf[uint64(e + k)] = 0
        u += m


@njit(**_JIT)
def tap_columns(q, R, S, W, Wx, sw, dw, ow):
    """Index math of reduction row ``q = (c*R + r)*S + s`` shared by :func:`pack_panel`
    and its adjoint :func:`col2im_add`: ``(c, r, iw0, wlo, whi)`` where input column
    ``sw*w + iw0`` belongs to output column ``w`` and ``wlo <= w < whi`` are the output
    columns whose input column lies inside ``0 .. Wx-1`` (``wlo <= whi <= W``)."""
    RS = R * S
    c = q // RS
    t = q - c * RS
    r = t // S
    s = t - r * S
    iw0 = dw * s + ow
    wlo = 0 if iw0 >= 0 else (-iw0 + sw - 1) // sw
    whi = (Wx - 1 - iw0) // sw + 1
    whi = min(whi, W)
    wlo = min(wlo, W)
    whi = max(whi, wlo)
    return c, r, iw0, wlo, whi


@njit(**_JIT)
def pack_panel(x, panel, panel_bits, lut, code, q0, q1, u0, nunits, H, W, R, S,
               sh, sw, dh, dw, oh, ow):
    """Fill ``panel[:q1-q0, :nunits*W]`` for reduction rows ``q0..q1`` and output rows
    ``u0 .. u0+nunits``.

    Reduction row ``q = (c*R + r)*S + s``; output row unit ``u`` is image ``u // H``,
    output row ``u % H``. Panel entry ``[q-q0, (u-u0)*W + w]`` holds
    ``x[b, c, sh*h + dh*r + oh, sw*w + dw*s + ow]``, or 0 outside ``x``.
    ``x`` and ``panel`` must be C-contiguous; the copy loops use unsigned flat indices
    (no negative-index wrap-around), which lets LLVM vectorise them.
    """
    C = x.shape[1]
    Hx = x.shape[2]
    Wx = x.shape[3]
    xf = x.ravel()
    pf = panel.ravel()
    pb = panel_bits.ravel()
    ncol = panel.shape[1]
    runs = code == 0 and sh == 1 and sw == 1 and Wx == W
    for q in range(q0, q1):
        c, r, iw0, wlo, whi = tap_columns(q, R, S, W, Wx, sw, dw, ow)
        if runs:
            _pack_row_runs(xf, pf, (q - q0) * ncol, c, r, u0, nunits, C, H, W, Hx, dh, oh,
                           iw0, wlo, whi)
            continue
        n = uint64(whi - wlo)
        step = uint64(sw)
        b = u0 // H
        h = u0 - b * H - 1
        for u in range(nunits):
            h += 1   # (b, h) of row unit u0 + u, without a division per unit
            if h == H:
                h = 0
                b += 1
            ih = sh * h + dh * r + oh
            d = uint64((q - q0) * ncol + u * W)
            if ih < 0 or ih >= Hx:
                for j in range(W):
                    pf[d + uint64(j)] = 0
                continue
            for j in range(wlo):
                pf[d + uint64(j)] = 0
            for j in range(whi, W):
                pf[d + uint64(j)] = 0
            src = uint64(((b * C + c) * Hx + ih) * Wx + iw0 + sw * wlo)
            d0 = d + uint64(wlo)
            if code == 0:
                if sw == 1:
                    for i in range(n):
                        pf[d0 + i] = xf[src + i]
                elif sw == 2:   # constant stride: LLVM vectorises it with shuffles
                    for i in range(n):
                        pf[d0 + i] = xf[src + uint64(2) * i]
                else:
                    for i in range(n):
                        pf[d0 + i] = xf[src + step * i]
            elif code == 1:
                for i in range(n):
                    pb[d0 + i] = uint32(xf[src + step * i]) << 16
            else:
                for i in range(n):
                    pf[d0 + i] = lut[intp(xf[src + step * i])]


@njit(**_JIT)
def scatter_float(out, block, u0, nunits, H, W, assign):
    """``out[b, :, h, :] (+)= block[:, (u-u0)*W : (u-u0+1)*W]`` for each row unit ``u``."""
    K = out.shape[1]
    for u in range(nunits):
        uu = u0 + u
        b = uu // H
        h = uu - b * H
        j0 = u * W
        for k in range(K):
            if assign:
                for w in range(W):
                    out[b, k, h, w] = block[k, j0 + w]
            else:
                for w in range(W):
                    out[b, k, h, w] += block[k, j0 + w]


@njit(**_JIT)
def col2im_add(grad, panel, q0, q1, u0, nunits, H, W, R, S, sh, sw, dh, dw, oh, ow):
    """Adjoint of :func:`pack_panel` (col2im): ``grad[b, c, sh*h + dh*r + oh,
    sw*w + dw*s + ow] += panel[q-q0, (u-u0)*W + w]`` for every entry whose position lies
    inside ``grad``; the others (padding) are dropped.

    Same indexing as :func:`pack_panel` (:func:`tap_columns`); ``grad`` (float32/float64)
    and ``panel`` (same dtype) must be C-contiguous.
    """
    C = grad.shape[1]
    Hx = grad.shape[2]
    Wx = grad.shape[3]
    gf = grad.ravel()
    pf = panel.ravel()
    ncol = panel.shape[1]
    for q in range(q0, q1):
        c, r, iw0, wlo, whi = tap_columns(q, R, S, W, Wx, sw, dw, ow)
        n = uint64(whi - wlo)
        step = uint64(sw)
        b = u0 // H
        h = u0 - b * H - 1
        for u in range(nunits):
            h += 1
            if h == H:
                h = 0
                b += 1
            ih = sh * h + dh * r + oh
            if ih < 0 or ih >= Hx or n == 0:
                continue
            d0 = uint64((q - q0) * ncol + u * W + wlo)
            dst = uint64(((b * C + c) * Hx + ih) * Wx + iw0 + sw * wlo)
            if sw == 1:
                for i in range(n):
                    gf[dst + i] += pf[d0 + i]
            elif sw == 2:
                for i in range(n):
                    gf[dst + uint64(2) * i] += pf[d0 + i]
            else:
                for i in range(n):
                    gf[dst + step * i] += pf[d0 + i]
