"""Execute one rank's schedule: the four collectives around the local convolution.

Operations (THEORY.md §6, data layout of :mod:`parconv.planner.partition`):

1. input allgather along the k-fiber (used rows/cols of the owned input, channel
   sub-blocks gathered into the c-block);
2. halo exchange in the (h, w) plane, directly from each element's owner (diagonal
   neighbours and multi-neighbour halos included), into the local input window;
3. filter allgather along the b·h·w fiber;
4. local convolution into an accumulator-precision partial output (numba kernel);
5. reduce-scatter of the partials along the c-fiber, then the cast to the output dtype.

Every collective is non-blocking (:mod:`.exchange`). In the **overlapped** order (the
default) the filter allgather starts first; the halo exchange is in flight while the
*interior* of the local output (output rows/cols that read only rows/cols this rank
owns) is computed; the output is computed in *tiles* (row bands of the interior, then
the boundary strips once the halo arrived) and each finished tile's reduce-scatter
starts at once, while later tiles are computed; between tiles every pending collective
is tested (MPICH progresses them only inside MPI calls). The **sequential** order
(``overlap=False`` or ``PARCONV_OVERLAP=0``) runs 1 → 2 → 3 → 4 → 5, one whole
collective and one kernel call each. Both move exactly the schedule's bytes: the tiles'
reduce-scatters split each member's block into pieces that together are the block
(measured == planned either way).

Communication buffers are channel-major ``(c, b, rows, cols)`` / ``(k, b, h, w)`` so that
the blocks of each collective are contiguous. The local window is assembled directly in
the kernel's ``(b, c, rows, cols)`` layout, and the kernel writes each tile's partial
output through a transposed view of the tile's ``(k, b, h, w)`` reduce-scatter buffer,
so no layout copy of either exists. Every buffer is freed as soon as the next phase no
longer needs it; the live set of each phase is what
:func:`parconv.planner.partition.rank_memory_bytes` adds up (``docs/runtime.md``, "Memory").

Everything that depends only on the schedule (index sets, halo counts, tiles and their
reduce-scatter counts) is an :class:`ExecPlan`, built once per schedule
(:func:`exec_plan`; :class:`~.layer.DistributedConv2d` keeps it between calls).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .. import dtypes
from ..planner.partition import layout
from ..planner.schedule import Schedule
from ..reference import AccumulatorOverflow
from .comm import GridComm
from .errors import corrupt_requested, fault_point
from .exchange import (
    Clock,
    Counters,
    Pending,
    start_allgather,
    start_alltoallv,
    start_reduce_scatter,
)

#: Phase names of :attr:`RankStats.seconds` (in the sequential order).
PHASES = ("input_allgather", "input_halo", "filter_allgather", "compute",
          "output_reduce_scatter", "cast")
#: Environment switch of the default order: ``0`` runs the sequential order.
OVERLAP_ENV = "PARCONV_OVERLAP"
#: Output columns (``b × rows × cols``) a tile aims at when the output is cut into row
#: bands (``$PARCONV_TILE_COLUMNS`` overrides it), and the most bands per region.
TILE_COLUMNS = 512
TILE_COLUMNS_ENV = "PARCONV_TILE_COLUMNS"
MAX_BANDS = 4


def overlap_default(env=None) -> bool:
    """The default order: overlapped unless ``PARCONV_OVERLAP`` is ``0``/``off``/``no``."""
    env = os.environ if env is None else env
    return str(env.get(OVERLAP_ENV, "1")).strip().lower() not in ("0", "off", "no", "false")


@dataclass
class RankStats:
    """What one rank measured: bytes per operation, seconds per phase and per kind.

    ``seconds``: per phase name (each operation's packing, MPI and waiting time;
    ``compute``: the local kernel; ``cast``). ``time``: per kind of
    :data:`parconv.runtime.exchange.TIME_KINDS` — ``compute`` (local kernel),
    ``communication`` (inside the MPI calls that start or test a collective),
    ``waiting`` (blocked waiting for a collective to complete), ``other`` (packing,
    copies, the cast) — plus ``total`` (the whole call).
    """

    counters: Counters = field(default_factory=Counters)
    seconds: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    time: dict[str, float] = field(default_factory=dict)


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
    dr, dc, sr, sc = (slice(None) if i is _ALL else (i if isinstance(i, slice) else _index(i))
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


def alone(ops: dict, op: str, stats: RankStats) -> bool:
    """True (and (0, 0) counted) when ``op``'s communicator has one member: nothing moves
    and no buffer is copied (forward and backward passes alike)."""
    if len(ops[op].members) == 1:
        stats.counters.add(op, 0, 0)
        return True
    return False


def default_kernel():
    """The numba window kernel :func:`parconv.kernels.conv2d_window`."""
    from ..kernels import conv2d_window

    return conv2d_window


# ------------------------------------------------------------------ the per-schedule plan

@dataclass(frozen=True)
class Tile:
    """A rectangle ``[r0, r1) × [c0, c1)`` of the local output block; ``interior``: it
    reads only input this rank owns (no halo); ``part``/``res``: element offsets of its
    partial (``k_blk × b × rows × cols``) and result (``k_o × …``) buffers; ``counts``:
    its reduce-scatter counts (each member's k-sub-block of the tile)."""

    r0: int
    r1: int
    c0: int
    c1: int
    interior: bool
    part: int
    res: int
    counts: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return self.r1 - self.r0, self.c1 - self.c0


@dataclass(frozen=True)
class ExecPlan:
    """What a call does that depends on the schedule only (built once:
    :func:`exec_plan`).

    Attributes
    ----------
    gathered : True when the input allgather moves data (``P_k > 1``); otherwise the halo
        and the window are read straight from the owned block.
    src_rows, src_cols : map a global input row/col index to its index in the source
        (the gathered used plane, or the owned block).
    self_copy : (window rows, window cols, source rows, source cols) of the own part.
    halo_send : ``[(member, rows, cols, shape)]`` segments in member order (source
        indices); ``send_counts`` / ``recv_counts``: bytes per member.
    halo_recv : ``[(member, byte offset, shape, window rows, window cols)]``.
    tiles : compute order (interior tiles first); ``tiles_overlap`` vs ``[whole]``.
    """

    gathered: bool
    self_copy: tuple | None
    halo_send: list
    send_counts: list[int]
    recv_counts: list[int]
    halo_recv: list
    tiles: list[Tile]
    whole: list[Tile]


def _interior_mask(axis, out_lo: int, n: int, own: tuple[int, int]) -> np.ndarray:
    """Per local output index: every input index it reads (inside the image) is owned."""
    g = out_lo + np.arange(n)
    idx = axis.stride * g[:, None] - axis.padding + axis.dilation * np.arange(axis.kernel)
    inside = (idx >= 0) & (idx < axis.in_size)
    owned = (idx >= own[0]) & (idx < own[1])
    return np.all(~inside | owned, axis=1)


def _runs(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """Maximal runs ``(lo, hi, value)`` of equal values."""
    out, lo = [], 0
    for i in range(1, mask.size + 1):
        if i == mask.size or mask[i] != mask[lo]:
            out.append((lo, i, bool(mask[lo])))
            lo = i
    return out


def tile_columns(env=None) -> int:
    """Output columns per tile: ``$PARCONV_TILE_COLUMNS`` (a positive integer) or
    :data:`TILE_COLUMNS`."""
    env = os.environ if env is None else env
    try:
        return max(1, int(env.get(TILE_COLUMNS_ENV, TILE_COLUMNS)))
    except ValueError:
        return TILE_COLUMNS


def _bands(lo: int, hi: int, cols: int, b: int, split: bool) -> list[tuple[int, int]]:
    """Row bands of ``[lo, hi)``: about :func:`tile_columns` output columns each (at most
    :data:`MAX_BANDS`), one band when ``split`` is False."""
    rows = hi - lo
    n = 1 if not split else max(1, min(MAX_BANDS, rows, (b * rows * cols) // tile_columns()))
    step = math.ceil(rows / n)
    return [(r, min(r + step, hi)) for r in range(lo, hi, step)]


def _tiles(rects: list[tuple[int, int, int, int, bool]], sched: Schedule) -> list[Tile]:
    z = sched.sizes
    rs = sched.ops["output_reduce_scatter"]
    per = [c // max(1, z["b"] * z["out_h"] * z["out_w"]) for c in rs.counts]  # k per member
    out, part, res = [], 0, 0
    for r0, r1, c0, c1, inner in rects:
        bhw = z["b"] * (r1 - r0) * (c1 - c0)
        counts = tuple(k * bhw for k in per)
        out.append(Tile(r0, r1, c0, c1, inner, part, res, counts))
        part += z["k_blk"] * bhw
        res += counts[rs.index]
    return out


def exec_plan(sched: Schedule) -> ExecPlan:
    """The :class:`ExecPlan` of a schedule (pure: no MPI, no data)."""
    spec, z = sched.spec, sched.sizes
    b, c_blk = z["b"], z["c_blk"]
    me = layout(spec, sched.grid, sched.rank)
    itemsize = dtypes.numpy_dtype(spec.precision.input).itemsize
    gathered = len(sched.ops["input_allgather"].members) > 1
    (wr0, _), (wc0, _) = sched.window
    r_lo, c_lo = sched.own_origin
    if gathered:
        def src_r(idx):
            return np.searchsorted(sched.used_rows, idx)

        def src_c(idx):
            return np.searchsorted(sched.used_cols, idx)
    else:
        def src_r(idx):
            return np.asarray(idx) - r_lo

        def src_c(idx):
            return np.asarray(idx) - c_lo
    self_copy = None
    if sched.self_rows.size and sched.self_cols.size:
        self_copy = tuple(_index(i) for i in (sched.self_rows - wr0, sched.self_cols - wc0,
                                             src_r(sched.self_rows), src_c(sched.self_cols)))
    q = len(sched.ops["input_halo"].members)
    send_counts, recv_counts, halo_send, halo_recv = [0] * q, [0] * q, [], []
    for j in sorted(sched.halo):
        hp = sched.halo[j]
        if hp.send_rows.size and hp.send_cols.size:
            shape = (c_blk, b, hp.send_rows.size, hp.send_cols.size)
            halo_send.append((j, _index(src_r(hp.send_rows)), _index(src_c(hp.send_cols)), shape))
            send_counts[j] = math.prod(shape) * itemsize
        if hp.recv_rows.size and hp.recv_cols.size:
            shape = (c_blk, b, hp.recv_rows.size, hp.recv_cols.size)
            recv_counts[j] = math.prod(shape) * itemsize
    pos = 0
    for j in range(q):
        if recv_counts[j]:
            hp = sched.halo[j]
            halo_recv.append((j, pos, (c_blk, b, hp.recv_rows.size, hp.recv_cols.size),
                              _index(hp.recv_rows - wr0), _index(hp.recv_cols - wc0)))
        pos += recv_counts[j]

    H, W = z["out_h"], z["out_w"]
    whole = _tiles([(0, H, 0, W, not halo_recv)], sched)   # interior: needs no halo
    if H * W * b == 0:
        return ExecPlan(gathered, self_copy, halo_send, send_counts, recv_counts, halo_recv,
                        whole, whole)
    ax_h, ax_w = spec.axes
    rows = _interior_mask(ax_h, me.out_rows[0], H, me.own_rows)
    cols = _interior_mask(ax_w, me.out_cols[0], W, me.own_cols)
    # split when something can overlap the tiles: a halo in flight or a reduce-scatter
    split = bool(halo_recv) or len(sched.ops["output_reduce_scatter"].members) > 1
    inner, outer = [], []
    for r0, r1, row_in in _runs(rows):
        if not row_in:
            outer.append((r0, r1, 0, W, False))
            continue
        for c0, c1, col_in in _runs(cols):
            bands = _bands(r0, r1, c1 - c0, b, split)
            (inner if col_in else outer).extend((a, e, c0, c1, col_in) for a, e in bands)
    return ExecPlan(gathered, self_copy, halo_send, send_counts, recv_counts, halo_recv,
                    _tiles(inner + outer, sched), whole)


# ------------------------------------------------------------------ one call, by phases

class _Call:
    """One rank's call: the phases as methods, in either order (:func:`execute`)."""

    def __init__(self, gc: GridComm, sched: Schedule, plan: ExecPlan, x_local, w_local,
                 kernel, local_compute, keep) -> None:
        self.gc, self.sched, self.plan = gc, sched, plan
        self.spec, self.rank, self.z = sched.spec, sched.rank, sched.sizes
        prec = self.spec.precision
        self.in_dt = dtypes.numpy_dtype(prec.input)
        self.acc_dt = dtypes.numpy_dtype(prec.accum)
        self.x, self.w = x_local, w_local
        self.kernel, self.local_compute, self.keep = kernel, local_compute, keep
        self.stats = RankStats()
        self.clock = Clock()
        self.clock.phases = dict.fromkeys(PHASES, 0.0)
        self.pending: list[Pending] = []    # started collectives tested between tiles
        self.out: np.ndarray | None = None

    @contextmanager
    def span(self, phase: str, kind: str = "other") -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.clock.add(phase, kind, time.perf_counter() - t0)

    def _fiber(self, op: str):
        return self.gc.fibers[op]

    def _alone(self, op: str) -> bool:
        return alone(self.sched.ops, op, self.stats)

    def poll(self) -> None:
        """Test every pending collective once (MPICH progresses them only in MPI calls)."""
        self.pending = [p for p in self.pending if not p.test()]

    # 1. input allgather along the k-fiber: own used plane, channel-major (c, b, rows, cols)
    def input_allgather(self) -> None:
        op = "input_allgather"
        fault_point(op, self.rank)
        if self._alone(op):      # the halo and the window read the owned block in place
            self.source = self.x
            return
        z, s = self.z, self.sched
        with self.span(op):
            r_lo, c_lo = s.own_origin
            send = np.empty((z["c_own"], z["b"], len(s.used_rows), len(s.used_cols)),
                            self.in_dt)
            _copy(send, _ALL, _ALL, self.x, s.used_rows - r_lo, s.used_cols - c_lo, True)
            self.source = np.empty((z["c_blk"], *send.shape[1:]), self.in_dt)
        start_allgather(self._fiber(op), s.ops[op], send, self.source, self.stats.counters,
                        self.clock).wait()
        del send

    # 2. halo exchange; the window is built directly in the kernel's (b, c, rows, cols)
    def halo_start(self) -> None:
        op, p = "input_halo", self.plan
        fault_point(op, self.rank)
        z, s = self.z, self.sched
        src, swap = self.source, not p.gathered   # the owned block is (b, c, ...)
        with self.span(op):
            (wr0, wr1), (wc0, wc1) = s.window
            self.window = np.zeros((z["b"], z["c_blk"], wr1 - wr0, wc1 - wc0), self.in_dt)
            sendbuf = np.empty(sum(p.send_counts), np.uint8)
            pos = 0
            for j, rows, cols, shape in p.halo_send:   # packed straight into the MPI buffer
                n = p.send_counts[j]
                seg = sendbuf[pos:pos + n].view(self.in_dt).reshape(shape)
                _copy(seg, _ALL, _ALL, src, rows, cols, swap)
                pos += n
            self.halo_buf = np.empty(sum(p.recv_counts), np.uint8)
        self.halo = None
        if not self._alone(op):
            self.halo = start_alltoallv(self._fiber(op), s.ops[op], sendbuf, p.send_counts,
                                        self.halo_buf, p.recv_counts, self.stats.counters,
                                        self.clock)
            self.pending.append(self.halo)
        del sendbuf
        with self.span(op):   # the own part, while the halo is in flight
            if p.self_copy is not None:
                dr, dc, sr, sc = p.self_copy
                _copy(self.window, dr, dc, src, sr, sc, not swap)
            self.source = None

    def halo_finish(self) -> None:
        op = "input_halo"
        if self.halo is not None:
            self.halo.wait()
        with self.span(op):
            for _, pos, shape, rows, cols in self.plan.halo_recv:
                n = math.prod(shape) * self.in_dt.itemsize
                piece = self.halo_buf[pos:pos + n].view(self.in_dt).reshape(shape)
                _copy(self.window, rows, cols, piece, _ALL, _ALL, True)
            self.halo_buf = self.halo = None

    # 3. filter allgather along the b·h·w fiber
    def filter_start(self) -> None:
        op, s = "filter_allgather", self.sched
        fault_point(op, self.rank)
        self.filter_req = None
        if self._alone(op):   # the owned block is the whole
            self.filt = np.ascontiguousarray(self.w)
            return
        z, spec = self.z, self.spec
        with self.span(op):
            self.filt = np.empty((z["k_blk"], z["c_blk"], spec.R, spec.S),
                                 dtypes.numpy_dtype(spec.precision.filter))
        self.filter_req = start_allgather(self._fiber(op), s.ops[op],
                                          np.ascontiguousarray(self.w), self.filt,
                                          self.stats.counters, self.clock)
        self.pending.append(self.filter_req)

    def filter_finish(self) -> None:
        if self.filter_req is not None:
            self.filter_req.wait()
            self.filter_req = None

    # 4. local convolution of one tile into its k-major (k, b, rows, cols) partial
    def compute_start(self) -> None:
        fault_point("compute", self.rank)
        z = self.z
        with self.span("compute", "other"):
            # every element is written by its tile's kernel call (no zero fill)
            self.partial = np.empty(z["k_blk"] * z["b"] * z["out_h"] * z["out_w"], self.acc_dt)
        self.reduce: dict[int, Pending] = {}
        self.result = None

    def tile_partial(self, t: Tile) -> np.ndarray:
        n = self.z["k_blk"] * self.z["b"] * (t.r1 - t.r0) * (t.c1 - t.c0)
        return self.partial[t.part:t.part + n].reshape(self.z["k_blk"], self.z["b"], *t.shape)

    def compute_tile(self, t: Tile) -> None:
        part = self.tile_partial(t)
        with self.span("compute", "compute"):
            if self.local_compute is not None:   # one tile: the whole block
                res, extra = self.local_compute(self.window, self.filt, self.sched)
                self.stats.extra.update(extra)
                part[...] = res.transpose(1, 0, 2, 3)
                del res
            else:
                spec = self.spec
                oh, ow = self.sched.offset
                (self.kernel or default_kernel())(
                    self.window, self.filt, part.transpose(1, 0, 2, 3), spec.stride,
                    spec.dilation, (oh + spec.stride[0] * t.r0, ow + spec.stride[1] * t.c0))

    def compute_done(self) -> None:
        if self.keep is not None:  # the backward passes reuse the window and the filter
            self.keep.update(window=self.window, filter=self.filt)
        self.window = self.filt = None

    # 5. reduce-scatter of one tile along the c-fiber (the tiles' counts add up to the
    #    schedule's), then the cast to the output dtype
    def reduce_start(self, t: Tile, first: bool) -> None:
        op = "output_reduce_scatter"
        if first:
            fault_point(op, self.rank)
        if self._alone(op) if first else len(self.sched.ops[op].members) == 1:
            return
        z = self.z
        if self.result is None:
            with self.span(op):
                self.result = np.empty(z["k_o"] * z["b"] * z["out_h"] * z["out_w"], self.acc_dt)
        n = t.counts[self.sched.ops[op].index]
        req = start_reduce_scatter(self._fiber(op), self.sched.ops[op],
                                   self.tile_partial(t).reshape(-1),
                                   self.result[t.res:t.res + n], list(t.counts),
                                   self.stats.counters, self.clock)
        self.reduce[t.part] = req
        self.pending.append(req)

    def reduce_finish(self) -> None:
        """Wait for every tile's reduce-scatter; the partials are then freed."""
        for req in self.reduce.values():
            req.wait()
        if self.result is not None:
            self.partial = None

    def cast_tile(self, t: Tile, first: bool) -> None:
        if first:
            fault_point("cast", self.rank)
        z, prec = self.z, self.spec.precision
        if self.result is not None:
            n = t.counts[self.sched.ops["output_reduce_scatter"].index]
            res = self.result[t.res:t.res + n].reshape(z["k_o"], z["b"], *t.shape)
        else:
            res = self.tile_partial(t)
        with self.span("cast"):
            if self.out is None:
                self.out = np.empty((z["b"], z["k_o"], z["out_h"], z["out_w"]),
                                    dtypes.numpy_dtype(prec.output))
            if prec.is_integer and res.size:  # a narrower integer output raises, never wraps
                lo, hi = dtypes.value_range(prec.output)
                vmin, vmax = res.min(), res.max()
                if vmin < lo or vmax > hi:
                    raise AccumulatorOverflow(
                        f"integer convolution result range [{vmin}, {vmax}] does not fit the "
                        f"{prec.output} output type [{int(lo)}, {int(hi)}]")
            np.copyto(self.out[:, :, t.r0:t.r1, t.c0:t.c1], res.transpose(1, 0, 2, 3),
                      casting="unsafe")

    def finish(self) -> tuple[np.ndarray, RankStats]:
        self.partial = self.result = None
        out = self.out
        if corrupt_requested(self.rank) and out.size:
            out.reshape(-1)[0] += 1
        self.stats.seconds = dict(self.clock.phases)
        return out, self.stats


def _sequential(call: _Call) -> None:
    """1 → 2 → 3 → 4 → 5, each collective completed before the next phase starts."""
    call.input_allgather()
    call.halo_start()
    call.halo_finish()
    call.filter_start()
    call.filter_finish()
    call.compute_start()
    tile = call.plan.whole[0]
    call.compute_tile(tile)
    call.compute_done()
    call.reduce_start(tile, True)
    call.reduce_finish()
    call.cast_tile(tile, True)


def _overlapped(call: _Call) -> None:
    """Filter allgather first; interior tiles while the halo is in flight; each tile's
    reduce-scatter while later tiles are computed; casts as reduce-scatters complete."""
    call.filter_start()
    call.input_allgather()
    call.halo_start()
    call.filter_finish()
    call.compute_start()
    tiles = call.plan.whole if call.local_compute is not None else call.plan.tiles
    halo_open = True
    for i, t in enumerate(tiles):
        if halo_open and not t.interior:
            call.halo_finish()
            halo_open = False
        call.compute_tile(t)
        call.reduce_start(t, i == 0)
        call.poll()
    if halo_open:
        call.halo_finish()
    call.compute_done()
    call.reduce_finish()
    for i, t in enumerate(tiles):
        call.cast_tile(t, i == 0)


def _phases_alone(gc: GridComm, sched: Schedule, plan: ExecPlan | None, x_local, w_local,
                  stats: RankStats, steps) -> _Call:
    """Run some forward phase methods of :class:`_Call` alone (no compute), adding their
    bytes and seconds to ``stats``; returns the call holding their results."""
    call = _Call(gc, sched, plan or exec_plan(sched), x_local, w_local, None, None, None)
    for step in steps:
        step(call)
    for op, (r, s) in call.stats.counters.volume().items():
        stats.counters.add(op, r, s)
    for ph, sec in call.clock.phases.items():
        if sec:
            stats.seconds[ph] = stats.seconds.get(ph, 0.0) + sec
    return call


def gather_input_window(gc: GridComm, sched: Schedule, x_local: np.ndarray, stats: RankStats,
                        plan: ExecPlan | None = None) -> np.ndarray:
    """Steps 1-2 alone: the ``(b, c_blk, rows, cols)`` local input window (input dtype),
    for a backward pass run without its forward (``wgrad`` alone)."""
    call = _phases_alone(gc, sched, plan, x_local, None, stats,
                         (_Call.input_allgather, _Call.halo_start, _Call.halo_finish))
    return call.window


def gather_filter(gc: GridComm, sched: Schedule, w_local: np.ndarray, stats: RankStats,
                  plan: ExecPlan | None = None) -> np.ndarray:
    """Step 3 alone: the ``(k_blk, c_blk, R, S)`` filter block, allgathered along the b·h·w
    fiber (the owned block itself when the fiber has one member), for ``dgrad`` alone."""
    call = _phases_alone(gc, sched, plan, None, w_local, stats,
                         (_Call.filter_start, _Call.filter_finish))
    return call.filt


def execute(gc: GridComm, sched: Schedule, x_local: np.ndarray, w_local: np.ndarray,
            kernel: Callable | None = None, local_compute: Callable | None = None,
            keep: dict | None = None, overlap: bool | None = None,
            plan: ExecPlan | None = None) -> tuple[np.ndarray, RankStats]:
    """Run this rank's part of the convolution (collective over ``gc``).

    Parameters
    ----------
    gc : the grid communicators.
    sched : this rank's schedule (:func:`parconv.planner.schedule.build_schedule`).
    x_local, w_local : the owned input and filter blocks (validated by the caller).
    kernel : ``conv2d_window``-compatible local kernel (default: the numba kernel).
    local_compute : optional replacement of step 4, ``f(window, filter, sched) ->
        (partial, extra_report)`` (used by the Gemmini offload model; one tile).
    keep : when given, receives the local input window ``"window"`` ``(b, c_blk, rows,
        cols)`` and the gathered filter ``"filter"`` for the backward passes.
    overlap : the overlapped order (True) or the sequential one (False); default
        :func:`overlap_default` (``PARCONV_OVERLAP``). Every rank must pass the same.
    plan : the schedule's :func:`exec_plan` (built here when None).

    Returns
    -------
    (output block in the output dtype, statistics)
    """
    t0 = time.perf_counter()
    overlap = overlap_default() if overlap is None else bool(overlap)
    call = _Call(gc, sched, plan or exec_plan(sched), x_local, w_local, kernel,
                 local_compute, keep)
    (_overlapped if overlap else _sequential)(call)
    out, stats = call.finish()
    total = time.perf_counter() - t0
    stats.time = dict(call.clock.kinds)
    stats.time["other"] += max(0.0, total - sum(stats.time.values()))
    stats.time["total"] = total
    stats.extra["overlap"] = overlap
    stats.extra["tiles"] = len(call.plan.whole if not overlap or local_compute is not None
                               else call.plan.tiles)
    return out, stats
