"""Execute one rank's backward passes: the adjoints of the forward collectives around the
local dgrad / wgrad kernels (THEORY.md §7).

Every backward operation is the adjoint of a forward one, on the same communicator with
the same blocks (:func:`parconv.planner.schedule.derive_pass_ops`):

1. ``grad_output_allgather``: the owned ``dOut`` block is allgathered along the c-fiber
   (adjoint of the output reduce-scatter), in the output dtype;
2. local dgrad into an accumulator-precision gradient of the input window;
3. ``grad_input_halo``: the parts of that window other ranks own go back to them and are
   added there (adjoint of the halo exchange; diagonal and multi-neighbour halos alike);
4. ``grad_input_reduce_scatter``: the partial input gradients of the k-fiber are summed
   into each rank's owned channels (adjoint of the input allgather), then cast to the
   input dtype (rows and columns no output reads get zero gradient);
5. local wgrad into an accumulator-precision filter gradient, from the forward's input
   window;
6. ``grad_filter_reduce_scatter``: summed along the b·h·w fiber into each rank's owned
   filter rows (adjoint of the filter allgather), delivered in the accumulator dtype.

Buffers are channel-major where a collective needs contiguous blocks, as in the forward.
"""

from __future__ import annotations

import numpy as np

from .. import dtypes
from ..planner.schedule import OpSchedule, Schedule, forward_source
from .comm import GridComm
from .exchange import allgather, alltoallv, reduce_scatter
from .execute import _ALL, RankStats, _copy, _index, _phase, alone


def _fiber(gc: GridComm, op: str):
    return gc.fibers[forward_source(op)]


def _add(dst: np.ndarray, rows: np.ndarray, cols: np.ndarray, src: np.ndarray) -> None:
    """``dst[:, :, rows, cols] += src`` (index sets as views where they are progressions)."""
    r, c = _index(rows), _index(cols)
    if isinstance(r, np.ndarray) and isinstance(c, np.ndarray):
        r = r[:, None]
    dst[:, :, r, c] += src


def gather_grad_output(gc: GridComm, sched: Schedule, ops: dict[str, OpSchedule],
                       grad_y_local: np.ndarray, stats: RankStats) -> np.ndarray:
    """Step 1: the ``(b, k_blk, out_h, out_w)`` output gradient of this rank's k-block."""
    z = sched.sizes
    out_dt = dtypes.numpy_dtype(sched.spec.precision.output)
    op = "grad_output_allgather"
    with _phase(stats, sched.rank, op):
        if alone(ops, op, stats):
            return np.ascontiguousarray(grad_y_local)
        send = np.ascontiguousarray(grad_y_local.transpose(1, 0, 2, 3))
        gathered = np.empty((z["k_blk"], z["b"], z["out_h"], z["out_w"]), out_dt)
        allgather(_fiber(gc, op), ops[op], send, gathered, stats.counters)
        del send
        return np.ascontiguousarray(gathered.transpose(1, 0, 2, 3))


def grad_input(gc: GridComm, sched: Schedule, ops: dict[str, OpSchedule], grad_y: np.ndarray,
               filt: np.ndarray, stats: RankStats, kernel=None) -> np.ndarray:
    """Steps 2–4: this rank's owned block of the input gradient (input dtype)."""
    from ..kernels import dgrad_window
    from ..planner.partition import layout

    spec, z = sched.spec, sched.sizes
    prec = spec.precision
    acc_dt = dtypes.numpy_dtype(prec.accum)
    b, c_blk = z["b"], z["c_blk"]
    (wr0, wr1), (wc0, wc1) = sched.window
    ur, uc = sched.used_rows, sched.used_cols
    with _phase(stats, sched.rank, "compute_dgrad"):
        win = np.zeros((b, c_blk, wr1 - wr0, wc1 - wc0), acc_dt)
        (kernel or dgrad_window)(grad_y, filt, win, spec.stride, spec.dilation, sched.offset)

    with _phase(stats, sched.rank, "grad_input_halo"):
        # the adjoint of the halo exchange: send back what was received, add what was sent
        segments, shapes = {}, {}
        for j, hp in sched.halo.items():
            if hp.recv_rows.size and hp.recv_cols.size:
                seg = np.empty((c_blk, b, hp.recv_rows.size, hp.recv_cols.size), acc_dt)
                _copy(seg, _ALL, _ALL, win, hp.recv_rows - wr0, hp.recv_cols - wc0, True)
                segments[j] = seg
            if hp.send_rows.size and hp.send_cols.size:
                shapes[j] = (c_blk, b, hp.send_rows.size, hp.send_cols.size)
        plane = np.zeros((c_blk, b, ur.size, uc.size), acc_dt)
        if sched.self_rows.size and sched.self_cols.size:
            _copy(plane, np.searchsorted(ur, sched.self_rows), np.searchsorted(uc, sched.self_cols),
                  win, sched.self_rows - wr0, sched.self_cols - wc0, True)
        del win
        op = "grad_input_halo"
        got = alltoallv(_fiber(gc, op), ops[op], segments, shapes, acc_dt, stats.counters)
        del segments
        for j in list(got):
            hp = sched.halo[j]
            _add(plane, np.searchsorted(ur, hp.send_rows), np.searchsorted(uc, hp.send_cols),
                 got.pop(j))
        del got

    op = "grad_input_reduce_scatter"
    with _phase(stats, sched.rank, op):
        if alone(ops, op, stats):
            recv = plane
        else:
            recv = np.empty((z["c_own"], b, ur.size, uc.size), acc_dt)
            reduce_scatter(_fiber(gc, op), ops[op], plane, recv, stats.counters)
        del plane
    with _phase(stats, sched.rank, "cast_grad_input"):
        # rows and columns no output reads get zero gradient
        out = np.zeros(layout(spec, sched.grid, sched.rank).input_owned_shape,
                       dtypes.numpy_dtype(prec.input))
        r_lo, c_lo = sched.own_origin
        if recv.size:
            _copy(out, ur - r_lo, uc - c_lo, recv, _ALL, _ALL, True)
        return out


def grad_filter(gc: GridComm, sched: Schedule, ops: dict[str, OpSchedule], x_win: np.ndarray,
                grad_y: np.ndarray, stats: RankStats, kernel=None) -> np.ndarray:
    """Steps 5–6: this rank's owned rows of the filter gradient (accumulator dtype)."""
    from ..kernels import wgrad_window

    spec, z = sched.spec, sched.sizes
    acc_dt = dtypes.numpy_dtype(spec.precision.accum)
    with _phase(stats, sched.rank, "compute_wgrad"):
        gw = np.zeros((z["k_blk"], z["c_blk"], spec.R, spec.S), acc_dt)
        (kernel or wgrad_window)(x_win, grad_y, gw, spec.stride, spec.dilation, sched.offset)
    op = "grad_filter_reduce_scatter"
    with _phase(stats, sched.rank, op):
        if alone(ops, op, stats):
            return gw
        recv = np.empty((z["k_f"], z["c_blk"], spec.R, spec.S), acc_dt)
        reduce_scatter(_fiber(gc, op), ops[op], gw, recv, stats.counters)
    return recv
