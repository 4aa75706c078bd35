"""The processor-grid planner: exact per-rank volumes and the grid search.

For the grid algorithm of THEORY.md §6, as fixed by :mod:`parconv.partition`, this module

* evaluates every rank's payload bytes per operation **exactly** (uneven blocks, halos,
  stride skips) with vectorised numpy — the numbers equal
  :func:`parconv.partition.rank_volume` rank by rank (tested);
* evaluates the **maximum over ranks** of received bytes and of memory fast, without
  visiting every rank: a rank's volume depends only on each axis's *block class* (balanced
  blocks have at most two sizes; spatial blocks also differ by halo and stride phase), so
  it evaluates one representative per product of classes (see :func:`_class_indices`);
  likewise the maximum over ranks of received + sent bytes, the quantity the lower bound
  bounds (:func:`max_rank_traffic_bytes`, other representatives);
* searches all ordered factorisations ``P = P_b·P_k·P_c·P_h·P_w`` (each factor at most its
  dimension) for the grid minimising the maximum over ranks of received bytes, ties
  broken by total bytes, then fewer split dimensions, then fewer spatial splits. Grids
  are visited in order of a closed-form average (a lower bound on the maximum), so most
  are pruned without evaluation.

A :class:`Plan` is a plain value: grid, bound, every rank's blocks, halos and bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from .partition import (
    GRID_AXES,
    OPERATIONS,
    Grid,
    balanced_block,
    block_sizes,
    check_grid,
    kernel_workspace_bytes,
    peak_memory_bits,
)
from .spec import Axis, ConvSpec

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


def _class_indices(spec: ConvSpec, grid: Grid) -> tuple[np.ndarray, ...]:
    """One index per block class on each grid axis, enough for the exact maximum.

    A rank's volume is a function of ``(ib, ik, ic, ih, iw)`` through: the b-block size
    (a threshold at ``B mod P_b``); the k-block size and, for each c-block size ``v``, the
    part of ``v`` owned (threshold ``v mod P_k``); the c-block size and, for each k-block
    size ``u``, the output part owned (threshold ``u mod P_c``); the spatial block class;
    and the filter part owned, which is larger exactly when the fiber index
    ``f = (ib·P_h + ih)·P_w + iw`` is below ``k_blk mod (P_b·P_h·P_w)``. Within a product of
    classes ``f`` is largest at the largest index of each class, and that rank receives
    the most (smallest filter part). So the maximum over ranks is the maximum over the
    largest index of each class — an exact reduction, not an estimate.
    """
    kvals = set(block_sizes(spec.K, grid.k).tolist())
    cvals = set(block_sizes(spec.C, grid.c).tolist())
    ib = _interval_max(grid.b, [spec.B % grid.b])
    ik = _interval_max(grid.k, [spec.K % grid.k] + [v % grid.k for v in cvals])
    ic = _interval_max(grid.c, [spec.C % grid.c] + [u % grid.c for u in kvals])
    ih = axis_table(spec.axes[0], grid.h).classes
    iw = axis_table(spec.axes[1], grid.w).classes
    return ib, ik, ic, ih, iw


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
    F = _fields(spec, grid, idx)
    p = spec.precision
    pi, pf, po = p.p_input // 8, p.p_filter // 8, p.p_accum // 8
    b, cblk, kblk, rs = F["b"], F["cblk"], F["kblk"], spec.R * spec.S
    bhw = b * F["hs"]
    vol = {
        "input_allgather": (pi * b * (cblk - F["cown"]) * F["used"],
                            pi * (grid.k - 1) * b * F["cown"] * F["used"] if send else None),
        "input_halo": (pi * b * cblk * (F["need"] - F["self"]),
                       pi * b * cblk * (F["sent"] - F["self"]) if send else None),
        "filter_allgather": (pf * (kblk - F["kf"]) * cblk * rs,
                             pf * (F["q"] - 1) * F["kf"] * cblk * rs if send else None),
        "output_reduce_scatter": (po * (grid.c - 1) * F["ko"] * bhw,
                                  po * (kblk - F["ko"]) * bhw if send else None),
    }
    return vol


def _memory_bits(spec: ConvSpec, grid: Grid, idx) -> np.ndarray:
    """Per-rank peak memory in bits (as :func:`parconv.partition.rank_memory_bytes` × 8):
    the maximum over phases of the buffers alive (:func:`parconv.partition.memory_phases`)."""
    F = _fields(spec, grid, idx)
    b, cblk, kblk = F["b"], F["cblk"], F["kblk"]
    ih = np.asarray(idx[3], dtype=np.int64).reshape(1, 1, 1, -1, 1)
    iw = np.asarray(idx[4], dtype=np.int64).reshape(1, 1, 1, 1, -1)
    th, tw = axis_table(spec.axes[0], grid.h), axis_table(spec.axes[1], grid.w)
    rs = spec.R * spec.S
    n = {
        "owned_input": b * F["cown"] * F["own"],
        "owned_filter": -(-kblk // F["q"]) * cblk * rs,
        "allgather_send": b * F["cown"] * F["used"] * (grid.k > 1),
        "gathered": b * cblk * F["used"] * (grid.k > 1),
        "window": b * cblk * F["win"],
        "halo_send": b * cblk * (F["sent"] - F["self"]),
        "halo_recv": b * cblk * (F["need"] - F["self"]),
        "filter": kblk * cblk * rs * (F["q"] > 1),
        "kernel": _kernel_bytes(spec, b, kblk, cblk, th.out[ih], tw.out[iw], th.need[ih],
                                tw.need[iw]),
        "partial": kblk * b * F["hs"],
        "recv": F["ko"] * b * F["hs"] * (grid.c > 1),
        "mpi_reduce_scatter": F["ko"] * b * F["hs"] * (grid.c > 1),
        "result": F["ko"] * b * F["hs"],
        "output": F["ko"] * b * F["hs"],
    }
    return peak_memory_bits(spec.precision, n)


def _kernel_bytes(spec: ConvSpec, *args: np.ndarray) -> np.ndarray:
    """:func:`parconv.partition.kernel_workspace_bytes` evaluated once per distinct
    combination of its (broadcast) arguments."""
    arrs = np.broadcast_arrays(*(np.asarray(a, dtype=np.int64) for a in args))
    if arrs[0].size == 0:
        return np.zeros(arrs[0].shape, dtype=np.int64)
    flat = np.stack([a.ravel() for a in arrs], axis=1)
    uniq, inv = np.unique(flat, axis=0, return_inverse=True)
    vals = np.asarray(kernel_workspace_bytes(spec, *uniq.T), dtype=np.int64)
    return vals[inv.ravel()].reshape(arrs[0].shape)


def _all_indices(grid: Grid) -> tuple[np.ndarray, ...]:
    return tuple(np.arange(d, dtype=np.int64) for d in grid.dims)


def _totals(spec: ConvSpec, dims: np.ndarray) -> np.ndarray:
    """Sum over ranks of received bytes for each grid (rows of ``dims``), closed form."""
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
    return (pi * (k - 1) * bc * uh * uw + pi * k * bc * (nh * nw - sh * sw)
            + pf * (b * h * w - 1) * spec.K * spec.C * spec.R * spec.S
            + po * (c - 1) * spec.K * spec.B * spec.H * spec.W)


def total_recv_bytes(spec: ConvSpec, grid: Grid) -> int:
    """Sum over ranks of received bytes (closed form; equals the sum of the per-rank
    volumes, tested)."""
    check_plannable(spec, grid.size)
    return int(_totals(spec, np.array([grid.dims], dtype=np.int64))[0])


def max_rank_recv_bytes(spec: ConvSpec, grid: Grid) -> int:
    """Exact maximum over ranks of received bytes (all operations), via block classes."""
    check_plannable(spec, grid.size)
    vol = _volumes(spec, grid, _class_indices(spec, grid), send=False)
    return int(sum(r for r, _ in vol.values()).max())


def _traffic_class_indices(spec: ConvSpec, grid: Grid) -> tuple[np.ndarray, ...]:
    """One index per block class on each grid axis, enough for the exact maximum over
    ranks of received + sent bytes.

    The classes are those of :func:`_class_indices` (on the spatial axes refined by the
    rows a block sends to others, ``sent``, which the halo's send depends on), but the
    representative is the **smallest** index of each class. Within a product of classes
    every quantity of :func:`_volumes` is constant (b-, k- and c-block sizes, the parts
    ``cown`` and ``ko`` owned, the spatial facts) except the filter part owned,
    ``kf = ⌊k_blk/q⌋ + [f < k_blk mod q]`` with ``q = P_b·P_h·P_w`` and the fiber index
    ``f = (ib·P_h + ih)·P_w + iw``. A rank's filter traffic is
    ``p_F·c_blk·R·S·(k_blk − kf + (q − 1)·kf) = p_F·c_blk·R·S·(k_blk + (q − 2)·kf)``,
    non-decreasing in ``kf`` (``q ≥ 2``; constant when ``q ≤ 2``), and ``kf`` is
    non-increasing in ``f``, which increases with each of ``ib, ih, iw``. So within a
    product of classes recv + send is largest at the smallest index of each class, and
    the maximum over these representatives is the exact maximum over all ranks (tested
    against brute force in ``tests/test_plan.py``).
    """
    kvals = set(block_sizes(spec.K, grid.k).tolist())
    cvals = set(block_sizes(spec.C, grid.c).tolist())

    def interval_min(p: int, thresholds) -> np.ndarray:
        return np.array(sorted({0} | {int(t) for t in thresholds if 0 < t < p}), dtype=np.int64)

    def spatial_min(axis: Axis, p: int) -> np.ndarray:
        t = axis_table(axis, p)
        feats = np.stack([t.out, t.own, t.used, t.need, t.self_need, t.sent, t.win], axis=1)
        _, first = np.unique(feats, axis=0, return_index=True)
        return np.sort(first.astype(np.int64))

    ib = interval_min(grid.b, [spec.B % grid.b])
    ik = interval_min(grid.k, [spec.K % grid.k] + [v % grid.k for v in cvals])
    ic = interval_min(grid.c, [spec.C % grid.c] + [u % grid.c for u in kvals])
    return ib, ik, ic, spatial_min(spec.axes[0], grid.h), spatial_min(spec.axes[1], grid.w)


def max_rank_traffic_bytes(spec: ConvSpec, grid: Grid) -> int:
    """Exact maximum over ranks of received + sent bytes (all operations), via block
    classes (:func:`_traffic_class_indices`).

    This is the quantity the memory-independent bound bounds for *every* execution
    (docs/theory.md §5): the processor doing the most work must receive the input and
    filter elements it uses but does not own and send a contribution for every output it
    updates but does not own, so its received + sent bytes are at least the bound.
    """
    vol = _volumes(spec, grid, _traffic_class_indices(spec, grid))
    return int(sum(r + s for r, s in vol.values()).max())


def _memory_class_indices(spec: ConvSpec, grid: Grid) -> tuple[np.ndarray, ...]:
    """:func:`_class_indices` with the spatial classes refined by ``sent`` (the halo send
    segments are part of the memory, not of the received bytes): memory is constant
    within each product of these classes, so its maximum over ranks is exact."""
    ib, ik, ic, _, _ = _class_indices(spec, grid)
    spatial = []
    for axis, p in ((spec.axes[0], grid.h), (spec.axes[1], grid.w)):
        t = axis_table(axis, p)
        feats = np.stack([t.out, t.own, t.used, t.need, t.self_need, t.win, t.sent], axis=1)
        _, first = np.unique(feats[::-1], axis=0, return_index=True)
        spatial.append(np.sort(p - 1 - first))   # the largest index of each class
    return ib, ik, ic, *spatial


def max_rank_memory_bytes(spec: ConvSpec, grid: Grid) -> int:
    """Exact maximum over ranks of :func:`parconv.partition.rank_memory_bytes`."""
    check_plannable(spec, grid.size)
    return int(_memory_bits(spec, grid, _memory_class_indices(spec, grid)).max()) // 8


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
    """Best grid of a search with its exact figures."""

    grid: Grid
    max_rank_recv_bytes: int
    total_recv_bytes: int
    max_rank_memory_bytes: int
    candidates: int
    evaluated: int


def best_grid(spec: ConvSpec, procs: int, memory_bytes: int | None = None,
              axes: tuple[str, ...] = GRID_AXES) -> SearchResult | None:
    """The grid minimising (max-rank recv, total recv, split dims, spatial splits) among
    :func:`candidate_grids` whose max-rank memory fits ``memory_bytes``; None if none does.

    Exact: a grid is skipped only when its average received bytes (a lower bound on its
    maximum) already exceeds the best maximum found.

    Raises
    ------
    ValueError
        If the layer or ``procs`` is beyond :func:`check_plannable`.
    """
    check_plannable(spec, procs)
    dims = _candidate_dims(spec, procs, axes)
    if len(dims) == 0:
        return None
    totals = _totals(spec, dims)
    best: tuple | None = None
    evaluated = 0
    for i in np.argsort(totals, kind="stable"):
        tot = int(totals[i])
        if best is not None and tot > best[0] * procs:  # average > incumbent's maximum
            break
        g = Grid(*(int(v) for v in dims[i]))
        evaluated += 1
        mx = max_rank_recv_bytes(spec, g)
        if best is not None and mx > best[0]:
            continue
        mem = max_rank_memory_bytes(spec, g)
        if memory_bytes is not None and mem > memory_bytes:
            continue
        key = (mx, tot, _tie_key(g))
        if best is None or key < best[:3]:
            best = (*key, g, mem)
    if best is None:
        return None
    mx, tot, _, g, mem = best
    return SearchResult(g, mx, tot, mem, len(dims), evaluated)


def min_memory_grid(spec: ConvSpec, procs: int) -> tuple[Grid, int] | None:
    """The grid needing the least per-rank memory (max over ranks), for error messages."""
    grids = candidate_grids(spec, procs)
    if not grids:
        return None
    mems = [max_rank_memory_bytes(spec, g) for g in grids]
    i = int(np.argmin(mems))
    return grids[i], mems[i]


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """A grid for one layer with every rank's exact expected bytes (a plain value).

    ``lower_bound_bytes`` is the memory-independent bound of :mod:`parconv.bounds` for
    ``P`` ranks, or None when that bound is vacuous (≤ 0); ``bound`` keeps its details.
    The grid minimises ``max_rank_recv_bytes``; the bound is compared with
    ``max_rank_traffic_bytes`` (received + sent, :attr:`ratio_to_bound`), the quantity it
    bounds for every execution.
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

    @property
    def procs(self) -> int:
        return self.grid.size

    @cached_property
    def max_rank_traffic_bytes(self) -> int:
        """Exact maximum over ranks of received + sent bytes (:func:`max_rank_traffic_bytes`)."""
        return max_rank_traffic_bytes(self.spec, self.grid)

    @property
    def ratio_to_bound(self) -> float | None:
        """Busiest rank's received + sent bytes ÷ the memory-independent bound (None if
        vacuous). The bound bounds this quantity for every execution, so it is ≥ 1."""
        if not self.lower_bound_bytes:
            return None
        return self.max_rank_traffic_bytes / self.lower_bound_bytes

    @property
    def recv_ratio_grid_family(self) -> float | None:
        """Busiest rank's *received* bytes ÷ the bound: a figure for the grid family only.

        The bound does not bound received bytes alone for every execution (a schedule
        relaying partial sums through idle ranks receives less); the grid algorithm
        receives every input and filter element it uses but does not own, and its
        reduce-scatter receives as much as it sends on even splits, so for it the figure
        is comparable (never below 1 on the grids tried; docs/theory.md §5).
        """
        if not self.lower_bound_bytes:
            return None
        return self.max_rank_recv_bytes / self.lower_bound_bytes

    @cached_property
    def _arrays(self) -> dict[str, np.ndarray]:
        idx = _all_indices(self.grid)
        shape = self.grid.dims
        out = {}
        for op, (r, s) in _volumes(self.spec, self.grid, idx).items():
            out[op + ".recv"] = np.broadcast_to(r, shape).ravel()
            out[op + ".send"] = np.broadcast_to(s, shape).ravel()
        out["memory"] = np.broadcast_to(_memory_bits(self.spec, self.grid, idx), shape).ravel() // 8
        return out

    def rank_volumes(self) -> dict[str, np.ndarray]:
        """Arrays over ranks (rank order): ``recv_bytes``, ``send_bytes``, ``memory_bytes``
        and ``<op>.recv`` / ``<op>.send`` for each operation."""
        a = dict(self._arrays)
        a["recv_bytes"] = sum(a[op + ".recv"] for op in OPERATIONS)
        a["send_bytes"] = sum(a[op + ".send"] for op in OPERATIONS)
        a["memory_bytes"] = a.pop("memory")
        return a

    def halos(self, r: int) -> dict[int, tuple[int, int]]:
        """Halo bytes ``{peer_rank: (recv, send)}`` of rank ``r`` (as
        :func:`parconv.partition.halo_counts`, in bytes)."""
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
        """One rank: coordinates, blocks (half-open ranges), bytes per operation, total
        received/sent bytes, halo peers and peak memory."""
        from .partition import layout

        me = layout(self.spec, self.grid, r)
        a = self._arrays
        ops = {op: {"recv_bytes": int(a[op + ".recv"][r]), "send_bytes": int(a[op + ".send"][r])}
               for op in OPERATIONS}
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
            "procs": self.procs,
            "grid": self.grid.as_dict(),
            "max_rank_recv_bytes": self.max_rank_recv_bytes,
            "total_recv_bytes": self.total_recv_bytes,
            "max_rank_memory_bytes": self.max_rank_memory_bytes,
            "memory_limit_bytes": self.memory_limit_bytes,
            "lower_bound_bytes": self.lower_bound_bytes,
            "max_rank_traffic_bytes": self.max_rank_traffic_bytes,
            "ratio_to_bound": self.ratio_to_bound,
            "recv_ratio_grid_family": self.recv_ratio_grid_family,
            "bound": self.bound,
            "search": self.search,
        }
        if include_ranks:
            d["ranks"] = self.ranks()
        return d


def _bound_info(spec: ConvSpec, procs: int) -> tuple[float | None, dict[str, Any]]:
    from .bounds import parallel_memory_independent_bound

    bd = parallel_memory_independent_bound(spec, procs)
    info = {"bytes": float(bd.bytes), "binding": bd.binding, "vacuous": bool(bd.vacuous)}
    return (None if bd.vacuous or bd.bytes <= 0 else float(bd.bytes)), info


def plan_for_grid(spec: ConvSpec, grid: Grid, memory_bytes: int | None = None) -> Plan:
    """The plan for a given grid.

    Raises
    ------
    ValueError
        If the grid splits a dimension into more blocks than it has items, or (with
        ``memory_bytes``) some rank needs more memory than that.
    """
    check_grid(spec, grid)
    check_plannable(spec, grid.size)
    mem = max_rank_memory_bytes(spec, grid)
    if memory_bytes is not None and mem > memory_bytes:
        raise ValueError(f"grid {grid} needs {mem} bytes on its busiest rank, more than "
                         f"--memory {memory_bytes} bytes")
    lb, info = _bound_info(spec, grid.size)
    return Plan(spec, grid, max_rank_recv_bytes(spec, grid), lb, total_recv_bytes(spec, grid),
                mem, memory_bytes, info, {"candidates": 1, "evaluated": 1})


def plan(spec: ConvSpec, procs: int, memory_bytes: int | None = None) -> Plan:
    """The grid of ``procs`` ranks minimising the maximum over ranks of received bytes.

    Ties go to fewer total bytes, then fewer split dimensions, then fewer spatial splits.
    With ``memory_bytes``, grids whose busiest rank needs more memory are excluded.

    Raises
    ------
    ValueError
        If ``procs`` is not positive, no grid of ``procs`` ranks fits the layer's
        dimensions, or none fits in ``memory_bytes`` (the message names the memory the
        least demanding grid needs).
    """
    if not isinstance(procs, (int, np.integer)) or procs < 1:
        raise ValueError(f"procs must be a positive integer, got {procs!r}")
    if memory_bytes is not None and memory_bytes <= 0:
        raise ValueError(f"memory must be positive, got {memory_bytes}")
    res = best_grid(spec, int(procs), memory_bytes)
    if res is None:
        if not candidate_grids(spec, int(procs)):
            raise ValueError(f"no grid of {procs} ranks fits {spec.name or 'the layer'}: every "
                             f"factorisation splits some dimension (B={spec.B}, K={spec.K}, "
                             f"C={spec.C}, H={spec.H}, W={spec.W}) into more blocks than items")
        g, need = min_memory_grid(spec, int(procs))
        raise ValueError(f"no grid of {procs} ranks fits in {memory_bytes} bytes per rank; the "
                         f"least memory any grid needs is {need} bytes per rank (grid {g})")
    lb, info = _bound_info(spec, int(procs))
    return Plan(spec, res.grid, res.max_rank_recv_bytes, lb, res.total_recv_bytes,
                res.max_rank_memory_bytes, memory_bytes, info,
                {"candidates": res.candidates, "evaluated": res.evaluated})
