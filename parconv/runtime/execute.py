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
the blocks of each collective are contiguous.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .. import dtypes
from ..reference import checked_cast
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


def _take(a: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    """``a`` restricted to positions ``idx`` along ``axis`` (a view when contiguous)."""
    if idx.size and idx[-1] - idx[0] + 1 == idx.size:
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(int(idx[0]), int(idx[-1]) + 1)
        return a[tuple(sl)]
    return np.take(a, idx, axis=axis)


def _sub(a: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return _take(_take(a, rows, 2), cols, 3)


def default_kernel():
    """The numba window kernel :func:`parconv.kernels.conv2d_window`."""
    from ..kernels import conv2d_window

    return conv2d_window


def execute(gc: GridComm, sched: Schedule, x_local: np.ndarray, w_local: np.ndarray,
            kernel: Callable | None = None, local_compute: Callable | None = None) -> tuple[np.ndarray, RankStats]:
    """Run this rank's part of the convolution (collective over ``gc``).

    Parameters
    ----------
    gc : the grid communicators.
    sched : this rank's schedule (:func:`parconv.runtime.schedule.build_schedule`).
    x_local, w_local : the owned input and filter blocks (validated by the caller).
    kernel : ``conv2d_window``-compatible local kernel (default: the numba kernel).
    local_compute : optional replacement of step 4, ``f(window, filter, sched) ->
        (partial, extra_report)`` (used by the Gemmini offload model).

    Returns
    -------
    (output block in the output dtype, statistics)
    """
    spec, rank, z = sched.spec, sched.rank, sched.sizes
    prec = spec.precision
    in_dt, acc_dt = dtypes.numpy_dtype(prec.input), dtypes.numpy_dtype(prec.accum)
    stats = RankStats()
    ops = sched.ops
    b, c_blk, k_blk = z["b"], z["c_blk"], z["k_blk"]
    out_hw = (z["out_h"], z["out_w"])

    # 1. input allgather along the k-fiber
    with _phase(stats, rank, "input_allgather"):
        r_lo, c_lo = sched.own_origin
        used = _sub(x_local, sched.used_rows - r_lo, sched.used_cols - c_lo)
        send = np.ascontiguousarray(used.transpose(1, 0, 2, 3))
        gathered = np.empty((c_blk, b, len(sched.used_rows), len(sched.used_cols)), in_dt)
        allgather(gc.fibers["input_allgather"], ops["input_allgather"], send, gathered,
                  stats.counters)

    # 2. halo exchange into the local window
    with _phase(stats, rank, "input_halo"):
        (wr0, wr1), (wc0, wc1) = sched.window
        window = np.zeros((c_blk, b, wr1 - wr0, wc1 - wc0), in_dt)
        if sched.self_rows.size and sched.self_cols.size:
            window[:, :, (sched.self_rows - wr0)[:, None], (sched.self_cols - wc0)[None, :]] = \
                _sub(gathered, np.searchsorted(sched.used_rows, sched.self_rows),
                     np.searchsorted(sched.used_cols, sched.self_cols))
        segments, shapes = {}, {}
        for j, hp in sched.halo.items():
            if hp.send_rows.size and hp.send_cols.size:
                seg = _sub(gathered, np.searchsorted(sched.used_rows, hp.send_rows),
                           np.searchsorted(sched.used_cols, hp.send_cols))
                segments[j] = np.ascontiguousarray(seg)
            if hp.recv_rows.size and hp.recv_cols.size:
                shapes[j] = (c_blk, b, hp.recv_rows.size, hp.recv_cols.size)
        got = alltoallv(gc.fibers["input_halo"], ops["input_halo"], segments, shapes, in_dt,
                        stats.counters)
        for j, seg in got.items():
            hp = sched.halo[j]
            window[:, :, (hp.recv_rows - wr0)[:, None], (hp.recv_cols - wc0)[None, :]] = seg
        del gathered

    # 3. filter allgather along the b·h·w fiber
    with _phase(stats, rank, "filter_allgather"):
        filt = np.empty((k_blk, c_blk, spec.R, spec.S), dtypes.numpy_dtype(prec.filter))
        allgather(gc.fibers["filter_allgather"], ops["filter_allgather"],
                  np.ascontiguousarray(w_local), filt, stats.counters)

    # 4. local convolution in accumulator precision
    with _phase(stats, rank, "compute"):
        x_win = np.ascontiguousarray(window.transpose(1, 0, 2, 3))
        del window
        if local_compute is not None:
            partial, extra = local_compute(x_win, filt, sched)
            stats.extra.update(extra)
        else:
            partial = np.zeros((b, k_blk, *out_hw), acc_dt)
            (kernel or default_kernel())(x_win, filt, partial, spec.stride, spec.dilation,
                                         sched.offset)

    # 5. reduce-scatter along the c-fiber, then the cast to the output dtype
    with _phase(stats, rank, "output_reduce_scatter"):
        send = np.ascontiguousarray(partial.transpose(1, 0, 2, 3))
        del partial
        recv = np.empty((z["k_o"], b, *out_hw), acc_dt)
        reduce_scatter(gc.fibers["output_reduce_scatter"], ops["output_reduce_scatter"], send,
                       recv, stats.counters)
    with _phase(stats, rank, "cast"):
        out = recv.transpose(1, 0, 2, 3)
        if prec.is_integer:  # a narrower integer output raises instead of wrapping
            out = np.ascontiguousarray(checked_cast(out, prec.output, "output type"))
        else:
            out = out.astype(dtypes.numpy_dtype(prec.output), order="C")
        if corrupt_requested(rank) and out.size:
            out.reshape(-1)[0] += 1
    return out, stats
