"""Execute one rank's schedule: the four collectives around the local convolution.

Order (THEORY.md §6, data layout of :mod:`parconv.partition`):

1. input allgather along the k-fiber (used rows/cols of the owned input, channel
   sub-blocks gathered into the c-block);
2. halo exchange in the (h, w) plane, directly from each element's owner (diagonal
   neighbours and multi-neighbour halos included), into the local input window;
3. filter allgather along the b·h·w fiber;
4. local convolution into an accumulator-precision partial output (numba kernel);
5. reduce-scatter of the partials along the c-fiber, then the cast to the output dtype.

Communication buffers are channel-major ``(c, b, rows, cols)`` / ``(k, b, h, w)`` so that
the blocks of each collective are contiguous. The local window is assembled directly in
the kernel's ``(b, c, rows, cols)`` layout, and the kernel writes its partial output
through a transposed view of the ``(k, b, h, w)`` reduce-scatter buffer, so no layout copy
of either exists. Every buffer is freed as soon as the next phase no longer needs it; the
live set of each phase is what :func:`parconv.partition.rank_memory_bytes` adds up
(``docs/runtime.md``, "Memory").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .. import dtypes
from ..reference import AccumulatorOverflow
from .comm import GridComm
from .errors import corrupt_requested, fault_point
from .exchange import Counters, allgather, alltoallv, reduce_scatter
from .schedule import Schedule


@dataclass
class RankStats:
    """What one rank measured: bytes per operation and seconds per phase."""

    counters: Counters = field(default_factory=Counters)
    seconds: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


@contextmanager
def _phase(stats: RankStats, rank: int, name: str) -> Iterator[None]:
    """Time one phase (seconds add up per name); the fault-injection point of the phase."""
    fault_point(name, rank)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        stats.seconds[name] = stats.seconds.get(name, 0.0) + time.perf_counter() - t0


def _index(idx: np.ndarray) -> slice | np.ndarray:
    """``idx`` as a slice when it is an arithmetic progression (indexing makes a view),
    else the index array itself."""
    n = idx.size
    if n == 0:
        return slice(0, 0)
    first = int(idx[0])
    if n == 1:
        return slice(first, first + 1)
    step = int(idx[1]) - first
    if step > 0 and bool(np.all(np.diff(idx) == step)):
        return slice(first, int(idx[-1]) + 1, step)
    return np.asarray(idx)


_ALL = np.empty(0, np.int64)   # marker: the whole axis


def _copy(dst: np.ndarray, d_rows, d_cols, src: np.ndarray, s_rows, s_cols,
          swap: bool) -> None:
    """``dst[:, :, d_rows, d_cols] = src[:, :, s_rows, s_cols]`` with the first two axes of
    the source swapped when ``swap`` (``(b, c)`` <-> ``(c, b)``), without a temporary of
    the copied size: arithmetic-progression index sets are slices (views on both sides);
    otherwise the copy goes one row at a time (a temporary of at most one row).
    ``_ALL`` selects a whole axis."""
    dr, dc, sr, sc = (slice(None) if i is _ALL else _index(i)
                      for i in (d_rows, d_cols, s_rows, s_cols))
    if all(isinstance(i, slice) for i in (dr, dc, sr, sc)):
        piece = src[:, :, sr, sc]
        dst[:, :, dr, dc] = piece.swapaxes(0, 1) if swap else piece
        return
    d_list = np.arange(dst.shape[2])[dr] if isinstance(dr, slice) else dr
    s_list = np.arange(src.shape[2])[sr] if isinstance(sr, slice) else sr
    for di, si in zip(d_list.tolist(), s_list.tolist()):
        piece = src[:, :, si, sc]
        dst[:, :, di, dc] = piece.swapaxes(0, 1) if swap else piece


def default_kernel():
    """The numba window kernel :func:`parconv.kernels.conv2d_window`."""
    from ..kernels import conv2d_window

    return conv2d_window


def gather_input_window(gc: GridComm, sched: Schedule, x_local: np.ndarray,
                        stats: RankStats, ops: dict | None = None,
                        names: tuple[str, str] = ("input_allgather", "input_halo")) -> np.ndarray:
    """Steps 1-2: the ``(b, c_blk, rows, cols)`` local input window (input dtype).

    ``ops`` / ``names``: the operations' schedules and the names the bytes are counted
    under (default: the forward's; a backward pass that gathers the window again uses
    ``recompute_*``).
    """
    spec, rank, z = sched.spec, sched.rank, sched.sizes
    in_dt = dtypes.numpy_dtype(spec.precision.input)
    ops = sched.ops if ops is None else ops
    ag, halo = names
    b, c_blk = z["b"], z["c_blk"]
    # 1. input allgather along the k-fiber: own used plane, channel-major (c, b, rows, cols)
    with _phase(stats, rank, ag):
        r_lo, c_lo = sched.own_origin
        nr, nc = len(sched.used_rows), len(sched.used_cols)
        send = np.empty((z["c_own"], b, nr, nc), in_dt)
        _copy(send, _ALL, _ALL, x_local, sched.used_rows - r_lo, sched.used_cols - c_lo, True)
        if len(ops[ag].members) == 1:   # nothing to gather: no copy
            gathered = send
            stats.counters.add(ag, 0, 0)
        else:
            gathered = np.empty((c_blk, b, nr, nc), in_dt)
            allgather(gc.fibers["input_allgather"], ops[ag], send, gathered, stats.counters)
        del send

    # 2. halo exchange; the window is built directly in the kernel's (b, c, rows, cols)
    with _phase(stats, rank, halo):
        (wr0, wr1), (wc0, wc1) = sched.window
        window = np.zeros((b, c_blk, wr1 - wr0, wc1 - wc0), in_dt)
        if sched.self_rows.size and sched.self_cols.size:
            _copy(window, sched.self_rows - wr0, sched.self_cols - wc0, gathered,
                  np.searchsorted(sched.used_rows, sched.self_rows),
                  np.searchsorted(sched.used_cols, sched.self_cols), True)
        segments, shapes = {}, {}
        for j, hp in sched.halo.items():
            if hp.send_rows.size and hp.send_cols.size:
                seg = np.empty((c_blk, b, hp.send_rows.size, hp.send_cols.size), in_dt)
                _copy(seg, _ALL, _ALL, gathered, np.searchsorted(sched.used_rows, hp.send_rows),
                      np.searchsorted(sched.used_cols, hp.send_cols), False)
                segments[j] = seg
            if hp.recv_rows.size and hp.recv_cols.size:
                shapes[j] = (c_blk, b, hp.recv_rows.size, hp.recv_cols.size)
        del gathered
        got = alltoallv(gc.fibers["input_halo"], ops[halo], segments, shapes, in_dt,
                        stats.counters)
        del segments
        for j in list(got):
            hp = sched.halo[j]
            _copy(window, hp.recv_rows - wr0, hp.recv_cols - wc0, got.pop(j), _ALL, _ALL, True)
        del got
    return window


def gather_filter(gc: GridComm, sched: Schedule, w_local: np.ndarray,
                  stats: RankStats) -> np.ndarray:
    """Step 3: the ``(k_blk, c_blk, R, S)`` filter block, allgathered along the b·h·w
    fiber (the owned block itself when the fiber has one member)."""
    spec, z, ops = sched.spec, sched.sizes, sched.ops
    with _phase(stats, sched.rank, "filter_allgather"):
        if len(ops["filter_allgather"].members) == 1:   # the owned block is the whole
            stats.counters.add("filter_allgather", 0, 0)
            return np.ascontiguousarray(w_local)
        filt = np.empty((z["k_blk"], z["c_blk"], spec.R, spec.S),
                        dtypes.numpy_dtype(spec.precision.filter))
        allgather(gc.fibers["filter_allgather"], ops["filter_allgather"],
                  np.ascontiguousarray(w_local), filt, stats.counters)
    return filt


def execute(gc: GridComm, sched: Schedule, x_local: np.ndarray, w_local: np.ndarray,
            kernel: Callable | None = None, local_compute: Callable | None = None,
            keep: dict | None = None) -> tuple[np.ndarray, RankStats]:
    """Run this rank's part of the convolution (collective over ``gc``).

    Parameters
    ----------
    gc : the grid communicators.
    sched : this rank's schedule (:func:`parconv.runtime.schedule.build_schedule`).
    x_local, w_local : the owned input and filter blocks (validated by the caller).
    kernel : ``conv2d_window``-compatible local kernel (default: the numba kernel).
    local_compute : optional replacement of step 4, ``f(window, filter, sched) ->
        (partial, extra_report)`` (used by the Gemmini offload model).
    keep : when given, receives the local input window ``"window"`` ``(b, c_blk, rows,
        cols)`` and the gathered filter ``"filter"`` for the backward passes.

    Returns
    -------
    (output block in the output dtype, statistics)
    """
    spec, rank, z = sched.spec, sched.rank, sched.sizes
    prec = spec.precision
    acc_dt = dtypes.numpy_dtype(prec.accum)
    stats = RankStats()
    ops = sched.ops
    b, k_blk = z["b"], z["k_blk"]
    out_hw = (z["out_h"], z["out_w"])

    # Every buffer below is in partition.rank_memory_bytes' live sets (same names); each is
    # freed as soon as the next phase no longer needs it.
    window = gather_input_window(gc, sched, x_local, stats)
    filt = gather_filter(gc, sched, w_local, stats)

    # 4. local convolution in accumulator precision, straight into the k-major (k, b, h, w)
    #    layout whose k-blocks the reduce-scatter sends (no send copy)
    with _phase(stats, rank, "compute"):
        partial = np.zeros((k_blk, b, *out_hw), acc_dt)
        if local_compute is not None:
            res, extra = local_compute(window, filt, sched)
            stats.extra.update(extra)
            partial[...] = res.transpose(1, 0, 2, 3)
            del res
        else:
            (kernel or default_kernel())(window, filt, partial.transpose(1, 0, 2, 3),
                                         spec.stride, spec.dilation, sched.offset)
        if keep is not None:  # the backward passes reuse the window and the filter
            keep.update(window=window, filter=filt)
        del window, filt

    # 5. reduce-scatter along the c-fiber, then the cast to the output dtype
    with _phase(stats, rank, "output_reduce_scatter"):
        if len(ops["output_reduce_scatter"].members) == 1:   # the partial is the result
            recv = partial        # (MPI would copy it through a temporary of its size)
            stats.counters.add("output_reduce_scatter", 0, 0)
        else:
            recv = np.empty((z["k_o"], b, *out_hw), acc_dt)
            reduce_scatter(gc.fibers["output_reduce_scatter"], ops["output_reduce_scatter"],
                           partial, recv, stats.counters)
        del partial
    with _phase(stats, rank, "cast"):
        src = recv.transpose(1, 0, 2, 3)
        if prec.is_integer and recv.size:  # a narrower integer output raises, never wraps
            lo, hi = dtypes.value_range(prec.output)
            vmin, vmax = recv.min(), recv.max()
            if vmin < lo or vmax > hi:
                raise AccumulatorOverflow(
                    f"integer convolution result range [{vmin}, {vmax}] does not fit the "
                    f"{prec.output} output type [{int(lo)}, {int(hi)}]")
        out = np.empty(src.shape, dtypes.numpy_dtype(prec.output))
        np.copyto(out, src, casting="unsafe")
        del src, recv
        if corrupt_requested(rank) and out.size:
            out.reshape(-1)[0] += 1
    return out, stats
