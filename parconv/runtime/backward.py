"""Execute one rank's backward passes: the adjoints of the forward collectives around the
local dgrad / wgrad kernels (THEORY.md §7).

Every backward operation is the adjoint of a forward one, on the same communicator with
the same blocks (:func:`parconv.runtime.schedule.derive_pass_ops`):

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
from .comm import GridComm
from .exchange import allgather, alltoallv, reduce_scatter
from .execute import RankStats, _phase, _sub
from .schedule import OpSchedule, Schedule, forward_source


def _fiber(gc: GridComm, op: str):
    return gc.fibers[forward_source(op)]


def gather_grad_output(gc: GridComm, sched: Schedule, ops: dict[str, OpSchedule],
                       grad_y_local: np.ndarray, stats: RankStats) -> np.ndarray:
    """Step 1: the ``(b, k_blk, out_h, out_w)`` output gradient of this rank's k-block."""
    z = sched.sizes
    out_dt = dtypes.numpy_dtype(sched.spec.precision.output)
    with _phase(stats, sched.rank, "grad_output_allgather"):
        send = np.ascontiguousarray(grad_y_local.transpose(1, 0, 2, 3))
        gathered = np.empty((z["k_blk"], z["b"], z["out_h"], z["out_w"]), out_dt)
        op = "grad_output_allgather"
        allgather(_fiber(gc, op), ops[op], send, gathered, stats.counters)
        return np.ascontiguousarray(gathered.transpose(1, 0, 2, 3))


def grad_input(gc: GridComm, sched: Schedule, ops: dict[str, OpSchedule], grad_y: np.ndarray,
               filt: np.ndarray, stats: RankStats, kernel=None) -> np.ndarray:
    """Steps 2–4: this rank's owned block of the input gradient (input dtype)."""
    from ..kernels import dgrad_window

    spec, z = sched.spec, sched.sizes
    prec = spec.precision
    acc_dt = dtypes.numpy_dtype(prec.accum)
    b, c_blk = z["b"], z["c_blk"]
    (wr0, wr1), (wc0, wc1) = sched.window
    with _phase(stats, sched.rank, "compute_dgrad"):
        win = np.zeros((b, c_blk, wr1 - wr0, wc1 - wc0), acc_dt)
        (kernel or dgrad_window)(grad_y, filt, win, spec.stride, spec.dilation, sched.offset)
        win = win.transpose(1, 0, 2, 3)  # (c, b, rows, cols) view, like the forward window

    with _phase(stats, sched.rank, "grad_input_halo"):
        segments, shapes = {}, {}
        for j, hp in sched.halo.items():  # send back what was received, receive what was sent
            if hp.recv_rows.size and hp.recv_cols.size:
                segments[j] = np.ascontiguousarray(_sub(win, hp.recv_rows - wr0,
                                                        hp.recv_cols - wc0))
            if hp.send_rows.size and hp.send_cols.size:
                shapes[j] = (c_blk, b, hp.send_rows.size, hp.send_cols.size)
        op = "grad_input_halo"
        got = alltoallv(_fiber(gc, op), ops[op], segments, shapes, acc_dt, stats.counters)
        plane = np.zeros((c_blk, b, sched.used_rows.size, sched.used_cols.size), acc_dt)
        ur, uc = sched.used_rows, sched.used_cols
        if sched.self_rows.size and sched.self_cols.size:
            plane[:, :, np.searchsorted(ur, sched.self_rows)[:, None],
                  np.searchsorted(uc, sched.self_cols)[None, :]] += \
                _sub(win, sched.self_rows - wr0, sched.self_cols - wc0)
        del win, segments
        for j, seg in got.items():
            hp = sched.halo[j]
            plane[:, :, np.searchsorted(ur, hp.send_rows)[:, None],
                  np.searchsorted(uc, hp.send_cols)[None, :]] += seg
        del got

    with _phase(stats, sched.rank, "grad_input_reduce_scatter"):
        recv = np.empty((z["c_own"], b, ur.size, uc.size), acc_dt)
        op = "grad_input_reduce_scatter"
        reduce_scatter(_fiber(gc, op), ops[op], plane, recv, stats.counters)
        del plane
    with _phase(stats, sched.rank, "cast_grad_input"):
        return _place_owned(sched, recv)


def _place_owned(sched: Schedule, recv: np.ndarray) -> np.ndarray:
    """The owned input-gradient block: ``recv`` at the used rows/cols, zero elsewhere."""
    from ..partition import layout

    prec = sched.spec.precision
    me = layout(sched.spec, sched.grid, sched.rank)
    r_lo, c_lo = sched.own_origin
    out = np.zeros(me.input_owned_shape, dtypes.numpy_dtype(prec.input))
    if recv.size:
        out[:, :, (sched.used_rows - r_lo)[:, None], (sched.used_cols - c_lo)[None, :]] = \
            recv.transpose(1, 0, 2, 3).astype(out.dtype)
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
    with _phase(stats, sched.rank, "grad_filter_reduce_scatter"):
        recv = np.empty((z["k_f"], z["c_blk"], spec.R, spec.S), acc_dt)
        op = "grad_filter_reduce_scatter"
        reduce_scatter(_fiber(gc, op), ops[op], gw, recv, stats.counters)
    return recv
