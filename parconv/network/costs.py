"""Exact per-rank byte models of the layers of a network (pure; no MPI).

Every model returns per-rank ``(recv, send)`` byte arrays (world-rank order) so that the
network plan can charge the busiest rank's received + sent bytes of each step.

* **conv / fc**: the grid algorithm of :mod:`parconv.planner.partition`, volumes from
  :meth:`parconv.planner.plan.Plan.rank_volumes` (input all-gather, halo, filter all-gather,
  output reduce-scatter), permuted from grid order to the placement's world ranks.
* **window ops** (max/avg pooling, adaptive average pooling): run on the layout they
  receive; a rank computes the output rows/columns of its own block index (balanced
  blocks of the output extent) for its batch and channel parts, and receives every input
  row/column its windows read that it does not own, from the owners in its (b, c) group
  (a halo exchange, diagonal peers included). Per axis: ``need[j]`` distinct inputs read by
  output block ``j``, ``self[j]`` those it owns, ``sent[i]`` reads of part ``i``'s inputs
  summed over reading blocks; then ``recv = bc·(need_h·need_w − self_h·self_w)``,
  ``send = bc·(sent_h·sent_w − self_h·self_w)`` (``bc`` = batch × channels of the rank).
* **global average pool**: a reduce-scatter over the ``q = m_h·m_w`` ranks sharing a
  (b, c) block of accumulator-precision partial sums (:func:`parconv.network.layout.
  reduce_hw_layout`): ``recv = (q−1)·sub·b``, ``send = (cblk − sub)·b`` elements.
* **relu, flatten**: no communication; **add, concat**: redistribution of inputs whose
  layout differs from the output's (:mod:`parconv.network.redistribute`).

Activations travel in the layer precision's input type (``p_input``): a convolution's
output is converted to it (for int8: requantised) on the rank that owns it, before any
later communication.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..planner import plan as _plan
from ..planner.partition import Grid
from ..spec import ConvSpec
from .layout import Layout, Placement, block_index, window_output_layout


@dataclass(frozen=True)
class StepCost:
    """Per-rank received and sent bytes of one communication step (world-rank order)."""

    recv: np.ndarray
    send: np.ndarray

    @property
    def max_rank_traffic_bytes(self) -> int:
        """max over ranks of received + sent bytes."""
        return int((self.recv + self.send).max()) if self.recv.size else 0

    @property
    def max_rank_recv_bytes(self) -> int:
        return int(self.recv.max()) if self.recv.size else 0

    @staticmethod
    def zero(procs: int) -> StepCost:
        z = np.zeros(procs, dtype=np.int64)
        return StepCost(z, z)


def canonical(spec: ConvSpec) -> ConvSpec:
    """``spec`` without its name (the cache key of its costs)."""
    return dataclasses.replace(spec, name="") if spec.name else spec


def _tie(g: Grid) -> tuple:
    """Ties: fewer split dimensions, fewer spatial splits (as the single-layer planner)."""
    return (sum(d > 1 for d in g.dims), (g.h > 1) + (g.w > 1), g.h * g.w, g.dims)


@lru_cache(maxsize=65536)
def _grid_volumes(spec: ConvSpec, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    vol_fn, idx_fn = getattr(_plan, "_volumes", None), getattr(_plan, "_all_indices", None)
    if vol_fn is not None and idx_fn is not None:   # fast path: no memory figures
        try:
            vol = vol_fn(spec, grid, idx_fn(grid))
            recv = sum(np.broadcast_to(r, grid.dims) for r, _ in vol.values()).ravel()
            send = sum(np.broadcast_to(s, grid.dims) for _, s in vol.values()).ravel()
            return np.asarray(recv, np.int64), np.asarray(send, np.int64)
        except (TypeError, ValueError, AttributeError):
            pass
    v = _plan.plan_for_grid(spec, grid).rank_volumes()      # public path
    return np.asarray(v["recv_bytes"], np.int64), np.asarray(v["send_bytes"], np.int64)


def conv_cost(spec: ConvSpec, placement: Placement) -> StepCost:
    """Exact per-rank bytes of a convolution on ``placement`` (world-rank order)."""
    recv, send = _grid_volumes(canonical(spec), placement.grid)
    world = placement.world_ranks().ravel()
    r, s = np.empty_like(recv), np.empty_like(send)
    r[world], s[world] = recv, send
    return StepCost(r, s)


def _class_bounds(n_thresholds: list[int], p: int) -> np.ndarray:
    cuts = sorted({int(t) for t in n_thresholds if 0 < t < p} | {p})
    hi = np.array(cuts, dtype=np.int64) - 1
    return np.unique(np.concatenate([hi, np.concatenate([[0], hi[:-1] + 1])]))


@lru_cache(maxsize=4096)
def _spatial_bounds(axis, p: int) -> np.ndarray:
    t = _plan.axis_table(axis, p)
    feats = np.stack([t.out, t.own, t.used, t.need, t.self_need, t.win, t.sent], axis=1)
    _, inv = np.unique(feats, axis=0, return_inverse=True)
    inv = inv.ravel()
    lo = np.full(inv.max() + 1, p, np.int64)
    hi = np.full(inv.max() + 1, -1, np.int64)
    np.minimum.at(lo, inv, np.arange(p))
    np.maximum.at(hi, inv, np.arange(p))
    return np.unique(np.concatenate([lo, hi]))


@lru_cache(maxsize=65536)
def _max_traffic(spec: ConvSpec, grid: Grid) -> int:
    """Exact max over ranks of recv + send via block classes: a rank's bytes depend on its
    class on every axis (b/k/c size thresholds; spatial blocks with equal halo facts,
    including the reads of its rows by others) and on its filter part, which is larger
    exactly for the smaller fiber indices ``f = (ib·P_h + ih)·P_w + iw``. Recv + send is
    linear in the filter part, so its maximum over a product of classes is at the smallest
    or the largest ``f``: the first or last index of each class. Evaluating those is exact."""
    vol_fn = getattr(_plan, "_volumes", None)
    if vol_fn is not None and hasattr(_plan, "axis_table"):
        try:
            kv = set(_plan.block_sizes(spec.K, grid.k).tolist())
            cv = set(_plan.block_sizes(spec.C, grid.c).tolist())
            idx = (_class_bounds([spec.B % grid.b], grid.b),
                   _class_bounds([spec.K % grid.k] + [v % grid.k for v in cv], grid.k),
                   _class_bounds([spec.C % grid.c] + [u % grid.c for u in kv], grid.c),
                   _spatial_bounds(spec.axes[0], grid.h), _spatial_bounds(spec.axes[1], grid.w))
            vol = vol_fn(spec, grid, idx)
            return int(sum(r + s for r, s in vol.values()).max())
        except (TypeError, ValueError, AttributeError):
            pass
    recv, send = _grid_volumes(spec, grid)
    return int((recv + send).max())


def conv_max_traffic(spec: ConvSpec, grid: Grid) -> int:
    """max over ranks of received + sent bytes of a convolution on ``grid`` (any order):
    :func:`parconv.planner.plan.max_rank_traffic_bytes` where the planner has it, else the same
    figure by the class argument of :func:`_max_traffic`."""
    spec = canonical(spec)
    fn = getattr(_plan, "max_rank_traffic_bytes", None)
    return _planner_traffic(spec, grid) if callable(fn) else _max_traffic(spec, grid)


@lru_cache(maxsize=65536)
def _planner_traffic(spec: ConvSpec, grid: Grid) -> int:
    return int(_plan.max_rank_traffic_bytes(spec, grid))


def _lower_bounds(spec: ConvSpec, procs: int, axes: tuple[str, ...]):
    """Candidate grids with a lower bound on each one's busiest-rank traffic: twice the
    average received bytes (every byte received is sent) when the planner's vectorised
    totals are available, else the exact max received bytes."""
    dims_fn, totals_fn = getattr(_plan, "_candidate_dims", None), getattr(_plan, "_totals", None)
    if dims_fn is not None and totals_fn is not None:
        try:
            dims = dims_fn(spec, procs, axes)
            if len(dims) == 0:
                return [], np.zeros(0, np.int64)
            return ([Grid(*(int(v) for v in d)) for d in dims],
                    2 * np.asarray(totals_fn(spec, dims), np.int64) // procs)
        except TypeError:  # signature changed: use the public functions
            pass
    grids = _plan.candidate_grids(spec, procs, axes)
    return grids, np.array([_plan.max_rank_recv_bytes(spec, g) for g in grids], np.int64)


def best_grids(spec: ConvSpec, procs: int, count: int,
               axes: tuple[str, ...] = ("b", "k", "c", "h", "w")) -> tuple[tuple[Grid, int], ...]:
    """The ``count`` grids of ``procs`` ranks (splitting only ``axes``) with the least
    busiest-rank received + sent bytes, with those bytes, best first; ties to fewer split
    dimensions, then fewer spatial splits. Exact: grids are visited by a lower bound on
    their traffic, and the search stops once it exceeds the ``count``-th best traffic."""
    return _best_grids(canonical(spec), int(procs), int(count), tuple(axes))


@lru_cache(maxsize=4096)
def _best_grids(spec: ConvSpec, procs: int, count: int, axes: tuple[str, ...]):
    grids, lbs = _lower_bounds(spec, procs, axes)
    best: list[tuple[int, tuple, Grid]] = []
    for i in np.argsort(lbs, kind="stable"):
        if len(best) >= count and lbs[i] > best[-1][0]:
            break
        g = grids[int(i)]
        if len(best) >= count and _plan.max_rank_recv_bytes(spec, g) > best[-1][0]:
            continue                      # its received bytes alone exceed the incumbent
        best.append((conv_max_traffic(spec, g), _tie(g), g))
        best.sort(key=lambda e: (e[0], e[1]))
        del best[count:]
    return tuple((g, t) for t, _, g in best)


def _axis_reads(windows: np.ndarray, n_in: int, in_owner: np.ndarray, m: int):
    """Per-part (need, self, sent) of one axis of a window op (see module docstring)."""
    n_out = windows.shape[0]
    reader = block_index(np.arange(n_out), n_out, m)
    lens = windows[:, 1] - windows[:, 0]
    rep = np.repeat(np.arange(n_out), lens)
    x = np.repeat(windows[:, 0], lens) + (np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens,
                                                                            lens))
    key = np.unique(reader[rep] * n_in + x)
    rb, xr = key // n_in, key % n_in
    owner = in_owner[xr]
    need = np.bincount(rb, minlength=m)
    self_ = np.bincount(rb[owner == rb], minlength=m)
    sent = np.bincount(owner, minlength=m)
    return need, self_, sent


def window_cost(src: Layout, windows: tuple[np.ndarray, np.ndarray], elem_bytes: int,
                label: str = "") -> tuple[Layout, StepCost]:
    """Output layout and exact halo bytes of a window op on layout ``src``."""
    out_hw = (windows[0].shape[0], windows[1].shape[0])
    out = window_output_layout(src, out_hw, label)
    t = [_axis_reads(windows[i], src.shape[2 + i], src.owners[2 + i], src.blocks[2 + i])
         for i in range(2)]
    j = src.block_of_rank
    bc = src.sizes[0][j[:, 0]] * src.sizes[1][j[:, 1]]
    (nh, sh, th), (nw, sw, tw) = t
    jh, jw = j[:, 2], j[:, 3]
    self_ = sh[jh] * sw[jw]
    recv = bc * (nh[jh] * nw[jw] - self_) * elem_bytes
    send = bc * (th[jh] * tw[jw] - self_) * elem_bytes
    return out, StepCost(recv, send)


def reduce_hw_cost(src: Layout, elem_bytes: int) -> StepCost:
    """Exact bytes of the reduce-scatter of a global average pool on ``src``."""
    mb, mc, mh, mw = src.blocks
    q = mh * mw
    j = src.block_of_rank
    b = src.sizes[0][j[:, 0]]
    cblk = src.sizes[1][j[:, 1]]
    sub = cblk // q + ((j[:, 2] * mw + j[:, 3]) < cblk % q)
    return StepCost((q - 1) * sub * b * elem_bytes, (cblk - sub) * b * elem_bytes)
