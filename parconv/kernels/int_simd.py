"""Exact int8/uint8 x int8 -> int32 GEMM on 16-bit SIMD multiply-adds (``vpmaddwd``).

The integer convolution's GEMM ``C[K, N] (+)= A[K, Q] @ P[Q, N]`` (weights ``A``, im2col
panel ``P``, reduction ``Q = C*R*S``) runs on a register-blocked micro-kernel written
directly in LLVM IR (a numba ``@intrinsic``), so its inner loop is exactly::

    for each reduction pair p:
        b0, b1 = sign/zero-extend 32 panel bytes -> 2 x 16 int16   (vpmovsxbw / vpmovzxbw)
        for each of the 6 filter rows i:
            a = broadcast int32 word (A[i, 2p], A[i, 2p+1]) as 2 x int16   (vpbroadcastd)
            acc[i, 0:8]  += pairwise(a * b0)                                (vpmaddwd, vpaddd)
            acc[i, 8:16] += pairwise(a * b1)

``pairwise(a * b)[j] = a[2j]*b[2j] + a[2j+1]*b[2j+1]`` with the products and the pair
sum formed in 32 bits: the IR is the generic pattern ``sext -> mul -> add(even, odd)``,
which the x86 backend selects as ``vpmaddwd`` (asserted by the tests on the compiled
assembly) and any other backend compiles to ordinary exact vector code. Every operand is
an int8/uint8 value widened to int16, so each product lies in ``[-32640, 32640]`` and
every pair sum in ``[-65280, 65280]``: ``vpmaddwd`` (whose only inexact case is
``2 * (-32768)**2``) is exact here, unlike ``vpmaddubsw`` whose int16 pair sums saturate
for full-range operands (``255*127*2 > 32767``). The 12 accumulators (6 rows x 16 columns
int32, 12 ymm registers) add with wrap-around, so a result is the exact sum modulo
``2**32``: bit-identical whenever it fits int32, which :func:`parconv.conv2d` and the
runtime guarantee through :func:`parconv.kernels.int32_safe_reduction`.

Operand layouts (built by :func:`pack_weight_pairs` and :func:`pack_strips`):

* weights, per reduction chunk and block of 6 filters: ``[p][i]`` int32 words holding
  the int16 pair ``(w[i, 2p], w[i, 2p+1])`` (24 bytes per pair step), zero rows past
  ``K`` and a zero partner past an odd chunk end;
* panel, per chunk and strip of 16 output columns: ``[p][j][2]`` int8/uint8 (32 bytes
  per pair step), zero partner past an odd chunk end, don't-care columns past the block.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import int32, njit, types, uint64
from numba.core.extending import intrinsic

_JIT = dict(nogil=True, cache=True, boundscheck=False)

#: micro-tile: filter rows x output columns (12 ymm int32 accumulators).
MR = 6
NR = 16

_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_V32I8 = ir.VectorType(_I8, 32)
_V32I16 = ir.VectorType(_I16, 32)
_V16I16 = ir.VectorType(_I16, 16)
_V16I32 = ir.VectorType(_I32, 16)
_V8I32 = ir.VectorType(_I32, 8)


def _lanes(values) -> ir.Constant:
    values = list(values)
    return ir.Constant(ir.VectorType(_I32, len(values)), values)


def _madd_pairs(builder, a16, b16):
    """``(a[2j]*b[2j] + a[2j+1]*b[2j+1])_j`` in int32: the generic pattern LLVM's x86
    backend lowers to ``vpmaddwd``."""
    prod = builder.mul(builder.sext(a16, _V16I32), builder.sext(b16, _V16I32))
    even = builder.shuffle_vector(prod, prod, _lanes(range(0, 16, 2)))
    odd = builder.shuffle_vector(prod, prod, _lanes(range(1, 16, 2)))
    return builder.add(even, odd)


@intrinsic
def _tile(typingctx, a, a_off, b, b_off, npairs, c, ci, cj, accumulate):
    """``c[ci:ci+6, cj:cj+16] (+)= A_tile @ B_strip`` over ``npairs`` reduction pairs.

    ``a``: int32 1-D words of int16 pairs (the tile's start at word ``a_off``), ``b``: int8 or uint8
    1-D (strip starts at byte ``b_off``), ``c``: 2-D int32 with unit column stride.
    """
    if not (isinstance(a, types.Array) and a.dtype == types.int32 and isinstance(b, types.Array)
            and b.dtype in (types.int8, types.uint8) and isinstance(c, types.Array)
            and c.dtype == types.int32 and c.ndim == 2):
        return None
    signed = b.dtype == types.int8
    sig = types.void(a, a_off, b, b_off, npairs, c, ci, cj, accumulate)

    def codegen(context, builder, signature, args):
        av, aoff, bv, boff, n, cv, civ, cjv, accv = args
        aty, _, bty, _, nty, cty, cit, cjt, acct = signature.args
        aoff = context.cast(builder, aoff, signature.args[1], types.int64)
        boff = context.cast(builder, boff, signature.args[3], types.int64)
        n = context.cast(builder, n, nty, types.int64)
        civ = context.cast(builder, civ, cit, types.int64)
        cjv = context.cast(builder, cjv, cjt, types.int64)
        accv = context.cast(builder, accv, acct, types.boolean)
        aarr = context.make_array(aty)(context, builder, av)
        barr = context.make_array(bty)(context, builder, bv)
        carr = context.make_array(cty)(context, builder, cv)
        a_ptr = builder.gep(aarr.data, [aoff])
        b_ptr = builder.gep(builder.bitcast(barr.data, _I8.as_pointer()), [boff])
        row_bytes = builder.extract_value(carr.strides, 0)
        c_base = builder.gep(builder.bitcast(carr.data, _I8.as_pointer()),
                             [builder.add(builder.mul(civ, row_bytes),
                                          builder.mul(cjv, ir.Constant(_I64, 4)))])

        pre = builder.block
        fn = builder.function
        head = fn.append_basic_block("i8tile.head")
        body = fn.append_basic_block("i8tile.body")
        done = fn.append_basic_block("i8tile.done")
        builder.branch(head)
        builder.position_at_end(head)
        p = builder.phi(_I64)
        p.add_incoming(ir.Constant(_I64, 0), pre)
        accs = []
        for _ in range(2 * MR):
            phi = builder.phi(_V8I32)
            phi.add_incoming(ir.Constant(_V8I32, None), pre)
            accs.append(phi)
        builder.cbranch(builder.icmp_signed("<", p, n), body, done)

        builder.position_at_end(body)
        bvec = builder.load(builder.bitcast(builder.gep(b_ptr, [builder.mul(p, ir.Constant(_I64, 32))]),
                                            _V32I8.as_pointer()), align=1)
        wide = (builder.sext if signed else builder.zext)(bvec, _V32I16)
        halves = [builder.shuffle_vector(wide, wide, _lanes(range(16))),
                  builder.shuffle_vector(wide, wide, _lanes(range(16, 32)))]
        new = []
        a_row = builder.mul(p, ir.Constant(_I64, MR))
        for i in range(MR):
            word = builder.load(builder.gep(a_ptr, [builder.add(a_row, ir.Constant(_I64, i))]),
                                align=4)
            splat = builder.insert_element(ir.Constant(_V8I32, ir.Undefined), word,
                                           ir.Constant(_I32, 0))
            splat = builder.bitcast(builder.shuffle_vector(splat, splat, _lanes([0] * 8)),
                                    _V16I16)
            for h in range(2):
                new.append(builder.add(accs[2 * i + h], _madd_pairs(builder, splat, halves[h])))
        nxt = builder.add(p, ir.Constant(_I64, 1))
        tail = builder.block
        p.add_incoming(nxt, tail)
        for phi, val in zip(accs, new):
            phi.add_incoming(val, tail)
        builder.branch(head)

        builder.position_at_end(done)
        ptrs = []
        for i in range(MR):
            row = builder.gep(c_base, [builder.mul(ir.Constant(_I64, i), row_bytes)])
            for h in range(2):
                ptrs.append(builder.bitcast(builder.gep(row, [ir.Constant(_I64, 32 * h)]),
                                            _V8I32.as_pointer()))
        with builder.if_else(accv) as (add_branch, store_branch):
            with add_branch:
                for ptr, val in zip(ptrs, accs):
                    builder.store(builder.add(builder.load(ptr, align=4), val), ptr, align=4)
            with store_branch:
                for ptr, val in zip(ptrs, accs):
                    builder.store(val, ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _zip16(typingctx, dst, d_off, src0, s0, src1, s1):
    """``dst[d_off + 2j] = src0[s0 + j]; dst[d_off + 2j + 1] = src1[s1 + j]`` for
    ``j < 16`` (byte arrays; two 16-byte loads, one byte interleave, one 32-byte store)."""
    if not all(isinstance(a, types.Array) and a.dtype.bitwidth == 8 for a in (dst, src0, src1)):
        return None
    sig = types.void(dst, d_off, src0, s0, src1, s1)

    def codegen(context, builder, signature, args):
        v16 = ir.VectorType(_I8, 16).as_pointer()

        def address(k, off):
            arr = context.make_array(signature.args[k])(context, builder, args[k])
            base = builder.bitcast(arr.data, _I8.as_pointer())
            return builder.gep(base, [context.cast(builder, args[off], signature.args[off],
                                                   types.int64)])

        rows = [builder.load(builder.bitcast(address(k, k + 1), v16), align=1) for k in (2, 4)]
        out = builder.shuffle_vector(rows[0], rows[1],
                                     _lanes(j // 2 + 16 * (j % 2) for j in range(32)))
        builder.store(out, builder.bitcast(address(0, 1), _V32I8.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@njit(**_JIT)
def pack_weight_pairs(wm, ap, chunks):
    """Pack the ``(K, Q)`` int8 weight matrix for :func:`gemm_chunk` into the int32 words
    ``ap`` (:func:`packed_weight_words` long, overwritten).

    ``chunks`` is an ``(n, 2)`` array of reduction chunks ``[q0, q1)``; chunk ``t`` starts
    at word ``sum_{t'<t} kblocks * npairs(t') * MR`` and holds, per block of ``MR`` filters
    and pair ``p``, the words ``(w[k, q0+2p] as int16) | (w[k, q0+2p+1] as int16) << 16``
    (little-endian: the int16 pair ``vpmaddwd`` multiplies); zero past ``K`` and past an
    odd chunk end.
    """
    K, Q = wm.shape
    wf = wm.ravel()
    kblocks = (K + MR - 1) // MR
    base = 0
    for t in range(chunks.shape[0]):
        q0, q1 = chunks[t, 0], chunks[t, 1]
        n = q1 - q0
        npairs = (n + 1) // 2
        for kb in range(kblocks):
            for i in range(MR):
                k = kb * MR + i
                d = uint64(base + kb * npairs * MR + i)
                if k >= K:
                    for p in range(uint64(npairs)):
                        ap[d + p * uint64(MR)] = 0
                    continue
                src = uint64(k * Q + q0)
                for p in range(uint64(n // 2)):   # reads a weight row in order
                    lo = int32(wf[src + uint64(2) * p]) & 0xFFFF
                    ap[d + p * uint64(MR)] = lo | (int32(wf[src + uint64(2) * p + uint64(1)]) << 16)
                if n % 2:
                    ap[d + uint64((npairs - 1) * MR)] = int32(wf[src + uint64(n - 1)]) & 0xFFFF
        base += kblocks * npairs * MR


@njit(**_JIT)
def pack_strips(src, off, ld, nrows, ncols, strips, zero):
    """Interleave ``nrows`` row-major panel rows into the strip layout of :func:`gemm_chunk`.

    Row ``t`` of the panel is ``src[off + t*ld : off + t*ld + ncols]`` (an im2col panel
    packed by :func:`pack_panel`, or ``x`` itself for 1x1 stride-1 layers);
    ``strips[s*npairs*32 + p*32 + 2j + u] = row_{2p+u}[16s + j]``, with a zero partner
    row past an odd ``nrows`` (``zero``: 16 zero bytes) and zeros past ``ncols``.
    """
    npairs = (nrows + 1) // 2
    full = ncols // NR
    for s in range(full):
        d = s * npairs * 32
        c = off + s * NR
        for p in range(nrows // 2):
            _zip16(strips, d + p * 32, src, c + 2 * p * ld, src, c + (2 * p + 1) * ld)
        if nrows % 2:
            _zip16(strips, d + (npairs - 1) * 32, src, c + (nrows - 1) * ld, zero, 0)
    rest = ncols - full * NR
    if rest:
        d = full * npairs * 32
        c = off + full * NR
        for p in range(npairs):
            e = d + p * 32
            for j in range(NR):
                lo = src[c + 2 * p * ld + j] if j < rest else 0
                hi = src[c + (2 * p + 1) * ld + j] if j < rest and 2 * p + 1 < nrows else 0
                strips[e + 2 * j] = lo
                strips[e + 2 * j + 1] = hi


@njit(**_JIT)
def gemm_chunk(ap, a_base, strips, npairs, K, ncols, c, assign, scratch):
    """``c[:K, :ncols] (+)= A_chunk @ P_chunk`` for one reduction chunk.

    ``ap[a_base:]`` is the chunk's packed weights, ``strips`` its packed panel,
    ``c`` a 2-D int32 array (unit column stride, any row stride); ``scratch`` an
    ``(MR, NR)`` int32 buffer for edge tiles. Loops: blocks of ``MR`` filters (their
    packed weights stay in L1) over strips of ``NR`` columns (streamed from L2), so the
    tiles of ``c`` are visited row block by row block, in memory order.
    """
    kblocks = (K + MR - 1) // MR
    nstrips = (ncols + NR - 1) // NR
    acc = not assign
    for kb in range(kblocks):
        i0 = kb * MR
        ni = min(MR, K - i0)
        a_off = a_base + kb * npairs * MR
        for s in range(nstrips):
            j0 = s * NR
            nj = min(NR, ncols - j0)
            b_off = s * npairs * 32
            if ni == MR and nj == NR:
                _tile(ap, a_off, strips, b_off, npairs, c, i0, j0, acc)
            else:
                _tile(ap, a_off, strips, b_off, npairs, scratch, 0, 0, False)
                for i in range(ni):
                    for j in range(nj):
                        if assign:
                            c[i0 + i, j0 + j] = scratch[i, j]
                        else:
                            c[i0 + i, j0 + j] += scratch[i, j]


@njit(**_JIT)
def scatter_images(out_mat, block, b0, nimg, assign):
    """``out_mat[b0+i, k, :] (+)= block[k, i*HW : (i+1)*HW]`` for a block of whole images
    (``out_mat``: the ``(B, K, H*W)`` view of the output, planes contiguous), image by
    image and plane by plane (both sides read and written in memory order)."""
    K = block.shape[0]
    hw = out_mat.shape[2]
    for i in range(nimg):
        for k in range(K):
            dst = out_mat[b0 + i, k]
            src = block[k, i * hw:(i + 1) * hw]
            if assign:
                for j in range(hw):
                    dst[j] = src[j]
            else:
                for j in range(hw):
                    dst[j] += src[j]


def chunk_table(chunks) -> np.ndarray:
    """``(n, 2)`` int64 array of the reduction chunks (for the numba kernels)."""
    return np.asarray(chunks, dtype=np.int64).reshape(-1, 2)


def packed_weight_words(K: int, chunks) -> int:
    """int32 words :func:`pack_weight_pairs` writes for ``K`` filters and ``chunks``."""
    kblocks = -(-K // MR)
    return sum(kblocks * ((q1 - q0 + 1) // 2) * MR for q0, q1 in chunks)
