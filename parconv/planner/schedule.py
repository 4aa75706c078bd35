"""The per-rank message schedule of the grid algorithm (pure: no MPI, no data).

:func:`build_schedule` turns the data layout of :mod:`parconv.planner.partition` into what one
rank does in each operation: the communicator members (global ranks, in communicator
order), the element counts per member, and for the halo the exact global row/column
index sets exchanged with each peer. The MPI executor follows it verbatim; the
simulator calls it for every virtual rank. Its byte totals equal
:func:`parconv.planner.partition.rank_volume` by construction (tested).

Payload semantics (what is counted):

* ``allgather`` over ``q`` members: receive the ``q − 1`` blocks of the others, send
  the own block to each of the ``q − 1`` others.
* ``alltoallv`` (halo): what each peer sends / receives (self excluded).
* ``reduce_scatter`` over ``q`` members: receive the ``q − 1`` partial copies of the
  own result block, send the partial copies of the others' blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..spec import Axis, ConvSpec
from .adjoint import ADJOINT_OF, RECOMPUTED, forward_source, itemsize, pass_operations
from .partition import OPERATIONS, Grid, balanced_block, layout

Range = tuple[int, int]

#: Grid axes kept by each operation's sub-communicator (b, k, c, h, w).
FIBERS: dict[str, tuple[bool, bool, bool, bool, bool]] = {
    "input_allgather": (False, True, False, False, False),
    "input_halo": (False, False, False, True, True),
    "filter_allgather": (True, False, False, True, True),
    "output_reduce_scatter": (False, False, True, False, False),
}

#: Collective kind of each operation.
KINDS = {"input_allgather": "allgather", "input_halo": "alltoallv",
         "filter_allgather": "allgather", "output_reduce_scatter": "reduce_scatter"}

_ADJOINT_KIND = {"allgather": "reduce_scatter", "reduce_scatter": "allgather",
                 "alltoallv": "alltoallv"}


@dataclass(frozen=True)
class OpSchedule:
    """One operation seen from one rank.

    Attributes
    ----------
    op : operation name (one of :data:`parconv.planner.partition.OPERATIONS`).
    kind : ``allgather``, ``alltoallv`` or ``reduce_scatter``.
    members : global ranks of the sub-communicator, in its rank order.
    index : this rank's position in ``members``.
    counts : elements per member: the member's block (allgather), what this rank
        receives from the member (alltoallv), the member's result block (reduce_scatter).
    send_counts : alltoallv only: elements this rank sends to each member.
    itemsize : bytes per element on the wire.
    """

    op: str
    kind: str
    members: tuple[int, ...]
    index: int
    counts: tuple[int, ...]
    itemsize: int
    send_counts: tuple[int, ...] = ()

    def recv_elems(self, j: int) -> int:
        """Payload elements received from member ``j``."""
        if j == self.index:
            return 0
        if self.kind == "allgather":
            return self.counts[j]
        if self.kind == "reduce_scatter":
            return self.counts[self.index]
        return self.counts[j]

    def send_elems(self, j: int) -> int:
        """Payload elements sent to member ``j``."""
        if j == self.index:
            return 0
        if self.kind == "allgather":
            return self.counts[self.index]
        if self.kind == "reduce_scatter":
            return self.counts[j]
        return self.send_counts[j]

    @property
    def recv_bytes(self) -> int:
        return self.itemsize * sum(self.recv_elems(j) for j in range(len(self.members)))

    @property
    def send_bytes(self) -> int:
        return self.itemsize * sum(self.send_elems(j) for j in range(len(self.members)))

    def adjoint(self, op: str, itemsize: int) -> OpSchedule:
        """The adjoint operation: same communicator and blocks, receive and send
        exchanged (allgather <-> reduce-scatter; an alltoallv's counts transposed), moving
        ``itemsize``-byte elements. Its ``recv_elems(j)`` is this one's ``send_elems(j)``
        and vice versa (tested)."""
        if self.kind == "alltoallv":
            return OpSchedule(op, "alltoallv", self.members, self.index, self.send_counts,
                              itemsize, self.counts)
        return OpSchedule(op, _ADJOINT_KIND[self.kind], self.members, self.index, self.counts,
                          itemsize)

    def peer_bytes(self) -> dict[int, tuple[int, int]]:
        """``{global peer rank: (recv_bytes, send_bytes)}`` for peers with traffic."""
        out = {}
        for j, peer in enumerate(self.members):
            r, s = self.recv_elems(j) * self.itemsize, self.send_elems(j) * self.itemsize
            if r or s:
                out[peer] = (r, s)
        return out


@dataclass(frozen=True)
class HaloPeer:
    """Global input rows/cols one rank receives from (``recv_*``) and sends to
    (``send_*``) one peer of its (h, w) plane; rows × cols × (b, c-block) elements."""

    recv_rows: np.ndarray
    recv_cols: np.ndarray
    send_rows: np.ndarray
    send_cols: np.ndarray


@dataclass(frozen=True)
class Schedule:
    """Everything one rank does: its layout-derived index sets and its four operations.

    Attributes
    ----------
    rank, coords : this rank and its grid coordinates.
    ops : ``{op: OpSchedule}`` in :data:`parconv.planner.partition.OPERATIONS` order.
    used_rows, used_cols : global input rows/cols this rank owns that some output reads
        (what the input allgather moves).
    window : (rows, cols) half-open global input window the local compute reads.
    self_rows, self_cols : the part of ``need`` this rank owns itself.
    halo : ``{plane member index: HaloPeer}`` for peers with traffic.
    offset : (row, col) kernel offset: local window index of output (0, 0), tap (0, 0).
    own_origin : global (row, col) of the owned input block's first element.
    sizes : block extents ``b, c_blk, c_own, k_blk, k_f, k_o, out_h, out_w``.
    """

    spec: ConvSpec
    grid: Grid
    rank: int
    coords: tuple[int, int, int, int, int]
    ops: dict[str, OpSchedule]
    used_rows: np.ndarray
    used_cols: np.ndarray
    window: tuple[Range, Range]
    self_rows: np.ndarray
    self_cols: np.ndarray
    halo: dict[int, HaloPeer] = field(default_factory=dict)
    offset: tuple[int, int] = (0, 0)
    own_origin: tuple[int, int] = (0, 0)
    sizes: dict[str, int] = field(default_factory=dict)

    def volume(self) -> dict[str, tuple[int, int]]:
        """``{op: (recv_bytes, send_bytes)}``, the same form as ``partition.rank_volume``."""
        return {op: (s.recv_bytes, s.send_bytes) for op, s in self.ops.items()}

    def pass_ops(self, pass_: str, keep_window: bool = True) -> dict[str, OpSchedule]:
        """``{op: OpSchedule}`` of one pass in execution order (:func:`pass_operations`)."""
        return derive_pass_ops(self.ops, self.spec, pass_, keep_window)

    def pass_volume(self, pass_: str, keep_window: bool = True) -> dict[str, tuple[int, int]]:
        """``{op: (recv_bytes, send_bytes)}`` of one pass."""
        return {op: (s.recv_bytes, s.send_bytes)
                for op, s in self.pass_ops(pass_, keep_window).items()}

    @property
    def recv_bytes(self) -> int:
        return sum(s.recv_bytes for s in self.ops.values())

    @property
    def send_bytes(self) -> int:
        return sum(s.send_bytes for s in self.ops.values())


def derive_pass_ops(forward_ops: dict[str, OpSchedule], spec: ConvSpec, pass_: str,
                    keep_window: bool = True) -> dict[str, OpSchedule]:
    """One pass's operations derived from the forward ones (the backward schedule is the
    adjoint of the forward schedule: nothing about blocks or halos is recomputed)."""
    out = {}
    for op in pass_operations(pass_, keep_window):
        src = forward_ops[forward_source(op)]
        if op in ADJOINT_OF:
            out[op] = src.adjoint(op, itemsize(spec.precision, op))
        elif op in RECOMPUTED:
            out[op] = OpSchedule(op, src.kind, src.members, src.index, src.counts,
                                 src.itemsize, src.send_counts)
        else:
            out[op] = src
    return out


def fiber_members(grid: Grid, coords, keep) -> tuple[int, ...]:
    """Global ranks of the sub-grid through ``coords`` that varies the axes in ``keep``,
    in row-major order of the kept axes (what ``Cartcomm.Sub`` numbers)."""
    axes = [range(d) if k else [c] for d, c, k in zip(grid.dims, coords, keep)]
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 5)
    return tuple(int(r) for r in np.ravel_multi_index(tuple(idx.T), grid.dims))


@lru_cache(maxsize=4096)
def _need(axis: Axis, p: int, i: int) -> np.ndarray:
    lo, hi = balanced_block(axis.out_size, p, i)
    out = axis.used_indices(lo, hi)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=4096)
def _own_used(axis: Axis, p: int, i: int) -> np.ndarray:
    lo, hi = balanced_block(axis.in_size, p, i)
    out = axis.used_indices(0, None, lo, hi)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=4096)
def _axis_pieces(axis: Axis, p: int, i: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Along one axis, for block ``i``: ``{j: (indices i needs that j owns, indices j
    needs that i owns)}`` for the blocks ``j`` where either is non-empty (``j = i``
    included: its piece pairs with the other axis's neighbours). Only the blocks that
    block ``i`` reads or that read block ``i`` are materialised (closed-form counts find them)."""
    need_i = _need(axis, p, i)
    own_i = balanced_block(axis.in_size, p, i)
    out_i = balanced_block(axis.out_size, p, i)
    blocks = [(balanced_block(axis.out_size, p, j), balanced_block(axis.in_size, p, j))
              for j in range(p)]
    n_recv = axis.read_counts(out_i[0], out_i[1], [b[1][0] for b in blocks],
                              [b[1][1] for b in blocks])
    n_send = axis.read_counts([b[0][0] for b in blocks], [b[0][1] for b in blocks],
                              own_i[0], own_i[1])
    out = {}
    for j in np.flatnonzero((n_recv > 0) | (n_send > 0)).tolist():
        recv = _inter(need_i, blocks[j][1])
        send = axis.used_indices(*blocks[j][0], *own_i)
        if recv.size or send.size:
            recv.flags.writeable = send.flags.writeable = False  # shared via the cache
            out[j] = (recv, send)
    return out


def _inter(idx: np.ndarray, r: Range) -> np.ndarray:
    return idx[(idx >= r[0]) & (idx < r[1])]


def build_schedule(spec: ConvSpec, grid: Grid, rank: int) -> Schedule:
    """The message schedule of one rank (pure and cheap: per-axis index sets are cached).

    Raises
    ------
    ValueError
        If ``rank`` is outside the grid.
    """
    me = layout(spec, grid, rank)
    ib, ik, ic, ih, iw = me.coords
    p = spec.precision
    pi, pf, po = p.p_input // 8, p.p_filter // 8, p.p_accum // 8
    ax_h, ax_w = spec.axes
    b = me.batch[1] - me.batch[0]
    c_lo, c_hi = me.in_channels
    c_blk = c_hi - c_lo
    k_lo, k_hi = me.out_channels
    k_blk = k_hi - k_lo
    ops: dict[str, OpSchedule] = {}

    # 1. input allgather along the k-fiber: channel sub-blocks of the used plane
    used_rows, used_cols = _own_used(ax_h, grid.h, ih), _own_used(ax_w, grid.w, iw)
    plane = len(used_rows) * len(used_cols)
    m = fiber_members(grid, me.coords, FIBERS["input_allgather"])
    counts = tuple(b * _size(balanced_block(c_blk, grid.k, j)) * plane for j in range(grid.k))
    ops["input_allgather"] = OpSchedule("input_allgather", "allgather", m, ik, counts, pi)

    # 2. halo within the (h, w) plane, directly from the owners
    need_r, need_c = _need(ax_h, grid.h, ih), _need(ax_w, grid.w, iw)
    own_r = balanced_block(spec.in_size[0], grid.h, ih)
    own_c = balanced_block(spec.in_size[1], grid.w, iw)
    m = fiber_members(grid, me.coords, FIBERS["input_halo"])
    q_plane = grid.h * grid.w
    recv, send, halo = [0] * q_plane, [0] * q_plane, {}
    pieces_h, pieces_w = _axis_pieces(ax_h, grid.h, ih), _axis_pieces(ax_w, grid.w, iw)
    bc = b * c_blk
    for jh, (rr, sr) in pieces_h.items():  # only neighbours with a non-empty row piece
        for jw, (rc, sc) in pieces_w.items():
            if (jh, jw) == (ih, iw):
                continue
            nr, ns = bc * len(rr) * len(rc), bc * len(sr) * len(sc)
            if nr or ns:
                j = jh * grid.w + jw
                recv[j], send[j] = nr, ns
                halo[j] = HaloPeer(rr, rc, sr, sc)
    ops["input_halo"] = OpSchedule("input_halo", "alltoallv", m, ih * grid.w + iw,
                                   tuple(recv), pi, tuple(send))

    # 3. filter allgather along the b·h·w fiber
    q = grid.b * grid.h * grid.w
    crs = c_blk * spec.R * spec.S
    m = fiber_members(grid, me.coords, FIBERS["filter_allgather"])
    counts = tuple(_size(balanced_block(k_blk, q, f)) * crs for f in range(q))
    ops["filter_allgather"] = OpSchedule("filter_allgather", "allgather", m,
                                         me.filter_fiber_index, counts, pf)

    # 4. reduce-scatter of accumulator partials along the c-fiber (k-major blocks)
    bhw = b * _size(me.out_rows) * _size(me.out_cols)
    m = fiber_members(grid, me.coords, FIBERS["output_reduce_scatter"])
    counts = tuple(_size(balanced_block(k_blk, grid.c, j)) * bhw for j in range(grid.c))
    ops["output_reduce_scatter"] = OpSchedule("output_reduce_scatter", "reduce_scatter", m,
                                              ic, counts, po)

    window = me.need_window
    offset = (spec.stride[0] * me.out_rows[0] - spec.padding[0] - window[0][0],
              spec.stride[1] * me.out_cols[0] - spec.padding[1] - window[1][0])
    assert tuple(ops) == OPERATIONS
    sizes = {"b": b, "c_blk": c_blk, "c_own": _size(me.input_channels_owned), "k_blk": k_blk,
             "k_f": _size(me.filter_out_channels_owned),
             "k_o": _size(me.output_out_channels_owned),
             "out_h": _size(me.out_rows), "out_w": _size(me.out_cols)}
    return Schedule(spec, grid, rank, me.coords, ops, used_rows, used_cols, window,
                    _inter(need_r, own_r), _inter(need_c, own_c), halo, offset,
                    (own_r[0], own_c[0]), sizes)


def _size(r: Range) -> int:
    return max(0, r[1] - r[0])
