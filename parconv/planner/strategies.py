"""Fixed parallelisation strategies, with the planner's accounting (THEORY.md §6).

Each strategy returns the best grid *within its family* (minimum over grids of the
maximum over ranks of received bytes, same ties as the planner) or None when no grid of
``P`` ranks exists in the family (e.g. batch-only when ``P > B``). Like the planner it
also reports the maximum over ranks of received + sent bytes on that grid, the quantity
the lower bound bounds, so either figure compares like for like with the plan's:

* ``batch_only``: ``P_b = P`` (data parallel: every rank gathers the whole filter);
* ``data_parallel_training`` (training passes only): ``P_b = P`` with the filter
  *replicated* (no filter allgather) and the filter gradient all-reduced, priced as a
  reduce-scatter plus an allgather of the accumulator-precision gradient over the
  ``P`` ranks (:func:`data_parallel_training`) -- the baseline every framework has;
* ``spatial_only``: ``P_h × P_w`` (halo exchange; LBANN DistConv, distdl, Mesh-TF);
* ``batch_spatial``: ``P_b × P_h × P_w`` (LBANN's sample + spatial hybrid);
* ``channel_filter``: ``P_k × P_c`` (allgather input, reduce-scatter partial outputs);
* ``im2col_matmul``: materialise the ``CRS × BHW`` im2col matrix, then a
  communication-optimal 3-D matmul (COSMA-style) of the ``K × CRS`` filter matrix by it
  on a ``p_m × p_n × p_k`` grid; see :func:`matmul_volumes`.

The grid families are grids of the same algorithm, so their figures come from
:mod:`parconv.planner.plan` and equal :func:`parconv.planner.partition.rank_volume` (for the training
passes, the runtime's adjoint schedule). Every strategy is priced for a ``pass_``
(``forward``, ``dgrad``, ``wgrad``, ``step``); ``im2col_matmul`` is a forward-only
baseline (None for the training passes). Strategies are compared with the plan on the
busiest rank's received + sent bytes of the pass (:func:`best_fixed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..spec import ConvSpec
from .plan import (
    _check_pass,
    _divisors,
    _interval_max,
    _split,
    best_grid,
    check_plannable,
    max_rank_memory_bytes,
)

#: Strategy name -> grid axes it may split (None: the im2col + matmul strategy).
FAMILIES: dict[str, tuple[str, ...] | None] = {
    "batch_only": ("b",),
    "spatial_only": ("h", "w"),
    "batch_spatial": ("b", "h", "w"),
    "channel_filter": ("k", "c"),
    "im2col_matmul": None,
}


@dataclass(frozen=True)
class StrategyResult:
    """The best grid of one strategy and its exact per-rank figures."""

    name: str
    grid: dict[str, int]
    max_rank_recv_bytes: int
    total_recv_bytes: int
    max_rank_memory_bytes: int
    details: dict[str, Any] = field(default_factory=dict)
    #: Exact maximum over ranks of received + sent bytes (the quantity the lower bound
    #: bounds), on the same grid.
    max_rank_traffic_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "grid": self.grid, "max_rank_recv_bytes": self.max_rank_recv_bytes,
                "max_rank_traffic_bytes": self.max_rank_traffic_bytes,
                "total_recv_bytes": self.total_recv_bytes,
                "max_rank_memory_bytes": self.max_rank_memory_bytes, "details": self.details}


def matmul_shape(spec: ConvSpec) -> tuple[int, int, int]:
    """``(m, n, k)`` of the im2col GEMM: ``K × CRS`` filter times ``CRS × BHW`` im2col."""
    return spec.K, spec.B * spec.H * spec.W, spec.C * spec.R * spec.S


def matmul_volumes(spec: ConvSpec, pm: int, pn: int, pk: int,
                   idx: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per-rank bytes of the 3-D matmul on a ``pm × pn × pk`` grid (arrays broadcast over
    ``(i, j, l)``; all ranks when ``idx`` is None).

    Rank ``(i, j, l)`` computes ``C[m_i, n_j] += A[m_i, k_l] · B[k_l, n_j]``. Initially
    each block of ``A`` (filter, ``p_F``) is spread evenly (balanced element counts) over
    the ``pn`` ranks sharing it, each block of ``B`` (the materialised im2col matrix,
    ``p_I``; ρ̄ times the input) over the ``pm`` ranks sharing it; its building is *not*
    charged, which favours this baseline. Operations: allgather of the ``A`` block over
    ``j``, allgather of the ``B`` block over ``i``, reduce-scatter of the accumulator
    partial ``C`` block over ``l`` (each rank ends with a balanced part). Memory: the
    gathered ``A`` and ``B`` blocks, the partial ``C`` block and the final part. Keys:
    received bytes per operation and ``total``; ``send`` (a rank's owned ``A`` and ``B``
    parts to the ``pn − 1`` / ``pm − 1`` others, the partial ``C`` outside its part);
    ``traffic`` = ``total + send``; ``memory``.
    """
    m, n, k = matmul_shape(spec)
    if idx is None:
        idx = (np.arange(pm), np.arange(pn), np.arange(pk))
    i, j, l_ = (np.asarray(a, dtype=np.int64).reshape(s)
               for a, s in zip(idx, [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]))
    p = spec.precision
    mi, nj, kl = _split(m, pm, i), _split(n, pn, j), _split(k, pk, l_)
    a_blk, b_blk, c_blk = mi * kl, kl * nj, mi * nj
    a_own, b_own, c_own = _split(a_blk, pn, j), _split(b_blk, pm, i), _split(c_blk, pk, l_)
    recv = {
        "a_allgather": p.p_filter // 8 * (a_blk - a_own),
        "b_allgather": p.p_input // 8 * (b_blk - b_own),
        "c_reduce_scatter": p.p_accum // 8 * (pk - 1) * c_own,
    }
    recv["total"] = recv["a_allgather"] + recv["b_allgather"] + recv["c_reduce_scatter"]
    recv["send"] = (p.p_filter // 8 * (pn - 1) * a_own + p.p_input // 8 * (pm - 1) * b_own
                    + p.p_accum // 8 * (c_blk - c_own))
    recv["traffic"] = recv["total"] + recv["send"]
    recv["memory"] = (p.p_filter * a_blk + p.p_input * b_blk + p.p_accum * c_blk
                      + p.p_output * c_own) // 8
    return recv


def matmul_total_recv_bytes(spec: ConvSpec, pm: int, pn: int, pk: int) -> int:
    """Sum over ranks of the matmul's received bytes (closed form)."""
    m, n, k = matmul_shape(spec)
    p = spec.precision
    return (p.p_filter // 8 * (pn - 1) * m * k + p.p_input // 8 * (pm - 1) * k * n
            + p.p_accum // 8 * (pk - 1) * m * n)


def _matmul_classes(spec: ConvSpec, pm: int, pn: int, pk: int) -> tuple[np.ndarray, ...]:
    """One index per class on each matmul axis (block size and ownership thresholds),
    enough for the exact maximum over ranks: within a product of classes every block
    size and owned part is constant, so received, sent and memory bytes are too."""
    m, n, k = matmul_shape(spec)
    ms = set((m // pm, m // pm + 1))
    ns = set((n // pn, n // pn + 1))
    ks = set((k // pk, k // pk + 1))
    i = _interval_max(pm, [m % pm] + [(a * b) % pm for a in ks for b in ns])
    j = _interval_max(pn, [n % pn] + [(a * b) % pn for a in ms for b in ks])
    l_ = _interval_max(pk, [k % pk] + [(a * b) % pk for a in ms for b in ns])
    return i, j, l_


def im2col_matmul(spec: ConvSpec, procs: int, memory_bytes: int | None = None) -> StrategyResult | None:
    """Best ``pm × pn × pk`` grid (pm ≤ K, pn ≤ BHW, pk ≤ CRS) for the im2col GEMM."""
    check_plannable(spec, procs)
    m, n, k = matmul_shape(spec)
    best = None
    for pm in _divisors(procs):
        if pm > m:
            break
        for pn in _divisors(procs // pm):
            pk = procs // pm // pn
            if pn > n or pk > k:
                continue
            v = matmul_volumes(spec, pm, pn, pk, _matmul_classes(spec, pm, pn, pk))
            mx, mem = int(v["total"].max()), int(v["memory"].max())
            if memory_bytes is not None and mem > memory_bytes:
                continue
            tot = matmul_total_recv_bytes(spec, pm, pn, pk)
            key = (mx, tot, (pm, pn, pk))
            if best is None or key < best[:3]:
                best = (*key, mem, int(v["traffic"].max()))
    if best is None:
        return None
    mx, tot, (pm, pn, pk), mem, traffic = best
    return StrategyResult("im2col_matmul", {"m": pm, "n": pn, "k": pk}, mx, tot, mem,
                          {"matmul_mnk": [m, n, k], "im2col_elems": n * k}, traffic)


def data_parallel_training(spec: ConvSpec, procs: int, memory_bytes: int | None = None,
                           pass_: str = "step", keep_window: bool = True
                           ) -> StrategyResult | None:
    """Data-parallel training on ``P_b = P`` ranks (None when ``P > B``, or for the
    forward pass, where it is ``batch_only`` with the filter replicated up front).

    Every rank holds the whole filter (replicated: no filter allgather) and its batch
    block; the filter gradient is all-reduced, priced exactly as the bandwidth-optimal
    reduce-scatter + allgather of the ``K·C·R·S`` accumulator-precision gradient over the
    ``P`` ranks, rank ``f`` owning the balanced row block ``kf`` of ``K`` in between:
    reduce-scatter receives ``(P−1)·kf`` rows and sends ``K − kf``; the allgather receives
    ``K − kf`` and sends ``(P−1)·kf`` (its adjoint). The other operations are those of the
    ``P_b = P`` grid (with no spatial, channel or filter split they move nothing), so the
    figures are the grid's with ``filter_allgather`` removed and a
    ``grad_filter_allgather`` equal to the reduce-scatter exchanged. Memory: the grid's
    peak for the pass plus the replicated filter and the all-reduced gradient on every
    rank (``p_F·|F| + p_acc·|F|``, a conservative model, not measured).
    """
    pass_ = _check_pass(spec, pass_)
    if pass_ == "forward" or procs > spec.B:
        return None
    check_plannable(spec, procs)
    from .partition import Grid
    from .plan import _all_indices, _pass_volumes

    g = Grid(b=procs)
    vol = _pass_volumes(spec, g, _all_indices(g), pass_, keep_window)
    vol.pop("filter_allgather", None)
    if "grad_filter_reduce_scatter" in vol:
        r, s = vol["grad_filter_reduce_scatter"]
        vol["grad_filter_allgather"] = (s, r)
    recv = sum(np.broadcast_to(r, g.dims).ravel() for r, _ in vol.values())
    send = sum(np.broadcast_to(s, g.dims).ravel() for _, s in vol.values())
    p = spec.precision
    mem = (max_rank_memory_bytes(spec, g, pass_, keep_window)
           + (p.p_filter + p.p_accum) * spec.filter_elems // 8)
    if memory_bytes is not None and mem > memory_bytes:
        return None
    return StrategyResult("data_parallel_training", g.as_dict(), int(recv.max()),
                          int(recv.sum()), int(mem),
                          {"allreduce": "reduce-scatter + allgather of dF (accumulator dtype)"},
                          int((recv + send).max()))


def fixed_strategy(name: str, spec: ConvSpec, procs: int, memory_bytes: int | None = None,
                   pass_: str = "forward", keep_window: bool = True) -> StrategyResult | None:
    """Best grid of one strategy of :data:`FAMILIES` for ``pass_``, or None when
    infeasible (or not defined for the pass)."""
    if name not in FAMILIES and name != "data_parallel_training":
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(FAMILIES)}, "
                         "data_parallel_training")
    pass_ = _check_pass(spec, pass_)
    if name == "data_parallel_training":
        return data_parallel_training(spec, procs, memory_bytes, pass_, keep_window)
    axes = FAMILIES[name]
    if axes is None:
        return im2col_matmul(spec, procs, memory_bytes) if pass_ == "forward" else None
    res = best_grid(spec, procs, memory_bytes, axes, pass_, keep_window)
    if res is None:
        return None
    return StrategyResult(name, res.grid.as_dict(), res.max_rank_recv_bytes, res.total_recv_bytes,
                          res.max_rank_memory_bytes,
                          max_rank_traffic_bytes=res.max_rank_traffic_bytes)


def all_strategies(spec: ConvSpec, procs: int, memory_bytes: int | None = None,
                   pass_: str = "forward",
                   keep_window: bool = True) -> dict[str, StrategyResult | None]:
    """Every fixed strategy's best grid for ``pass_`` (None where infeasible): the
    :data:`FAMILIES` and, for the training passes, ``data_parallel_training``."""
    names = list(FAMILIES)
    if _check_pass(spec, pass_) != "forward":
        names.insert(1, "data_parallel_training")
    return {name: fixed_strategy(name, spec, procs, memory_bytes, pass_, keep_window)
            for name in names}


def best_fixed(results: dict[str, StrategyResult | None]) -> StrategyResult | None:
    """The feasible strategy with the smallest busiest-rank received + sent bytes (the
    planner's objective; ties: received bytes)."""
    feas = [r for r in results.values() if r is not None]
    return min(feas, key=lambda r: (r.max_rank_traffic_bytes, r.max_rank_recv_bytes)) \
        if feas else None
