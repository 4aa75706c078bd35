"""The processor-grid planner: exact per-rank volumes and the grid search.

For the grid algorithm of THEORY.md §6, as fixed by :mod:`parconv.planner.partition`, this module

* evaluates every rank's payload bytes per operation **exactly** (uneven blocks, halos,
  stride skips) with vectorised numpy — the numbers equal
  :func:`parconv.planner.partition.rank_volume` rank by rank (tested);
* does so for every training pass (``forward``, ``dgrad``, ``wgrad``, ``step``): a
  backward operation's bytes are the forward operation's it is the adjoint of,
  exchanged and rescaled (:func:`parconv.planner.adjoint.pass_volume`);
* evaluates the **maximum over ranks** of received, received + sent bytes and memory
  fast, without visiting every rank: a rank's figures depend only on each axis's *block
  class* and on its filter part, so evaluating the first and last index of each class
  is exact (:func:`_class_representatives`);
* searches all ordered factorisations ``P = P_b·P_k·P_c·P_h·P_w`` (each factor at most its
  dimension) for the grid minimising the busiest rank's received + sent bytes (the
  quantity the lower bound bounds; :func:`_objective`), ties broken by total bytes, then
  fewer split dimensions, then fewer spatial splits. Grids are visited in order of a
  closed-form average (a lower bound on the maximum), so most are pruned without
  evaluation.

A :class:`Plan` is a plain value: grid, bound, every rank's blocks, halos and bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from ..spec import Axis, ConvSpec
from .adjoint import pass_operations, pass_volume
from .partition import (
    GRID_AXES,
    Grid,
    backward_kernel_bytes,
    balanced_block,
    block_sizes,
    check_grid,
    kernel_workspace_bytes,
    peak_memory_bits,
)

# ----------------------------------------------------------------------------- limits

#: Most ranks the planner accepts (its per-rank tables and searches are O(P)).
MAX_PROCS = 1 << 20
#: Most (blocks along one spatial axis) x (kernel taps) the planner accepts: its per-axis
#: tables cost that much (the spatial extents themselves do not matter).
MAX_AXIS_WORK = 1 << 24


def check_plannable(spec: ConvSpec, procs: int) -> None:
    """Refuse up front what the planner cannot evaluate exactly.

    The planner evaluates bytes and bits with vectorised int64 arithmetic. Every figure
    it forms (per-rank bits, totals over ranks of bytes, the im2col baseline) is at most
    ``64 · P · (2·|In| + |F| + 2·|Out| + |im2col|)`` in absolute value, so when that is
    below 2**63 none can overflow; otherwise the layer is refused.

    Raises
    ------
    ValueError
        If ``procs`` exceeds :data:`MAX_PROCS`, ``min(procs, out extent) × taps`` of an
        axis exceeds :data:`MAX_AXIS_WORK`, or the bound above reaches 2**63.
    """
    if procs > MAX_PROCS:
        raise ValueError(f"{procs} ranks: the planner supports at most {MAX_PROCS} "
                         f"(2**{MAX_PROCS.bit_length() - 1})")
    for ax, axis in zip("hw", spec.axes):
        work = min(procs, axis.out_size) * axis.kernel
        if work > MAX_AXIS_WORK:
            raise ValueError(
                f"{procs} ranks with a {axis.kernel}-tap kernel along {ax}: the planner's "
                f"per-axis tables cost (blocks x taps) = {work}, more than the supported "
                f"{MAX_AXIS_WORK} (2**{MAX_AXIS_WORK.bit_length() - 1})")
    im2col = spec.B * spec.H * spec.W * spec.C * spec.R * spec.S
    elems = 2 * spec.input_elems + spec.filter_elems + 2 * spec.output_elems + im2col
    worst = 64 * procs * elems
    if worst >= 1 << 63:
        total = (spec.precision.p_input * spec.input_elems
                 + spec.precision.p_filter * spec.filter_elems
                 + spec.precision.p_output * spec.output_elems) // 8
        raise ValueError(
            f"layer too large to plan exactly: its input, filter and output hold {total} bytes "
            f"(about 2**{total.bit_length() - 1}); with P={procs} the byte and bit figures "
            f"could reach 2**{worst.bit_length() - 1}, beyond the planner's int64 range "
            "(2**63); use smaller sizes")


# ----------------------------------------------------------------------------- axis tables


def _block_of(idx: np.ndarray, n: int, p: int) -> np.ndarray:
    """Balanced block (of ``p`` over ``n`` items) holding each index in ``idx``."""
    q, rem = divmod(n, p)
    big = rem * (q + 1)
    if q == 0:
        return idx // 1
    return np.where(idx < big, idx // (q + 1), rem + (idx - big) // q)


@dataclass(frozen=True)
class AxisTable:
    """Per-block facts of one spatial axis split into ``p`` blocks (arrays of length p).

    ``out``: output rows of the block; ``own``: input rows owned; ``used``: owned rows
    that some output reads; ``need``: distinct input rows the block's outputs read;
    ``self_need``: those among them it owns; ``sent``: rows it owns that other blocks read,
    counted once per reading block (including itself); ``win``: extent of the contiguous
    input window; ``classes``: the largest index of each class of blocks with identical
    (out, own, used, need, self_need, win); ``pairs``: (reader block, owner block, rows)
    of every non-empty overlap between what a block reads and what a block owns.
    """

    out: np.ndarray
    own: np.ndarray
    used: np.ndarray
    need: np.ndarray
    self_need: np.ndarray
    sent: np.ndarray
    win: np.ndarray
    classes: np.ndarray
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]


def _block_starts(n: int, p: int) -> np.ndarray:
    """First index of each of the ``p`` balanced blocks of ``n`` items, and ``n``."""
    q, rem = divmod(n, p)
    i = np.arange(p + 1, dtype=np.int64)
    return i * q + np.minimum(i, rem)


@lru_cache(maxsize=4096)
def axis_table(axis: Axis, p: int) -> AxisTable:
    """Exact per-block facts of ``axis`` split into ``p`` balanced blocks (cached).

    Closed forms (:meth:`parconv.spec.Axis.read_counts`, :meth:`~parconv.spec.Axis.read_windows`):
    time and memory O(p·R) (times the owner blocks one tap's reads span, about 2),
    independent of the spatial extent.
    """
    n_out, n_in = axis.out_size, axis.in_size
    ob, ib = _block_starts(n_out, p), _block_starts(n_in, p)
    need = axis.read_counts(ob[:-1], ob[1:])
    used = axis.read_counts(0, n_out, ib[:-1], ib[1:])
    wlo, whi = axis.read_windows(ob[:-1], ob[1:])
    win = whi - wlo
    rd, ow, cnt = axis.overlaps(ob, ib)
    self_need, sent = np.zeros(p, dtype=np.int64), np.zeros(p, dtype=np.int64)
    np.add.at(self_need, rd[rd == ow], cnt[rd == ow])
    np.add.at(sent, ow, cnt)
    out, own = block_sizes(n_out, p), block_sizes(n_in, p)
    feats = np.stack([out, own, used, need, self_need, win], axis=1)
    order = np.lexsort(feats.T[::-1])
    sf = feats[order]
    heads = np.flatnonzero(np.r_[True, (sf[1:] != sf[:-1]).any(axis=1)])
    cls_max = np.maximum.reduceat(order, heads)
    return AxisTable(out, own, used, need, self_need, sent, win, np.sort(cls_max),
                     (rd, ow, cnt))


def _interval_max(p: int, thresholds) -> np.ndarray:
    """Largest index of each interval of ``[0, p)`` cut at the given thresholds."""
    cuts = sorted({int(t) for t in thresholds if 0 < t < p} | {p})
    return np.array(cuts, dtype=np.int64) - 1


def _class_members(feats: np.ndarray) -> np.ndarray:
    """Smallest and largest index of each class of rows of ``feats`` (equal rows: one
    class), sorted."""
    p = len(feats)
    _, first = np.unique(feats, axis=0, return_index=True)
    _, last = np.unique(feats[::-1], axis=0, return_index=True)
    return np.unique(np.concatenate([first, p - 1 - last]).astype(np.int64))


def _interval_ends(p: int, thresholds) -> np.ndarray:
    """First and last index of each interval of ``[0, p)`` cut at the given thresholds."""
    hi = _interval_max(p, thresholds)
    return np.unique(np.concatenate([hi, [0], hi[:-1] + 1])).astype(np.int64)


def _class_representatives(spec: ConvSpec, grid: Grid) -> tuple[np.ndarray, ...]:
    """Indices on each grid axis such that the maximum over ranks of **any** per-rank
    figure of the planner (received, sent or received + sent bytes of any pass, peak
    memory of any pass) equals its maximum over the product of these indices.

    *Classes.* Everything a rank's figures depend on is a function of ``(ib, ik, ic, ih,
    iw)`` through: the b-block size (a threshold at ``B mod P_b``); the k-block size and,
    for each c-block size ``v``, the part of ``v`` owned (threshold ``v mod P_k``); the
    c-block size and, for each k-block size ``u``, the output part owned (threshold
    ``u mod P_c``); the spatial facts of :class:`AxisTable` (out, own, used, need,
    self_need, sent, win: the halo sizes in both directions, the window, the kernel's
    geometry); and the filter part owned, ``kf = ⌊k_blk/q⌋ + [f < k_blk mod q]`` with
    ``q = P_b·P_h·P_w`` and the fiber index ``f = (ib·P_h + ih)·P_w + iw``. Call a class
    product a set of ranks whose axes lie in one class each: on it everything but ``kf``
    is constant.

    *Why both ends.* ``kf`` takes at most two values, and it is non-increasing in ``f``;
    ``f`` is increasing in each of ``ib, ih, iw``, so over a class product its minimum is
    at the smallest index of each class and its maximum at the largest. Hence every value
    of ``kf`` attained in a class product is attained at one of those two ranks (the
    larger at the first, the smaller at the last), and so is the maximum of **any**
    function of (classes, ``kf``): no monotonicity of the figure is needed (the backward
    passes' received bytes contain the forward's sent filter bytes, which grow with
    ``kf``, while the forward's received filter bytes shrink with it). On the k and c axes
    one index per class would do; both ends are kept for simplicity (at most twice the
    indices). Tested against every rank (``tests/test_training_plan.py``).
    """
    kvals = set(block_sizes(spec.K, grid.k).tolist())
    cvals = set(block_sizes(spec.C, grid.c).tolist())
    ib = _interval_ends(grid.b, [spec.B % grid.b])
    ik = _interval_ends(grid.k, [spec.K % grid.k] + [v % grid.k for v in cvals])
    ic = _interval_ends(grid.c, [spec.C % grid.c] + [u % grid.c for u in kvals])
    return (ib, ik, ic, _spatial_representatives(spec.axes[0], grid.h),
            _spatial_representatives(spec.axes[1], grid.w))


@lru_cache(maxsize=4096)
def _spatial_representatives(axis: Axis, p: int) -> np.ndarray:
    """First and last block of each spatial class of ``axis`` split ``p`` ways (cached)."""
    t = axis_table(axis, p)
    return _class_members(np.stack([t.out, t.own, t.used, t.need, t.self_need, t.sent,
                                    t.win], axis=1))


# ----------------------------------------------------------------------------- volumes


def _split(n: int, p: int, i: np.ndarray) -> np.ndarray:
    """Size of block ``i`` of ``n`` split into ``p`` balanced blocks (vectorised over n, i)."""
    return n // p + (i < n % p)


def _fields(spec: ConvSpec, grid: Grid, idx: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    """Broadcastable per-rank quantities at the index arrays ``idx = (ib, ik, ic, ih, iw)``."""
    shp = [(-1, 1, 1, 1, 1), (1, -1, 1, 1, 1), (1, 1, -1, 1, 1), (1, 1, 1, -1, 1), (1, 1, 1, 1, -1)]
    ib, ik, ic, ih, iw = (np.asarray(a, dtype=np.int64).reshape(s) for a, s in zip(idx, shp))
    th, tw = axis_table(spec.axes[0], grid.h), axis_table(spec.axes[1], grid.w)
    q = grid.b * grid.h * grid.w
    kblk, cblk = _split(spec.K, grid.k, ik), _split(spec.C, grid.c, ic)
    f = (ib * grid.h + ih) * grid.w + iw
    return {
        "b": _split(spec.B, grid.b, ib), "kblk": kblk, "cblk": cblk,
        "cown": _split(cblk, grid.k, ik), "ko": _split(kblk, grid.c, ic), "kf": _split(kblk, q, f),
        "hs": th.out[ih] * tw.out[iw], "own": th.own[ih] * tw.own[iw],
        "used": th.used[ih] * tw.used[iw], "need": th.need[ih] * tw.need[iw],
        "self": th.self_need[ih] * tw.self_need[iw], "sent": th.sent[ih] * tw.sent[iw],
        "win": th.win[ih] * tw.win[iw], "q": q,
    }


def _volumes(spec: ConvSpec, grid: Grid, idx, send: bool = True) -> dict[str, tuple]:
    """Per-operation (recv, send) byte arrays at the index arrays ``idx`` (send may be None)."""
    return _field_volumes(spec, _fields(spec, grid, idx), grid.k, grid.c, send)


def _field_volumes(spec: ConvSpec, F: dict, pk, pc, send: bool = True) -> dict[str, tuple]:
    """:func:`_volumes` from the per-rank quantities ``F`` of :func:`_fields` (or
    :func:`_first_rank_fields`) and the grid's ``P_k``, ``P_c`` (ints or arrays)."""
    grid_k, grid_c = pk, pc
    p = spec.precision
    pi, pf, po = p.p_input // 8, p.p_filter // 8, p.p_accum // 8
    b, cblk, kblk, rs = F["b"], F["cblk"], F["kblk"], spec.R * spec.S
    bhw = b * F["hs"]
    vol = {
        "input_allgather": (pi * b * (cblk - F["cown"]) * F["used"],
                            pi * (grid_k - 1) * b * F["cown"] * F["used"] if send else None),
        "input_halo": (pi * b * cblk * (F["need"] - F["self"]),
                       pi * b * cblk * (F["sent"] - F["self"]) if send else None),
        "filter_allgather": (pf * (kblk - F["kf"]) * cblk * rs,
                             pf * (F["q"] - 1) * F["kf"] * cblk * rs if send else None),
        "output_reduce_scatter": (po * (grid_c - 1) * F["ko"] * bhw,
                                  po * (kblk - F["ko"]) * bhw if send else None),
    }
    return vol


def _memory_bits(spec: ConvSpec, grid: Grid, idx, pass_: str = "forward",
                 keep_window: bool = True) -> np.ndarray:
    """Per-rank peak memory in bits of ``pass_`` (as
    :func:`parconv.planner.partition.rank_memory_bytes` × 8): the maximum over phases of the
    buffers alive (:func:`parconv.planner.partition.memory_phases`)."""
    F = _fields(spec, grid, idx)
    b, cblk, kblk = F["b"], F["cblk"], F["kblk"]
    ih = np.asarray(idx[3], dtype=np.int64).reshape(1, 1, 1, -1, 1)
    iw = np.asarray(idx[4], dtype=np.int64).reshape(1, 1, 1, 1, -1)
    th, tw = axis_table(spec.axes[0], grid.h), axis_table(spec.axes[1], grid.w)
    rs = spec.R * spec.S
    bhw = b * F["hs"]
    n = {
        "owned_input": b * F["cown"] * F["own"],
        "owned_filter": -(-kblk // F["q"]) * cblk * rs,
        "allgather_send": b * F["cown"] * F["used"] * (grid.k > 1),
        "gathered": b * cblk * F["used"] * (grid.k > 1),
        "window": b * cblk * F["win"],
        "halo_send": b * cblk * (F["sent"] - F["self"]),
        "halo_recv": b * cblk * (F["need"] - F["self"]),
        "filter": kblk * cblk * rs * (F["q"] > 1),
        "kernel": _kernel_bytes(spec, kernel_workspace_bytes, b, kblk, cblk, th.out[ih],
                                tw.out[iw], th.need[ih], tw.need[iw]),
        "partial": kblk * bhw,
        "recv": F["ko"] * bhw * (grid.c > 1),
        "mpi_reduce_scatter": F["ko"] * bhw * (grid.c > 1),
        "result": F["ko"] * bhw,
        "output": F["ko"] * bhw,
    }
    if pass_ != "forward":
        c, k, q = grid.c > 1, grid.k > 1, F["q"] > 1
        n.update({
            "grad_output": F["ko"] * bhw, "go_send": F["ko"] * bhw * c,
            "go_gathered": kblk * bhw * c, "go": kblk * bhw * c, "dwindow": n["window"],
            "dhalo_send": n["halo_recv"], "dhalo_recv": n["halo_send"],
            "dplane": n["gathered"], "drs_recv": b * F["cown"] * F["used"] * k,
            "mpi_drs": b * F["cown"] * F["used"] * k, "dresult": b * F["cown"] * F["used"],
            "grad_input": n["owned_input"], "dfilter": kblk * cblk * rs,
            "dfrs_recv": n["owned_filter"] * q, "mpi_dfrs": n["owned_filter"] * q,
        })
        for key in ("dgrad_kernel", "wgrad_kernel"):
            n[key] = _kernel_bytes(
                spec, lambda sp, *a, key=key: backward_kernel_bytes(sp, *a)[key], b, kblk,
                cblk, th.out[ih], tw.out[iw], th.win[ih], tw.win[iw], th.need[ih],
                tw.need[iw])
        return peak_memory_bits(spec.precision, n, pass_, keep_window)
    return peak_memory_bits(spec.precision, n)


def _kernel_bytes(spec: ConvSpec, fn, *args: np.ndarray) -> np.ndarray:
    """``fn(spec, *args)`` (a kernel workspace formula such as
    :func:`parconv.planner.partition.kernel_workspace_bytes`) evaluated once per distinct
    combination of its (broadcast) arguments."""
    arrs = np.broadcast_arrays(*(np.asarray(a, dtype=np.int64) for a in args))
    if arrs[0].size == 0:
        return np.zeros(arrs[0].shape, dtype=np.int64)
    flat = np.stack([a.ravel() for a in arrs], axis=1)
    uniq, inv = np.unique(flat, axis=0, return_inverse=True)
    vals = np.asarray(fn(spec, *uniq.T), dtype=np.int64)
    return vals[inv.ravel()].reshape(arrs[0].shape)


def _all_indices(grid: Grid) -> tuple[np.ndarray, ...]:
    return tuple(np.arange(d, dtype=np.int64) for d in grid.dims)


def _op_totals(spec: ConvSpec, dims: np.ndarray) -> dict[str, np.ndarray]:
    """Sum over ranks of received bytes of each forward operation, for each grid (rows of
    ``dims``), closed form (also the sum of sent bytes: every byte received is sent)."""
    p = spec.precision
    pi, pf, po = p.p_input // 8, p.p_filter // 8, p.p_accum // 8
    b, k, c, h, w = (dims[:, i].astype(np.int64) for i in range(5))

    def sums(axis: Axis, ps: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        uniq, inv = np.unique(ps, return_inverse=True)
        tabs = [axis_table(axis, int(u)) for u in uniq]
        need = np.array([int(t.need.sum()) for t in tabs], dtype=np.int64)[inv.ravel()]
        self_ = np.array([int(t.self_need.sum()) for t in tabs], dtype=np.int64)[inv.ravel()]
        return need, self_, int(tabs[0].used.sum())

    nh, sh, uh = sums(spec.axes[0], h)
    nw, sw, uw = sums(spec.axes[1], w)
    bc = spec.B * spec.C
    return {"input_allgather": pi * (k - 1) * bc * uh * uw,
            "input_halo": pi * k * bc * (nh * nw - sh * sw),
            "filter_allgather": pf * (b * h * w - 1) * spec.K * spec.C * spec.R * spec.S,
            "output_reduce_scatter": po * (c - 1) * spec.K * spec.B * spec.H * spec.W}


def _totals(spec: ConvSpec, dims: np.ndarray, pass_: str = "forward",
            keep_window: bool = True) -> np.ndarray:
    """Sum over ranks of received bytes of ``pass_`` for each grid (rows of ``dims``),
    closed form: the forward totals of :func:`_op_totals` with each backward operation
    rescaled to its element size (an adjoint receives in total what its forward
    operation sends in total, which is what it receives)."""
    fwd = _op_totals(spec, dims)
    vol = pass_volume({op: (t, t) for op, t in fwd.items()}, spec.precision, pass_, keep_window)
    return sum(r for r, _ in vol.values())


def _first_rank_fields(spec: ConvSpec, dims: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`_fields` of rank 0 (every coordinate 0) of each grid (rows of ``dims``),
    vectorised over the grids."""
    b, k, c, h, w = (dims[:, i].astype(np.int64) for i in range(5))
    zero = np.zeros(len(dims), dtype=np.int64)

    def first(axis: Axis, ps: np.ndarray) -> dict[str, np.ndarray]:
        uniq, inv = np.unique(ps, return_inverse=True)
        tabs = [axis_table(axis, int(u)) for u in uniq]
        return {key: np.array([int(getattr(t, key)[0]) for t in tabs],
                              dtype=np.int64)[inv.ravel()]
                for key in ("out", "own", "used", "need", "self_need", "sent", "win")}

    th, tw = first(spec.axes[0], h), first(spec.axes[1], w)
    q = b * h * w
    kblk, cblk = _split(spec.K, k, zero), _split(spec.C, c, zero)
    return {
        "b": _split(spec.B, b, zero), "kblk": kblk, "cblk": cblk,
        "cown": _split(cblk, k, zero), "ko": _split(kblk, c, zero), "kf": _split(kblk, q, zero),
        "hs": th["out"] * tw["out"], "own": th["own"] * tw["own"],
        "used": th["used"] * tw["used"], "need": th["need"] * tw["need"],
        "self": th["self_need"] * tw["self_need"], "sent": th["sent"] * tw["sent"],
        "win": th["win"] * tw["win"], "q": q,
    }


def _first_rank_traffic(spec: ConvSpec, dims: np.ndarray, pass_: str = "forward",
                        keep_window: bool = True) -> np.ndarray:
    """Exact received + sent bytes of ``pass_`` of rank 0 of each grid (rows of ``dims``):
    a lower bound of each grid's busiest rank, in closed form over all grids at once."""
    vol = _field_volumes(spec, _first_rank_fields(spec, dims), dims[:, 1], dims[:, 2])
    vol = pass_volume(vol, spec.precision, pass_, keep_window)
    return sum(r + s for r, s in vol.values())


def _check_pass(spec: ConvSpec, pass_: str) -> str:
    """Validate ``pass_`` (forward, dgrad, wgrad, step); integer training is refused."""
    from ..passes import check_pass, pass_precision

    name = check_pass(pass_, allow_step=True)
    if name != "forward":
        pass_precision(spec.precision, "dgrad")   # raises for integer precisions
    return name


def total_recv_bytes(spec: ConvSpec, grid: Grid, pass_: str = "forward",
                     keep_window: bool = True) -> int:
    """Sum over ranks of received bytes of ``pass_`` (closed form; equals the sum of the
    per-rank volumes, tested)."""
    check_plannable(spec, grid.size)
    return int(_totals(spec, np.array([grid.dims], dtype=np.int64), _check_pass(spec, pass_),
                       keep_window)[0])


def _pass_volumes(spec: ConvSpec, grid: Grid, idx, pass_: str = "forward",
                  keep_window: bool = True) -> dict[str, tuple]:
    """Per-operation (recv, send) byte arrays of ``pass_`` at the index arrays ``idx``
    (:func:`parconv.planner.adjoint.pass_volume` of the forward :func:`_volumes`)."""
    return pass_volume(_volumes(spec, grid, idx), spec.precision, pass_, keep_window)


def _rank_max(spec: ConvSpec, grid: Grid, what: str, pass_: str, keep_window: bool) -> int:
    """Exact maximum over ranks of ``what`` (recv, traffic, memory) at the class
    representatives (:func:`_class_representatives`)."""
    check_plannable(spec, grid.size)
    pass_ = _check_pass(spec, pass_)
    idx = _class_representatives(spec, grid)
    if what == "memory":
        return int(_memory_bits(spec, grid, idx, pass_, keep_window).max()) // 8
    vol = _pass_volumes(spec, grid, idx, pass_, keep_window)
    if what == "recv":
        return int(sum(r for r, _ in vol.values()).max())
    return int(sum(r + s for r, s in vol.values()).max())


def max_rank_recv_bytes(spec: ConvSpec, grid: Grid, pass_: str = "forward",
                        keep_window: bool = True) -> int:
    """Exact maximum over ranks of received bytes of ``pass_`` (all its operations)."""
    return _rank_max(spec, grid, "recv", pass_, keep_window)


def max_rank_traffic_bytes(spec: ConvSpec, grid: Grid, pass_: str = "forward",
                           keep_window: bool = True) -> int:
    """Exact maximum over ranks of received + sent bytes of ``pass_`` (all its
    operations; for ``step`` the busiest rank's step total).

    This is the quantity the memory-independent bound bounds for *every* execution
    (docs/theory.md §5): the processor doing the most work must receive the input and
    filter elements it uses but does not own and send a contribution for every output it
    updates but does not own, so its received + sent bytes are at least the bound.
    """
    return _rank_max(spec, grid, "traffic", pass_, keep_window)


def max_rank_memory_bytes(spec: ConvSpec, grid: Grid, pass_: str = "forward",
                          keep_window: bool = True) -> int:
    """Exact maximum over ranks of :func:`parconv.planner.partition.rank_memory_bytes` of
    ``pass_``."""
    return _rank_max(spec, grid, "memory", pass_, keep_window)


# ----------------------------------------------------------------------------- grid search


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _candidate_dims(spec: ConvSpec, procs: int, axes: tuple[str, ...]) -> np.ndarray:
    """Rows ``(b, k, c, h, w)`` of every grid of :func:`candidate_grids`, in
    lexicographic order (vectorised enumeration over the divisors of ``procs``)."""
    if procs < 1:
        raise ValueError(f"procs must be a positive integer, got {procs}")
    limits = {"b": spec.B, "k": spec.K, "c": spec.C, "h": spec.H, "w": spec.W}
    caps = [limits[a] if a in axes else 1 for a in GRID_AXES]
    divs = np.array(_divisors(procs), dtype=np.int64)
    pre = np.zeros((1, 0), dtype=np.int64)
    rest = np.array([procs], dtype=np.int64)
    for i in range(4):
        r, c = np.nonzero((rest[:, None] % divs[None, :] == 0) & (divs[None, :] <= caps[i]))
        pre = np.concatenate([pre[r], divs[c][:, None]], axis=1)
        rest = rest[r] // divs[c]
    keep = rest <= caps[4]
    return np.concatenate([pre[keep], rest[keep][:, None]], axis=1)


def candidate_grids(spec: ConvSpec, procs: int, axes: tuple[str, ...] = GRID_AXES) -> list[Grid]:
    """All grids of ``procs`` ranks splitting only ``axes``, each factor at most its
    dimension (b ≤ B, k ≤ K, c ≤ C, h ≤ H, w ≤ W)."""
    return [Grid(*(int(v) for v in d)) for d in _candidate_dims(spec, procs, axes)]


def _tie_key(grid: Grid) -> tuple:
    return (sum(d > 1 for d in grid.dims), (grid.h > 1) + (grid.w > 1), grid.h * grid.w, grid.dims)


@dataclass(frozen=True)
class SearchResult:
    """Best grid of a search with its exact figures (of the searched pass)."""

    grid: Grid
    max_rank_recv_bytes: int
    total_recv_bytes: int
    max_rank_memory_bytes: int
    candidates: int
    evaluated: int
    max_rank_traffic_bytes: int = 0


def _objective(spec: ConvSpec, grid: Grid, pass_: str, keep_window: bool) -> int:
    """The search objective of a grid: the busiest rank's received + sent bytes of
    ``pass_`` (:func:`max_rank_traffic_bytes`, the quantity the lower bound bounds).
    :func:`_objective_floor` must be a lower bound of it."""
    return max_rank_traffic_bytes(spec, grid, pass_, keep_window)


def _objective_floor(spec: ConvSpec, dims: np.ndarray, totals: np.ndarray, procs: int,
                     pass_: str, keep_window: bool) -> np.ndarray:
    """A lower bound of :func:`_objective` for each grid (rows of ``dims``), in closed
    form: the larger of the average and rank 0's. Every byte received is sent by another
    rank, so the ranks' received + sent bytes add up to ``2·total`` and the busiest
    rank's are at least the average ``2·total/P``; and at least any one rank's, here
    rank 0's (every coordinate 0: the largest blocks and filter part, often the busiest;
    :func:`_first_rank_traffic`)."""
    return np.maximum(2 * totals / procs,
                      _first_rank_traffic(spec, dims, pass_, keep_window).astype(np.float64))


def best_grid(spec: ConvSpec, procs: int, memory_bytes: int | None = None,
              axes: tuple[str, ...] = GRID_AXES, pass_: str = "forward",
              keep_window: bool = True) -> SearchResult | None:
    """The grid minimising (busiest rank's received + sent bytes of ``pass_``, total
    received bytes, split dims, spatial splits) among :func:`candidate_grids` whose
    max-rank memory of ``pass_`` fits ``memory_bytes``; None if none does.

    Exact: grids are visited in increasing order of a closed-form lower bound of their
    busiest rank's received + sent bytes (:func:`_objective_floor`: the larger of the
    average and rank 0's), and the search stops once that floor exceeds the best
    objective found.

    Raises
    ------
    ValueError
        If the layer or ``procs`` is beyond :func:`check_plannable`, or for integer
        training passes.
    """
    check_plannable(spec, procs)
    pass_ = _check_pass(spec, pass_)
    dims = _candidate_dims(spec, procs, axes)
    if len(dims) == 0:
        return None
    totals = _totals(spec, dims, pass_, keep_window)
    floors = _objective_floor(spec, dims, totals, procs, pass_, keep_window)
    best: tuple | None = None
    evaluated = 0
    for i in np.argsort(floors, kind="stable"):
        if best is not None and floors[i] > best[0]:
            break
        g = Grid(*(int(v) for v in dims[i]))
        evaluated += 1
        obj = _objective(spec, g, pass_, keep_window)
        if best is not None and obj > best[0]:
            continue
        mem = max_rank_memory_bytes(spec, g, pass_, keep_window)
        if memory_bytes is not None and mem > memory_bytes:
            continue
        key = (obj, int(totals[i]), _tie_key(g))
        if best is None or key < best[:3]:
            best = (*key, g, mem)
    if best is None:
        return None
    obj, tot, _, g, mem = best
    return SearchResult(g, max_rank_recv_bytes(spec, g, pass_, keep_window), tot, mem,
                        len(dims), evaluated, obj)


def min_memory_grid(spec: ConvSpec, procs: int, pass_: str = "forward",
                    keep_window: bool = True) -> tuple[Grid, int] | None:
    """The grid needing the least per-rank memory (max over ranks), for error messages."""
    grids = candidate_grids(spec, procs)
    if not grids:
        return None
    mems = [max_rank_memory_bytes(spec, g, pass_, keep_window) for g in grids]
    i = int(np.argmin(mems))
    return grids[i], mems[i]


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """A grid for one layer and one pass with every rank's exact expected bytes (a plain
    value).

    ``pass_`` is ``forward``, ``dgrad``, ``wgrad`` or ``step`` (forward, dgrad and wgrad
    on one grid; ``keep_window``: the forward's input window kept for wgrad, else
    gathered again). The grid minimises ``max_rank_traffic_bytes``, the busiest rank's
    received + sent bytes of the pass (for ``step``, its step total).
    ``lower_bound_bytes`` is the memory-independent bound of :mod:`parconv.bounds` on
    that same quantity for ``P`` ranks (for ``step``: the ``keep`` bound of
    :func:`parconv.bounds.step_bounds`, which holds for any algorithm, kept data or
    not), or None when vacuous (≤ 0); ``bound`` keeps its details (for ``step`` also
    the ``separate`` bound against the sum over the three passes, each run alone on the
    grid, of its busiest rank's bytes).
    """

    spec: ConvSpec
    grid: Grid
    max_rank_recv_bytes: int
    lower_bound_bytes: float | None
    total_recv_bytes: int = 0
    max_rank_memory_bytes: int = 0
    memory_limit_bytes: int | None = None
    bound: dict[str, Any] = field(default_factory=dict)
    search: dict[str, int] = field(default_factory=dict)
    pass_: str = "forward"
    keep_window: bool = True

    @property
    def procs(self) -> int:
        return self.grid.size

    @property
    def operations(self) -> tuple[str, ...]:
        """The pass's operations in execution order
        (:func:`parconv.planner.adjoint.pass_operations`)."""
        return pass_operations(self.pass_, self.keep_window)

    @cached_property
    def max_rank_traffic_bytes(self) -> int:
        """Exact maximum over ranks of received + sent bytes of the pass
        (:func:`max_rank_traffic_bytes`)."""
        return max_rank_traffic_bytes(self.spec, self.grid, self.pass_, self.keep_window)

    @property
    def ratio_to_bound(self) -> float | None:
        """Busiest rank's received + sent bytes ÷ the memory-independent bound (None if
        vacuous). The bound bounds this quantity for every execution, so it is ≥ 1."""
        if not self.lower_bound_bytes:
            return None
        return self.max_rank_traffic_bytes / self.lower_bound_bytes

    @property
    def lemma_bound_bytes(self) -> float | None:
        """The busiest-processor lemma alone (``lower_bound_bytes`` without the averaging
        bound, docs/theory.md §5), None when vacuous: the yardstick of
        :attr:`recv_ratio_grid_family`."""
        lemma = self.bound.get("lemma_bytes")
        return float(lemma) if lemma is not None and lemma > 0 else None

    @property
    def recv_ratio_grid_family(self) -> float | None:
        """Busiest rank's *received* bytes ÷ the busiest-processor lemma
        (:attr:`lemma_bound_bytes`): a figure for the grid family only.

        The lemma does not bound received bytes alone for every execution (a schedule
        relaying partial sums through idle ranks receives less); the grid algorithm
        receives every input and filter element it uses but does not own, and its
        reduce-scatter receives as much as it sends on even splits, so for it the figure
        is comparable (never below 1 on the grids tried; docs/theory.md §5).
        """
        lemma = self.lemma_bound_bytes
        return self.max_rank_recv_bytes / lemma if lemma else None

    @cached_property
    def _arrays(self) -> dict[str, np.ndarray]:
        idx = _all_indices(self.grid)
        shape = self.grid.dims
        out = {}
        vol = _pass_volumes(self.spec, self.grid, idx, self.pass_, self.keep_window)
        for op, (r, s) in vol.items():
            out[op + ".recv"] = np.broadcast_to(r, shape).ravel()
            out[op + ".send"] = np.broadcast_to(s, shape).ravel()
        mem = _memory_bits(self.spec, self.grid, idx, self.pass_, self.keep_window)
        out["memory"] = np.broadcast_to(mem, shape).ravel() // 8
        return out

    def rank_volumes(self) -> dict[str, np.ndarray]:
        """Arrays over ranks (rank order): ``recv_bytes``, ``send_bytes``, ``memory_bytes``
        and ``<op>.recv`` / ``<op>.send`` for each operation of the pass."""
        a = dict(self._arrays)
        a["recv_bytes"] = sum(a[op + ".recv"] for op in self.operations)
        a["send_bytes"] = sum(a[op + ".send"] for op in self.operations)
        a["memory_bytes"] = a.pop("memory")
        return a

    def halos(self, r: int) -> dict[int, tuple[int, int]]:
        """Forward halo bytes ``{peer_rank: (recv, send)}`` of rank ``r`` (as
        :func:`parconv.planner.partition.halo_counts`, in bytes)."""
        s, g = self.spec, self.grid
        ib, ik, ic, ih, iw = g.coords(r)
        bc = (balanced_block(s.B, g.b, ib), balanced_block(s.C, g.c, ic))
        scale = (bc[0][1] - bc[0][0]) * (bc[1][1] - bc[1][0]) * (s.precision.p_input // 8)
        th, tw = axis_table(s.axes[0], g.h), axis_table(s.axes[1], g.w)

        def rows(t: AxisTable, i: int, reader: bool) -> dict[int, int]:
            rd, ow, cnt = t.pairs
            sel = (rd == i) if reader else (ow == i)
            other = ow[sel] if reader else rd[sel]
            return dict(zip(other.tolist(), cnt[sel].tolist()))

        out: dict[int, list[int]] = {}
        for slot, reader in ((0, True), (1, False)):
            rh, rw = rows(th, ih, reader), rows(tw, iw, reader)
            for jh, nh in rh.items():
                for jw, nw in rw.items():
                    if (jh, jw) != (ih, iw):
                        peer = g.rank((ib, ik, ic, jh, jw))
                        out.setdefault(peer, [0, 0])[slot] += nh * nw * scale
        return {p: (v[0], v[1]) for p, v in sorted(out.items())}

    def rank(self, r: int) -> dict[str, Any]:
        """One rank: coordinates, blocks (half-open ranges), bytes per operation of the
        pass, total received/sent bytes, forward halo peers and peak memory."""
        from .partition import layout

        me = layout(self.spec, self.grid, r)
        a = self._arrays
        ops = {op: {"recv_bytes": int(a[op + ".recv"][r]), "send_bytes": int(a[op + ".send"][r])}
               for op in self.operations}
        blocks = {
            "batch": me.batch, "out_channels": me.out_channels, "in_channels": me.in_channels,
            "out_rows": me.out_rows, "out_cols": me.out_cols, "own_rows": me.own_rows,
            "own_cols": me.own_cols, "input_channels_owned": me.input_channels_owned,
            "filter_out_channels_owned": me.filter_out_channels_owned,
            "output_out_channels_owned": me.output_out_channels_owned,
            "input_window_rows": me.need_window[0], "input_window_cols": me.need_window[1],
        }
        return {
            "rank": r,
            "coords": dict(zip(GRID_AXES, me.coords)),
            "blocks": {k: list(v) for k, v in blocks.items()},
            "recv_bytes": sum(v["recv_bytes"] for v in ops.values()),
            "send_bytes": sum(v["send_bytes"] for v in ops.values()),
            "operations": ops,
            "halo": {str(p): {"recv_bytes": rv, "send_bytes": sd}
                     for p, (rv, sd) in self.halos(r).items()},
            "memory_bytes": int(a["memory"][r]),
        }

    def ranks(self) -> list[dict[str, Any]]:
        """:meth:`rank` for every rank, in rank order."""
        return [self.rank(r) for r in range(self.procs)]

    def to_dict(self, include_ranks: bool = True) -> dict[str, Any]:
        """JSON-friendly form (``ranks`` omitted when ``include_ranks`` is false)."""
        d: dict[str, Any] = {
            "layer": self.spec.to_dict(),
            "pass": self.pass_,
            "keep_window": self.keep_window,
            "operations": list(self.operations),
            "procs": self.procs,
            "grid": self.grid.as_dict(),
            "objective": "max_rank_traffic_bytes",
            "max_rank_recv_bytes": self.max_rank_recv_bytes,
            "total_recv_bytes": self.total_recv_bytes,
            "max_rank_memory_bytes": self.max_rank_memory_bytes,
            "memory_limit_bytes": self.memory_limit_bytes,
            "lower_bound_bytes": self.lower_bound_bytes,
            "max_rank_traffic_bytes": self.max_rank_traffic_bytes,
            "ratio_to_bound": self.ratio_to_bound,
            "lemma_bound_bytes": self.lemma_bound_bytes,
            "recv_ratio_grid_family": self.recv_ratio_grid_family,
            "bound": self.bound,
            "search": self.search,
        }
        if include_ranks:
            d["ranks"] = self.ranks()
        return d


def _bound_info(spec: ConvSpec, grid: Grid, pass_: str = "forward",
                keep_window: bool = True) -> tuple[float | None, dict[str, Any]]:
    """The memory-independent bound on the busiest rank's received + sent bytes of
    ``pass_`` (None when vacuous) and its details.

    ``step``: the ``keep`` bound of :func:`parconv.bounds.step_bounds` (any algorithm,
    any data kept between the passes) bounds the busiest rank's step total, which is
    what the plan minimises; the ``separate`` bound (passes run one after another,
    nothing kept) bounds the sum over the passes of each pass's busiest rank, compared
    here with that sum for the three passes each run alone on the grid
    (``separate_sum_bytes``)."""
    from ..bounds import parallel_memory_independent_bound, step_memory_independent_bounds

    procs = grid.size
    if pass_ != "step":
        bd = parallel_memory_independent_bound(spec, procs, pass_=pass_)
        info = {"bytes": float(bd.bytes), "binding": bd.binding, "vacuous": bool(bd.vacuous),
                "lemma_bytes": float(bd.details["lemma_bits"]) / 8.0}
        return (None if bd.vacuous or bd.bytes <= 0 else float(bd.bytes)), info
    if procs == 1:
        return None, {"bytes": 0.0, "binding": "one processor moves nothing", "vacuous": True,
                      "class": "keep"}
    sb = step_memory_independent_bounds(spec, procs)
    keep, sep = sb["keep"], sb["separate"]
    parts = {j: max_rank_traffic_bytes(spec, grid, j) for j in ("forward", "dgrad", "wgrad")}
    total = sum(parts.values())
    info = {"bytes": float(keep.bytes), "binding": keep.binding, "vacuous": bool(keep.vacuous),
            "class": "keep", "lemma_bytes": float(keep.details["lemma_bits"]) / 8.0,
            "separate": {"bytes": float(sep.bytes), "binding": sep.binding,
                         "vacuous": bool(sep.vacuous), "per_pass_max_rank_traffic_bytes": parts,
                         "separate_sum_bytes": total,
                         "ratio": (total / sep.bytes) if sep.bytes > 0 else None}}
    return (None if keep.vacuous or keep.bytes <= 0 else float(keep.bytes)), info


def plan_for_grid(spec: ConvSpec, grid: Grid, memory_bytes: int | None = None,
                  pass_: str = "forward", keep_window: bool = True) -> Plan:
    """The plan of ``pass_`` for a given grid.

    Raises
    ------
    ValueError
        If the grid splits a dimension into more blocks than it has items, (with
        ``memory_bytes``) some rank needs more memory than that, or for integer training.
    """
    check_grid(spec, grid)
    check_plannable(spec, grid.size)
    pass_ = _check_pass(spec, pass_)
    mem = max_rank_memory_bytes(spec, grid, pass_, keep_window)
    if memory_bytes is not None and mem > memory_bytes:
        raise ValueError(f"grid {grid} needs {mem} bytes on its busiest rank, more than "
                         f"--memory {memory_bytes} bytes")
    lb, info = _bound_info(spec, grid, pass_, keep_window)
    return Plan(spec, grid, max_rank_recv_bytes(spec, grid, pass_, keep_window), lb,
                total_recv_bytes(spec, grid, pass_, keep_window), mem, memory_bytes, info,
                {"candidates": 1, "evaluated": 1}, pass_, keep_window)


def plan(spec: ConvSpec, procs: int, memory_bytes: int | None = None, pass_: str = "forward",
         keep_window: bool = True) -> Plan:
    """The grid of ``procs`` ranks minimising the busiest rank's received + sent bytes
    of ``pass_`` (``forward``, ``dgrad``, ``wgrad``, or ``step``: one grid for the whole
    training step, its busiest rank's step total).

    Ties go to fewer total bytes, then fewer split dimensions, then fewer spatial splits.
    With ``memory_bytes``, grids whose busiest rank needs more memory (of the pass) are
    excluded.

    Raises
    ------
    ValueError
        If ``procs`` is not positive, no grid of ``procs`` ranks fits the layer's
        dimensions, none fits in ``memory_bytes`` (the message names the memory the
        least demanding grid needs), or for integer training passes.
    """
    if not isinstance(procs, (int, np.integer)) or procs < 1:
        raise ValueError(f"procs must be a positive integer, got {procs!r}")
    if memory_bytes is not None and memory_bytes <= 0:
        raise ValueError(f"memory must be positive, got {memory_bytes}")
    pass_ = _check_pass(spec, pass_)
    res = best_grid(spec, int(procs), memory_bytes, pass_=pass_, keep_window=keep_window)
    if res is None:
        if not candidate_grids(spec, int(procs)):
            raise ValueError(f"no grid of {procs} ranks fits {spec.name or 'the layer'}: every "
                             f"factorisation splits some dimension (B={spec.B}, K={spec.K}, "
                             f"C={spec.C}, H={spec.H}, W={spec.W}) into more blocks than items")
        g, need = min_memory_grid(spec, int(procs), pass_, keep_window)
        raise ValueError(f"no grid of {procs} ranks fits in {memory_bytes} bytes per rank; the "
                         f"least memory any grid needs is {need} bytes per rank (grid {g})")
    lb, info = _bound_info(spec, res.grid, pass_, keep_window)
    pl = Plan(spec, res.grid, res.max_rank_recv_bytes, lb, res.total_recv_bytes,
              res.max_rank_memory_bytes, memory_bytes, info,
              {"candidates": res.candidates, "evaluated": res.evaluated}, pass_, keep_window)
    pl.__dict__["max_rank_traffic_bytes"] = res.max_rank_traffic_bytes   # already computed
    return pl
