"""Processor grid, block distribution and halo index math (pure; no MPI).

This module fixes *what* the grid algorithm of THEORY.md §6 moves, so that the planner
(expected bytes), the MPI runtime (what it sends) and the simulator agree by
construction and can be checked against each other.

Grid ``P_b × P_k × P_c × P_h × P_w``; ranks are numbered row-major over
``(i_b, i_k, i_c, i_h, i_w)`` (what ``MPI.Comm.Create_cart`` does). Rank
``(i_b, i_k, i_c, i_h, i_w)`` computes the partial output
``Out[b-block, k-block, h-block, w-block]`` over its c-block and all ``r, s``.

Data layout (all blocks balanced: the first ``n mod p`` blocks get one extra element):

* **Input, initially**: rank owns ``In[b-block(i_b), c-sub, rows-block(i_h), cols-block(i_w)]``
  where rows/cols-blocks split the *input* extent into ``P_h``/``P_w`` blocks and
  ``c-sub`` is part ``i_k`` of the c-block split ``P_k`` ways.
* **Filter, initially**: rank owns ``F[k-sub, c-block(i_c), :, :]`` where ``k-sub`` is part
  ``f = (i_b·P_h + i_h)·P_w + i_w`` of the k-block split ``P_b·P_h·P_w`` ways.
* **Output, finally**: rank owns ``Out[b-block, k-sub', h-block, w-block]`` where
  ``k-sub'`` is part ``i_c`` of the k-block split ``P_c`` ways.

Operations (payload bytes counted by their semantics):

1. ``input_allgather`` along the k-fiber (``P_k`` ranks sharing ``i_b, i_c, i_h, i_w``):
   the owned input restricted to *used* rows/cols (those some output reads; stride
   larger than the filter extent skips pixels), gathered over the c-block.
2. ``input_halo`` within the (h, w) plane (ranks sharing ``i_b, i_k, i_c``): each rank
   receives, directly from their owners (diagonal neighbours included), the input
   elements its output block reads that it does not own. Halo widths can be negative
   (owned rows never read) or exceed one neighbour's block.
3. ``filter_allgather`` along the b·h·w-fiber (ranks sharing ``i_k, i_c``).
4. ``output_reduce_scatter`` of accumulator-precision partial sums along the c-fiber
   (ranks sharing ``i_b, i_k, i_h, i_w``).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..spec import ConvSpec

#: Grid axes in rank order (slowest first).
GRID_AXES = ("b", "k", "c", "h", "w")
#: Communication operations, in execution order.
OPERATIONS = ("input_allgather", "input_halo", "filter_allgather", "output_reduce_scatter")

Range = tuple[int, int]


def balanced_block(n: int, p: int, i: int) -> Range:
    """Half-open range of block ``i`` when ``n`` items are split into ``p`` balanced
    blocks (the first ``n mod p`` blocks get one extra item)."""
    if not 0 <= i < p:
        raise ValueError(f"block index {i} out of range for {p} blocks")
    q, rem = divmod(n, p)
    lo = i * q + min(i, rem)
    return lo, lo + q + (1 if i < rem else 0)


def block_sizes(n: int, p: int) -> np.ndarray:
    """Sizes of the ``p`` balanced blocks of ``n`` items."""
    q, rem = divmod(n, p)
    return q + (np.arange(p, dtype=np.int64) < rem)


def _len(r: Range) -> int:
    return max(0, r[1] - r[0])


@dataclass(frozen=True)
class Grid:
    """A 5-D processor grid ``b × k × c × h × w``."""

    b: int = 1
    k: int = 1
    c: int = 1
    h: int = 1
    w: int = 1

    def __post_init__(self) -> None:
        for ax in GRID_AXES:
            v = getattr(self, ax)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"grid.{ax} must be a positive integer, got {v!r}")
            object.__setattr__(self, ax, int(v))

    @classmethod
    def parse(cls, text: str) -> Grid:
        """Parse ``BxKxCxHxW`` (e.g. ``2x1x3x1x1``)."""
        parts = re.split(r"[x×,]", text.strip().lower())
        if len(parts) != 5 or not all(re.fullmatch(r"[0-9]+", p.strip()) for p in parts):
            raise ValueError(f"grid {text!r}: expected five positive integers BxKxCxHxW (ASCII "
                             "digits), e.g. 2x1x2x1x1")
        return cls(*(int(p) for p in parts))

    @property
    def dims(self) -> tuple[int, int, int, int, int]:
        return (self.b, self.k, self.c, self.h, self.w)

    @property
    def size(self) -> int:
        """Number of ranks P."""
        return math.prod(self.dims)

    def coords(self, rank: int) -> tuple[int, int, int, int, int]:
        """Grid coordinates of a rank (row-major, as ``Create_cart``)."""
        if not 0 <= rank < self.size:
            raise ValueError(f"rank {rank} out of range for a grid of {self.size} ranks")
        return tuple(int(v) for v in np.unravel_index(rank, self.dims))

    def rank(self, coords) -> int:
        """Rank of grid coordinates."""
        return int(np.ravel_multi_index(tuple(coords), self.dims))

    def as_dict(self) -> dict[str, int]:
        return {ax: getattr(self, ax) for ax in GRID_AXES}

    def __str__(self) -> str:
        return "x".join(str(d) for d in self.dims)


def check_grid(spec: ConvSpec, grid: Grid, procs: int | None = None) -> None:
    """Reject a grid that cannot run ``spec``.

    Raises
    ------
    ValueError
        If the grid's product differs from ``procs`` or it splits a dimension into more
        blocks than the dimension has items.
    """
    if procs is not None and grid.size != procs:
        raise ValueError(f"grid {grid} has {grid.size} ranks but the job has {procs}")
    limits = {"b": spec.B, "k": spec.K, "c": spec.C, "h": spec.H, "w": spec.W}
    names = {"b": "batch", "k": "out-channels", "c": "in-channels", "h": "output height",
             "w": "output width"}
    for ax, n in limits.items():
        if getattr(grid, ax) > n:
            raise ValueError(f"grid {grid} splits {names[ax]} ({n}) into {getattr(grid, ax)} "
                             f"blocks: at most {n} allowed")


@dataclass(frozen=True)
class RankLayout:
    """Everything one rank owns, computes and needs (index ranges, half-open)."""

    spec: ConvSpec
    grid: Grid
    coords: tuple[int, int, int, int, int]

    @property
    def rank(self) -> int:
        return self.grid.rank(self.coords)

    # compute blocks
    @cached_property
    def batch(self) -> Range:
        return balanced_block(self.spec.B, self.grid.b, self.coords[0])

    @cached_property
    def out_channels(self) -> Range:
        return balanced_block(self.spec.K, self.grid.k, self.coords[1])

    @cached_property
    def in_channels(self) -> Range:
        return balanced_block(self.spec.C, self.grid.c, self.coords[2])

    @cached_property
    def out_rows(self) -> Range:
        return balanced_block(self.spec.H, self.grid.h, self.coords[3])

    @cached_property
    def out_cols(self) -> Range:
        return balanced_block(self.spec.W, self.grid.w, self.coords[4])

    # initial input ownership
    @cached_property
    def own_rows(self) -> Range:
        return balanced_block(self.spec.in_size[0], self.grid.h, self.coords[3])

    @cached_property
    def own_cols(self) -> Range:
        return balanced_block(self.spec.in_size[1], self.grid.w, self.coords[4])

    @cached_property
    def input_channels_owned(self) -> Range:
        lo, hi = self.in_channels
        a, b = balanced_block(hi - lo, self.grid.k, self.coords[1])
        return lo + a, lo + b

    # initial filter ownership / final output ownership
    @property
    def filter_fiber_index(self) -> int:
        ib, _, _, ih, iw = self.coords
        return (ib * self.grid.h + ih) * self.grid.w + iw

    @cached_property
    def filter_out_channels_owned(self) -> Range:
        lo, hi = self.out_channels
        q = self.grid.b * self.grid.h * self.grid.w
        a, b = balanced_block(hi - lo, q, self.filter_fiber_index)
        return lo + a, lo + b

    @cached_property
    def output_out_channels_owned(self) -> Range:
        lo, hi = self.out_channels
        a, b = balanced_block(hi - lo, self.grid.c, self.coords[2])
        return lo + a, lo + b

    # input needed by the compute block
    @cached_property
    def need_rows(self) -> np.ndarray:
        """Sorted input row indices read by this rank's output rows."""
        return self.spec.axes[0].used_indices(*self.out_rows)

    @cached_property
    def need_cols(self) -> np.ndarray:
        return self.spec.axes[1].used_indices(*self.out_cols)

    @cached_property
    def need_window(self) -> tuple[Range, Range]:
        """Contiguous input window (rows, cols) covering what the output block reads."""
        return self.spec.axes[0].window(*self.out_rows), self.spec.axes[1].window(*self.out_cols)

    @cached_property
    def own_used_rows(self) -> np.ndarray:
        """Owned input rows that some output (any rank's) reads."""
        return self.spec.axes[0].used_indices(0, None, *self.own_rows)

    @cached_property
    def own_used_cols(self) -> np.ndarray:
        return self.spec.axes[1].used_indices(0, None, *self.own_cols)

    # sizes
    @property
    def input_owned_shape(self) -> tuple[int, int, int, int]:
        return (_len(self.batch), _len(self.input_channels_owned), _len(self.own_rows), _len(self.own_cols))

    @property
    def filter_owned_shape(self) -> tuple[int, int, int, int]:
        return (_len(self.filter_out_channels_owned), _len(self.in_channels), self.spec.R, self.spec.S)

    @property
    def output_owned_shape(self) -> tuple[int, int, int, int]:
        return (_len(self.batch), _len(self.output_out_channels_owned), _len(self.out_rows), _len(self.out_cols))

    @property
    def partial_output_shape(self) -> tuple[int, int, int, int]:
        return (_len(self.batch), _len(self.out_channels), _len(self.out_rows), _len(self.out_cols))


def layout(spec: ConvSpec, grid: Grid, rank: int) -> RankLayout:
    """The layout of one rank."""
    return RankLayout(spec, grid, grid.coords(rank))


def _overlap(idx: np.ndarray, r: Range) -> int:
    return int(np.count_nonzero((idx >= r[0]) & (idx < r[1])))


def halo_counts(spec: ConvSpec, grid: Grid, rank: int) -> dict[int, tuple[int, int]]:
    """Per-peer halo element counts for one rank: ``{peer_rank: (recv_elems, send_elems)}``
    over the ranks of its (h, w) plane (peers with nothing to exchange omitted)."""
    me = layout(spec, grid, rank)
    ib, ik, ic, _, _ = me.coords
    bc = _len(me.batch) * _len(me.in_channels)
    out: dict[int, tuple[int, int]] = {}
    for jh, jw in itertools.product(range(grid.h), range(grid.w)):
        peer = grid.rank((ib, ik, ic, jh, jw))
        if peer == rank:
            continue
        other = layout(spec, grid, peer)
        recv = _overlap(me.need_rows, other.own_rows) * _overlap(me.need_cols, other.own_cols) * bc
        send = _overlap(other.need_rows, me.own_rows) * _overlap(other.need_cols, me.own_cols) * bc
        if recv or send:
            out[peer] = (recv, send)
    return out


def rank_volume(spec: ConvSpec, grid: Grid, rank: int) -> dict[str, tuple[int, int]]:
    """Reference per-rank payload bytes ``{operation: (recv_bytes, send_bytes)}``.

    The definition of what the algorithm moves; the planner's fast evaluation, the MPI
    runtime's counters and the simulator must all equal it.
    """
    me = layout(spec, grid, rank)
    p = spec.precision
    pi, pf, po = p.p_input // 8, p.p_filter // 8, p.p_accum // 8
    b, c_blk, c_own = _len(me.batch), _len(me.in_channels), _len(me.input_channels_owned)
    plane = len(me.own_used_rows) * len(me.own_used_cols)
    vol = {
        "input_allgather": (pi * b * (c_blk - c_own) * plane, pi * (grid.k - 1) * b * c_own * plane),
    }
    halo = halo_counts(spec, grid, rank)
    vol["input_halo"] = (pi * sum(r for r, _ in halo.values()), pi * sum(s for _, s in halo.values()))
    k_blk, k_f = _len(me.out_channels), _len(me.filter_out_channels_owned)
    q = grid.b * grid.h * grid.w
    crs = c_blk * spec.R * spec.S
    vol["filter_allgather"] = (pf * (k_blk - k_f) * crs, pf * (q - 1) * k_f * crs)
    k_o = _len(me.output_out_channels_owned)
    bhw = b * _len(me.out_rows) * _len(me.out_cols)
    vol["output_reduce_scatter"] = (po * (grid.c - 1) * k_o * bhw, po * (k_blk - k_o) * bhw)
    return vol


#: Buffers of one rank, in :func:`memory_phases` (element counts; ``kernel`` in bytes).
MEMORY_BUFFERS = ("owned_input", "owned_filter", "allgather_send", "gathered", "window",
                  "halo_send", "halo_recv", "filter", "kernel", "partial", "recv",
                  "mpi_reduce_scatter", "result", "output")

#: Buffers of the backward passes (:func:`memory_phases` with ``pass_`` dgrad, wgrad or
#: step; element counts; ``*_kernel`` in bytes), as :mod:`parconv.runtime.backward`
#: allocates them:
#:
#: * ``grad_output``: the caller's owned dOut block (output dtype);
#: * ``go_send``, ``go_gathered``, ``go``: the dOut allgather's channel-major send copy,
#:   its gathered ``(k_blk, b, h, w)`` buffer and the ``(b, k_blk, h, w)`` copy the kernels
#:   read (all zero when ``P_c = 1``: the owned block is used in place);
#: * ``dwindow``: the accumulator-precision input-gradient window;
#: * ``dhalo_send`` / ``dhalo_recv``: the halo segments sent back / received (the
#:   forward halo's receive / send counts);
#: * ``dplane``: the k-fiber reduce-scatter's send plane ``(c_blk, b, used)``; ``drs_recv``
#:   and ``mpi_drs`` its received block and MPI's temporary (zero when ``P_k = 1``);
#:   ``dresult``: the reduced block ``(c_own, b, used)`` before the cast;
#: * ``grad_input``: the delivered input-gradient block (input dtype, owned input shape);
#: * ``dfilter``: the ``(k_blk, c_blk, R, S)`` accumulator filter gradient; ``dfrs_recv``
#:   and ``mpi_dfrs``: the b·h·w reduce-scatter's received block and MPI's temporary
#:   (``ceil(k_blk/q)`` rows, as the owned filter; zero when ``q = 1``);
#: * ``dgrad_kernel``, ``wgrad_kernel``: the local kernels' workspaces in bytes
#:   (:func:`parconv.kernels.backward.dgrad_workspace_bytes`, ``wgrad_workspace_bytes``).
BACKWARD_BUFFERS = ("grad_output", "go_send", "go_gathered", "go", "dwindow", "dhalo_send",
                    "dhalo_recv", "dplane", "drs_recv", "mpi_drs", "dresult", "grad_input",
                    "dfilter", "dfrs_recv", "mpi_dfrs", "dgrad_kernel", "wgrad_kernel")


def memory_phases(p, n: dict, pass_: str = "forward", keep_window: bool = True) -> dict:
    """Bits alive in each phase of one pass, from the buffer sizes ``n`` (elements, keys
    :data:`MEMORY_BUFFERS` and, for the backward passes, :data:`BACKWARD_BUFFERS`;
    ``*kernel`` in bytes; numpy arrays or ints) and the precision ``p``.

    **forward** (:func:`parconv.runtime.execute.execute`): the phases of the overlapped
    order (the runtime's default); every live set of the sequential order is contained in
    one of them, so the peak bounds both. The owned input and filter blocks are the
    caller's and live throughout; the gathered filter (``filter``) is allocated first, its
    allgather in flight while the input is gathered and the halo packed; the halo's send
    and receive buffers (``halo_send``, ``halo_recv``, one each: packed straight into the
    MPI buffer) stay alive while the interior of the output is computed; the
    reduce-scatter's result (``recv``) and the MPI library's temporary
    (``mpi_reduce_scatter``) are alive while later tiles are computed. A collective over
    one rank moves nothing and allocates nothing: ``allgather_send`` and ``gathered``
    (``P_k = 1``: the owned block is read in place), ``filter`` (``P_b·P_h·P_w = 1``: the
    owned block is used in place), ``recv`` and ``mpi_reduce_scatter`` (``P_c = 1``) are
    then zero. ``result`` is the accumulator-precision result block during the cast.
    ``mpi_reduce_scatter`` is MPICH's temporary (its reduce-scatter receives into a buffer
    of the result block's size; measured, ``bench/results/memory.md``).

    **step** (:class:`parconv.runtime.DistributedConv2d` forward then backward): the
    forward's phases, the gathered filter and (``keep_window``) the input window kept
    after the local convolution; then, with the output block and the caller's dOut block
    alive, the backward phases of :mod:`parconv.runtime.backward` (dOut allgather and its
    transposition, dgrad, the halo sent back, the k-fiber reduce-scatter, the cast,
    wgrad, the b·h·w reduce-scatter), each on top of what is kept: the gathered dOut
    until the end, the delivered input gradient from its cast on. Without
    ``keep_window`` the window is gathered again before wgrad (``recompute_*`` phases,
    the forward's live sets on top of the backward's).

    **dgrad** alone: the owned filter and dOut blocks, the filter allgather, then the
    backward phases up to the cast. **wgrad** alone: the owned input and dOut blocks, the
    forward's input allgather and halo phases, then the dOut allgather, wgrad and the
    b·h·w reduce-scatter with the window kept.
    """
    pi, pf, pa, po = p.p_input, p.p_filter, p.p_accum, p.p_output

    halo = n["halo_send"] + n["halo_recv"]

    def gather_input(base):   # steps 1-2 alone (the window of wgrad alone, recompute)
        return {
            "input_allgather": base + pi * (n["allgather_send"] + n["gathered"]),
            "halo_pack": base + pi * (n["gathered"] + n["window"] + halo),
        }

    if pass_ == "forward":
        base = pi * n["owned_input"] + pf * n["owned_filter"]
        return {
            "input_allgather": base + pi * (n["allgather_send"] + n["gathered"])
            + pf * n["filter"],
            "halo_pack": base + pi * (n["gathered"] + n["window"] + halo) + pf * n["filter"],
            "compute": base + pi * (n["window"] + halo) + pf * n["filter"] + 8 * n["kernel"]
            + pa * (n["partial"] + n["recv"] + n["mpi_reduce_scatter"]),
            "output_reduce_scatter": base + pa * (n["partial"] + n["recv"]
                                                  + n["mpi_reduce_scatter"]),
            "cast": base + pa * n["result"] + po * n["output"],
        }

    def grad_output(base):
        return {"grad_output_allgather": base + po * (n["go_send"] + n["go_gathered"]),
                "grad_output_transpose": base + po * (n["go_gathered"] + n["go"])}

    def dgrad(base):   # base includes the gathered dOut and the filter
        return {
            "compute_dgrad": base + pa * n["dwindow"] + 8 * n["dgrad_kernel"],
            "grad_input_halo_pack": base + pa * (n["dwindow"] + n["dhalo_send"] + n["dplane"]),
            "grad_input_halo_exchange": base + pa * (2 * n["dhalo_send"] + n["dhalo_recv"]
                                                     + n["dplane"]),
            "grad_input_reduce_scatter": base + pa * (n["dplane"] + n["drs_recv"]
                                                      + n["mpi_drs"]),
            "cast_grad_input": base + pa * n["dresult"] + pi * n["grad_input"],
        }

    def wgrad(base):   # base includes the gathered dOut and the window
        return {
            "compute_wgrad": base + pa * n["dfilter"] + 8 * n["wgrad_kernel"],
            "grad_filter_reduce_scatter": base + pa * (n["dfilter"] + n["dfrs_recv"]
                                                       + n["mpi_dfrs"]),
        }

    win, filt, go = pi * n["window"], pf * n["filter"], po * n["go"]
    if pass_ == "dgrad":
        base = pf * n["owned_filter"] + po * n["grad_output"]
        return {"filter_allgather": base + filt, **grad_output(base + filt),
                **dgrad(base + filt + go)}
    if pass_ == "wgrad":
        base = pi * n["owned_input"] + po * n["grad_output"]
        return {**gather_input(base), **grad_output(base + win), **wgrad(base + win + go)}
    if pass_ != "step":
        raise ValueError(f"unknown pass {pass_!r}: expected forward, dgrad, wgrad or step")
    fwd = memory_phases(p, n, "forward")
    kept = (win if keep_window else 0) + filt
    for ph in ("output_reduce_scatter", "cast"):
        fwd[ph] = fwd[ph] + kept
    base = (pi * n["owned_input"] + pf * n["owned_filter"] + po * n["output"]
            + po * n["grad_output"] + kept)
    phases = {**fwd, **grad_output(base), **dgrad(base + go)}
    held = base + go + pi * n["grad_input"]
    if not keep_window:
        phases.update({"recompute_" + k: v for k, v in gather_input(held).items()})
    phases.update(wgrad(held + (0 if keep_window else win)))
    return phases


def peak_memory_bits(p, n: dict, pass_: str = "forward", keep_window: bool = True):
    """Peak bits of a rank: the maximum over phases of the live set (:func:`memory_phases`)."""
    return np.maximum.reduce(list(memory_phases(p, n, pass_, keep_window).values()))


def kernel_direct(spec: ConvSpec, out_h, out_w, need_h, need_w, input_dtype: str | None = None):
    """Whether the local kernel takes its 1x1 stride-1 in-place path (no packing panel):
    1x1 filter, stride 1, every output row and column of the block reading an input
    inside the window (``need == out``), and either integer operands (the SIMD kernel
    interleaves ``x`` itself; :func:`parconv.kernels.window.workspace_bytes` applies it
    only to that kernel) or a float32/float64 input equal to the accumulator with at
    least :data:`parconv.kernels.window.DIRECT_MIN_COLS` output pixels per image."""
    from .. import dtypes
    from ..kernels.window import DIRECT_MIN_COLS

    p = spec.precision
    read = p.input if input_dtype is None else input_dtype
    same = dtypes.numpy_dtype(read) == dtypes.numpy_dtype(p.accum) and not p.is_integer
    if not (spec.R == 1 and spec.S == 1 and tuple(spec.stride) == (1, 1)
            and (same or p.is_integer)):
        return np.zeros(np.broadcast(out_h, out_w).shape, dtype=bool)
    inside = (np.asarray(need_h) == out_h) & (np.asarray(need_w) == out_w)
    return inside if p.is_integer else inside & (np.asarray(out_h) * out_w >= DIRECT_MIN_COLS)


def kernel_workspace_bytes(spec: ConvSpec, b, k_blk, c_blk, out_h, out_w, need_h, need_w):
    """Bytes the local kernel allocates for a block (one worker; vectorised)."""
    from .. import dtypes
    from ..kernels.window import workspace_bytes

    p = spec.precision
    ws = workspace_bytes(b, k_blk, c_blk, out_h, out_w, spec.R, spec.S,
                         dtypes.numpy_dtype(p.input), dtypes.numpy_dtype(p.filter),
                         kernel_direct(spec, out_h, out_w, need_h, need_w))
    return np.where(np.asarray(need_h) * need_w == 0, 0, ws)


def rank_memory_buffers(spec: ConvSpec, grid: Grid, rank: int,
                        pass_: str = "forward") -> dict[str, int]:
    """Element count of every buffer a rank holds (keys :data:`MEMORY_BUFFERS`, and
    :data:`BACKWARD_BUFFERS` for a pass other than ``forward``; ``kernel``: the local
    kernel's workspace in bytes, one worker).

    The owned filter block is counted at the largest size along its fiber,
    ``ceil(k_blk / (P_b·P_h·P_w))`` rows (at most one row of ``C_blk·R·S`` more than a
    rank holds), so that memory stays a function of the block classes of the planner.
    """
    me = layout(spec, grid, rank)
    (r0, r1), (c0, c1) = me.need_window
    b, c_blk, k_blk = _len(me.batch), _len(me.in_channels), _len(me.out_channels)
    c_own = _len(me.input_channels_owned)
    q = grid.b * grid.h * grid.w
    used = len(me.own_used_rows) * len(me.own_used_cols)
    halo = halo_counts(spec, grid, rank)
    h, w = _len(me.out_rows), _len(me.out_cols)
    bhw = b * h * w
    k_o = _len(me.output_out_channels_owned)
    n = {
        "owned_input": math.prod(me.input_owned_shape),
        "owned_filter": -(-k_blk // q) * c_blk * spec.R * spec.S,
        "allgather_send": b * c_own * used if grid.k > 1 else 0,
        "gathered": b * c_blk * used if grid.k > 1 else 0,
        "window": b * c_blk * (r1 - r0) * (c1 - c0),
        "halo_send": sum(s for _, s in halo.values()),
        "halo_recv": sum(r for r, _ in halo.values()),
        "filter": k_blk * c_blk * spec.R * spec.S if q > 1 else 0,
        "kernel": int(kernel_workspace_bytes(spec, b, k_blk, c_blk, h, w, len(me.need_rows),
                                             len(me.need_cols))),
        "partial": k_blk * bhw,
        "recv": k_o * bhw if grid.c > 1 else 0,
        "mpi_reduce_scatter": k_o * bhw if grid.c > 1 else 0,
        "result": k_o * bhw,
        "output": k_o * bhw,
    }
    if pass_ == "forward":
        return n
    c, k = grid.c > 1, grid.k > 1
    plane = b * c_blk * used
    n.update({
        "grad_output": k_o * bhw, "go_send": k_o * bhw * c, "go_gathered": k_blk * bhw * c,
        "go": k_blk * bhw * c, "dwindow": n["window"], "dhalo_send": n["halo_recv"],
        "dhalo_recv": n["halo_send"], "dplane": plane, "drs_recv": b * c_own * used * k,
        "mpi_drs": b * c_own * used * k, "dresult": b * c_own * used,
        "grad_input": n["owned_input"], "dfilter": k_blk * c_blk * spec.R * spec.S,
        "dfrs_recv": n["owned_filter"] * (q > 1), "mpi_dfrs": n["owned_filter"] * (q > 1),
    })
    n.update({key: int(v) for key, v in backward_kernel_bytes(
        spec, b, k_blk, c_blk, h, w, r1 - r0, c1 - c0, len(me.need_rows),
        len(me.need_cols)).items()})
    return n


def backward_kernel_bytes(spec: ConvSpec, b, k_blk, c_blk, out_h, out_w, win_h, win_w,
                          need_h, need_w) -> dict:
    """``{"dgrad_kernel", "wgrad_kernel"}``: bytes the local backward kernels allocate for
    a block (one worker; vectorised): :func:`parconv.kernels.backward.dgrad_workspace_bytes`
    and ``wgrad_workspace_bytes`` with their 1x1 stride-1 in-place paths decided as the
    kernels decide them (the forward's :func:`kernel_direct` condition, with the output
    gradient's dtype for dgrad)."""
    from .. import dtypes
    from ..kernels.backward import dgrad_workspace_bytes, wgrad_workspace_bytes

    p = spec.precision
    xd, wd, gd = (dtypes.numpy_dtype(t) for t in (p.input, p.filter, p.output))
    direct_w = kernel_direct(spec, out_h, out_w, need_h, need_w)
    same = np.dtype(gd) == np.dtype(dtypes.numpy_dtype(p.accum))
    direct_d = kernel_direct(spec, out_h, out_w, need_h, need_w, input_dtype=p.output) & same
    args = (b, k_blk, c_blk, out_h, out_w, spec.R, spec.S, win_h, win_w)
    return {"dgrad_kernel": dgrad_workspace_bytes(*args, spec.stride, gd, wd, direct_d),
            "wgrad_kernel": wgrad_workspace_bytes(*args, xd, gd, direct_w)}


def rank_memory_bytes(spec: ConvSpec, grid: Grid, rank: int, pass_: str = "forward",
                      keep_window: bool = True) -> int:
    """Peak bytes a rank holds during a run: the maximum over the phases of the runtime
    of the buffers alive in that phase (:func:`memory_phases`), from the owned operand
    blocks to the output block, the local kernel's workspace included. The Python
    interpreter, numba and MPI library themselves are not included (a constant per
    process, measured in ``bench/results/memory.md``).
    With ``pass_`` (``dgrad``, ``wgrad``, ``step``) the phases of that pass
    (:func:`memory_phases`)."""
    n = rank_memory_buffers(spec, grid, rank, pass_)
    return int(peak_memory_bits(spec.precision, n, pass_, keep_window)) // 8
