"""Run a :class:`~parconv.network.plan.NetworkPlan` under MPI: every layer on the layout
the plan gives it, every redistribution as one counted collective.

:class:`NetworkRunner` is built once (communicators, convolution schedules, MPI
datatypes, local weight blocks) and then runs the network as often as wanted
(:meth:`NetworkRunner.run`); each rank holds only its blocks throughout:

* **convolution / fc**: a :class:`parconv.runtime.DistributedConv2d` (no gradients) on a
  communicator whose ranks follow the placement's rank order (``comm.Split(0, key)``,
  ``key`` = the rank's row-major ``bkchw`` grid position), the folded filter's block and
  the folded bias added to the owned output block in float32, then rounded once to the
  activation type.
* **redistribution** (a layer's input in another layout than its producer left it):
  one ``MPI_Alltoallw`` per transition whose per-peer datatypes select the sent and
  received blocks in place (per axis, runs of the rank's local index set; no hand
  packing), the kept block copied locally. Counted: the sizes of the datatypes handed to
  MPI.
* **max / average / adaptive pooling**: on the layout it receives; one ``Alltoallw`` halo
  exchange within the rank's (batch, channel) group (diagonal peers included) of exactly
  the inputs its output block's windows read, then the local window kernel of
  :mod:`parconv.network.reference`.
* **global average pool**: float32 partial sums over the rank's block, one
  ``Reduce_scatter`` over the ``m_h·m_w`` ranks sharing its (batch, channel) block.
* **relu, add, concat, flatten**: local (an add's and a concat's inputs were
  redistributed to the planned layout first).

Activations are freed after their last reader ran. Measured bytes per layer and per
redistribution are kept in :attr:`NetworkRunner.stats` beside the planned ones
(:meth:`NetworkRunner.planned`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from .. import dtypes
from .graph import WINDOW_OPS, Graph
from .layout import Layout, block_index
from .plan import LayerPlan, NetworkPlan
from .redistribute import Redistribution
from .reference import (
    activation_dtype,
    add_arrays,
    check_network_precision,
    finish,
    relu,
    window_block,
)
from .weights import check_weights, folded

Range = tuple[int, int]


# -- MPI datatypes over local index sets -----------------------------------------------------
def _runs(pos: np.ndarray) -> tuple[list[int], list[int]]:
    """Maximal runs of consecutive positions: (starts, lengths)."""
    if pos.size == 0:
        return [], []
    cut = np.flatnonzero(np.diff(pos) != 1) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [pos.size]])
    return pos[starts].tolist(), (ends - starts).tolist()


def block_datatype(shape: tuple[int, ...], positions: tuple[np.ndarray, ...], itemsize: int):
    """A committed MPI datatype selecting ``a[np.ix_(*positions)]`` of a C-ordered array
    ``a`` of ``shape`` with ``itemsize``-byte elements (offset 0 = the array's start):
    per axis an ``hindexed`` type over the runs of that axis's positions, nested from
    the last axis out. Its size is the selection's bytes."""
    from mpi4py import MPI

    strides = [itemsize * int(np.prod(shape[a + 1:], dtype=np.int64)) for a in range(len(shape))]
    t = None
    for a in range(len(shape) - 1, -1, -1):
        starts, lens = _runs(np.asarray(positions[a], np.int64))
        if t is None:
            new = MPI.BYTE.Create_hindexed([n * itemsize for n in lens],
                                           [s * itemsize for s in starts])
        else:
            inner = t.Create_resized(0, strides[a])
            new = inner.Create_hindexed(lens, [s * strides[a] for s in starts])
            inner.Free()
            t.Free()
        t = new
    t.Commit()
    return t


def _positions(mine: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions in the sorted index set ``mine`` of the elements of ``mine ∩ wanted``."""
    return np.flatnonzero(np.isin(mine, wanted, assume_unique=True))


@dataclass
class Exchange:
    """One ``Alltoallw`` of a rank: per-peer datatypes into/out of local arrays, the kept
    part copied locally, bytes counted from the datatypes' sizes."""

    procs: int
    send_types: dict[int, object] = field(default_factory=dict)
    recv_types: dict[int, object] = field(default_factory=dict)
    keep_src: tuple[np.ndarray, ...] | None = None
    keep_dst: tuple[np.ndarray, ...] | None = None

    @property
    def send_bytes(self) -> int:
        return sum(t.Get_size() for t in self.send_types.values())

    @property
    def recv_bytes(self) -> int:
        return sum(t.Get_size() for t in self.recv_types.values())

    def run(self, comm, name: str, src: np.ndarray, dst: np.ndarray) -> tuple[int, int]:
        """Move ``src``'s parts into the peers' ``dst`` (collective); returns the
        (recv, send) bytes handed to MPI."""
        from mpi4py import MPI

        from ..runtime.exchange import Pending

        if self.keep_src is not None:
            dst[np.ix_(*self.keep_dst)] = src[np.ix_(*self.keep_src)]
        if self.procs == 1:
            return 0, 0
        zero = [0] * self.procs
        sc, rc = list(zero), list(zero)
        st, rt = [MPI.BYTE] * self.procs, [MPI.BYTE] * self.procs
        for j, t in self.send_types.items():
            sc[j], st[j] = 1, t
        for j, t in self.recv_types.items():
            rc[j], rt[j] = 1, t
        sb = src.reshape(-1).view(np.uint8) if src.size else np.empty(0, np.uint8)
        rb = dst.reshape(-1).view(np.uint8) if dst.size else np.empty(0, np.uint8)
        bufs = ([sb, (sc, zero), st], [rb, (rc, zero), rt])
        # non-blocking and waited for (under the deadline when one is set)
        Pending(comm, name, f"{name} (Alltoallw)", lambda: comm.Ialltoallw(*bufs),
                keep=(sb, rb)).wait()
        return self.recv_bytes, self.send_bytes

    def free(self) -> None:
        for t in (*self.send_types.values(), *self.recv_types.values()):
            t.Free()
        self.send_types, self.recv_types = {}, {}


def local_shape(layout: Layout, rank: int) -> tuple[int, int, int, int]:
    """Shape of ``rank``'s block of ``layout`` (its sorted index sets' sizes)."""
    j = layout.block_of_rank[rank]
    return tuple(int(layout.sizes[a][j[a]]) for a in range(4))


Positions = tuple[np.ndarray, ...]


@dataclass
class ExchangePlan:
    """One rank's side of an exchange without MPI: per peer, the positions (per axis, in
    the rank's local arrays) it sends and receives, and the kept part."""

    procs: int
    src_shape: tuple[int, ...]
    dst_shape: tuple[int, ...]
    itemsize: int
    send: dict[int, Positions] = field(default_factory=dict)
    recv: dict[int, Positions] = field(default_factory=dict)
    keep_src: Positions | None = None
    keep_dst: Positions | None = None

    def add(self, peer: int, out: Positions, inc: Positions) -> None:
        if all(p.size for p in out):
            self.send[peer] = out
        if all(p.size for p in inc):
            self.recv[peer] = inc

    def elems(self, which: str) -> dict[int, int]:
        """``{peer: elements}`` sent (``"send"``) or received (``"recv"``)."""
        return {j: int(np.prod([p.size for p in pos])) for j, pos in getattr(self, which).items()}

    @property
    def send_bytes(self) -> int:
        return sum(self.elems("send").values()) * self.itemsize

    @property
    def recv_bytes(self) -> int:
        return sum(self.elems("recv").values()) * self.itemsize

    def build(self) -> Exchange:
        """The MPI datatypes of this exchange (committed)."""
        return Exchange(self.procs,
                        {j: block_datatype(self.src_shape, p, self.itemsize)
                         for j, p in self.send.items()},
                        {j: block_datatype(self.dst_shape, p, self.itemsize)
                         for j, p in self.recv.items()},
                        self.keep_src, self.keep_dst)


def redistribution_exchange(src: Layout, dst: Layout, rank: int, itemsize: int) -> ExchangePlan:
    """This rank's side of the redistribution ``src -> dst`` (built from the two layouts'
    index sets, independently of :class:`Redistribution`'s counts)."""
    ex = ExchangePlan(src.procs, local_shape(src, rank), local_shape(dst, rank), itemsize)
    s_me, d_me = src.indices(rank), dst.indices(rank)
    for peer in range(src.procs):
        d_peer, s_peer = dst.indices(peer), src.indices(peer)
        if peer == rank:
            ex.keep_src = tuple(_positions(s_me[a], d_me[a]) for a in range(4))
            ex.keep_dst = tuple(_positions(d_me[a], s_me[a]) for a in range(4))
            continue
        ex.add(peer, tuple(_positions(s_me[a], d_peer[a]) for a in range(4)),
               tuple(_positions(d_me[a], s_peer[a]) for a in range(4)))
    return ex


def _need(windows: np.ndarray, n_out: int, parts: int, j: int) -> np.ndarray:
    """Sorted distinct inputs read by output block ``j`` (balanced blocks of ``n_out``)."""
    q, rem = divmod(n_out, parts)
    lo = j * q + min(j, rem)
    hi = lo + q + (j < rem)
    if hi <= lo:
        return np.zeros(0, np.int64)
    w = windows[lo:hi]
    return np.unique(np.concatenate([np.arange(a, b) for a, b in w]))


@dataclass
class WindowStep:
    """A pooling layer on one rank: its halo exchange and the local window."""

    exchange: ExchangePlan
    origin: tuple[int, int]
    window_shape: tuple[int, int, int, int]
    out_rows: Range
    out_cols: Range


def window_step(node, in_hw: tuple[int, int], src: Layout, out: Layout, rank: int,
                itemsize: int) -> WindowStep:
    """Halo exchange of a window op on ``src`` (costs.window_cost's counting): rank ``r``
    receives every input its output block's windows read from the owners in its
    (batch, channel) group, into a window over the hull of those inputs."""
    wins = node.windows((src.shape[1], *in_hw))
    mb, mc, mh, mw = src.blocks
    jb, jc, jh, jw = (int(v) for v in src.block_of_rank[rank])
    need = [[_need(wins[i], out.shape[2 + i], (mh, mw)[i], j) for j in range((mh, mw)[i])]
            for i in range(2)]
    me = src.indices(rank)
    nr, nc = need[0][jh], need[1][jw]
    r0 = int(nr[0]) if nr.size else 0
    c0 = int(nc[0]) if nc.size else 0
    wshape = (me[0].size, me[1].size, int(nr[-1]) + 1 - r0 if nr.size else 0,
              int(nc[-1]) + 1 - c0 if nc.size else 0)
    ex = ExchangePlan(src.procs, local_shape(src, rank), wshape, itemsize)
    allb, allc = np.arange(me[0].size), np.arange(me[1].size)
    for ih in range(mh):
        for iw in range(mw):
            peer = int(src.rank_of[jb, jc, ih, iw])
            p_idx = src.indices(peer)
            if peer == rank:
                rows, cols = np.intersect1d(me[2], nr), np.intersect1d(me[3], nc)
                ex.keep_src = (allb, allc, _positions(me[2], nr), _positions(me[3], nc))
                ex.keep_dst = (allb, allc, rows - r0, cols - c0)
                continue
            # sent: this rank's inputs the peer's windows read; received: the peer's
            # inputs this rank's windows read
            rows, cols = np.intersect1d(p_idx[2], nr), np.intersect1d(p_idx[3], nc)
            ex.add(peer, (allb, allc, _positions(me[2], need[0][ih]),
                          _positions(me[3], need[1][iw])),
                   (allb, allc, rows - r0, cols - c0))
    orow, ocol = out.indices(rank)[2:]
    rng = ((int(orow[0]), int(orow[-1]) + 1) if orow.size else (0, 0),
           (int(ocol[0]), int(ocol[-1]) + 1) if ocol.size else (0, 0))
    return WindowStep(ex, (r0, c0), wshape, *rng)


def reduce_step(src: Layout, rank: int) -> SimpleNamespace:
    """A global average pool's reduce-scatter on one rank: its group colour and
    position, the per-member element counts (channel-major ``(c, b)`` blocks)."""
    mb, mc, mh, mw = src.blocks
    jb, jc, jh, jw = (int(v) for v in src.block_of_rank[rank])
    q, t = mh * mw, jh * mw + jw
    cblk, bb = int(src.sizes[1][jc]), int(src.sizes[0][jb])
    sub = np.bincount(block_index(np.arange(cblk), cblk, q), minlength=q)
    return SimpleNamespace(color=jb * mc + jc, q=q, t=t, b=bb, sub=int(sub[t]),
                           counts=tuple(int(s) * bb for s in sub),
                           hw=src.shape[2] * src.shape[3])


@dataclass
class LayerStats:
    """What one rank measured in one layer: (recv, send) bytes of the layer's own step
    and of each input's redistribution, and seconds."""

    layer: tuple[int, int] = (0, 0)
    redistributions: dict[str, tuple[int, int]] = field(default_factory=dict)
    seconds: float = 0.0


class NetworkRunner:
    """A network plan ready to run on this rank (collective construction).

    Parameters
    ----------
    graph : the layer graph the plan was made for.
    plan : its :class:`NetworkPlan` (``plan.procs`` = ranks of ``comm``).
    weights : every parameter (torchvision names, :mod:`parconv.network.weights`); each
        rank keeps only its folded filter and bias blocks.
    comm : communicator (default ``MPI.COMM_WORLD``).
    timeout : optional deadline in seconds on every collective.
    abort_on_error : an exception on a rank during a run aborts the job naming the rank.

    Raises
    ------
    ValueError
        On every rank, before any communication, when the plan does not fit the graph or
        the communicator, the precision is not supported or a weight is missing.
    """

    def __init__(self, graph: Graph, plan: NetworkPlan, weights: dict[str, np.ndarray],
                 comm=None, *, timeout: float | None = None,
                 abort_on_error: bool = True) -> None:
        from ..runtime.deadline import check_timeout

        if comm is None:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
        # -- validation: same arguments on every rank, same verdict, no communication ----
        check_network_precision(plan.precision)
        check_timeout(timeout)
        if plan.procs != comm.Get_size():
            raise ValueError(f"the plan is for {plan.procs} ranks, the job has "
                             f"{comm.Get_size()}")
        if [lp.name for lp in plan.layers] != list(graph.nodes):
            raise ValueError("the plan's layers are not the graph's nodes")
        check_weights(graph, weights)
        for lp in plan.layers:
            for lay in (*lp.in_layouts, lp.out_layout):
                if not lay.is_partition():
                    raise ValueError(f"{lp.name}: layout {lay.label} is not a partition")
        self.graph, self.plan, self.timeout = graph, plan, timeout
        self.abort_on_error = abort_on_error
        self.rank = comm.Get_rank()
        self.act = activation_dtype(plan.precision)
        self.itemsize = self.act.itemsize
        self.fdt = dtypes.numpy_dtype(plan.precision.filter)
        order = list(graph.nodes)
        cons = graph.consumers()
        self.last_use = {n: max((order.index(c) for c in cons[n]), default=len(order))
                         for n in order}
        self.stats: dict[str, LayerStats] = {}
        self.builds = 0
        from contextlib import nullcontext

        from ..runtime.deadline import collective_timeout
        from ..runtime.errors import abort_on_exception

        guard = abort_on_exception(comm) if abort_on_error else nullcontext()
        with guard, collective_timeout(timeout):
            self._build(comm, weights)

    # -- construction ----------------------------------------------------------------
    def _build(self, comm, weights) -> None:
        from ..runtime.api import block_ranges
        from ..runtime.layer import DistributedConv2d

        rank = self.rank
        self.comm = comm.Dup()                     # the redistributions' communicator
        self.steps: dict[str, object] = {}
        self.redists: dict[tuple[str, str], Exchange] = {}
        self._comms: list = []
        producers = {lp.name: lp for lp in self.plan.layers}
        for lp in self.plan.layers:
            node = self.graph[lp.name]
            for x, r in lp.redistributions.items():
                src = producers[x].out_layout
                if src != r.src:
                    raise ValueError(f"{lp.name}: redistribution of {x} starts from "
                                     f"{r.src.label}, not {src.label}")
                self.redists[(lp.name, x)] = redistribution_exchange(
                    r.src, r.dst, rank, self.itemsize).build()
            if node.is_conv:
                pl, spec = lp.placement, lp.spec
                key = np.empty(pl.procs, np.int64)
                key[pl.world_ranks().ravel()] = np.arange(pl.procs)
                sub = comm.Split(0, int(key[rank]))
                self._comms.append(sub)
                layer = DistributedConv2d(spec, pl.grid, sub, requires_grad=False,
                                          abort_on_error=self.abort_on_error,
                                          timeout=self.timeout)
                cart = layer.rank
                want = block_ranges(spec, pl.grid, cart, "input")
                have = lp.in_layouts[0].indices(rank)
                if any(not np.array_equal(h, np.arange(lo, hi)) for h, (lo, hi) in zip(have, want)):
                    raise AssertionError(f"{lp.name}: the planned conv input layout is not the "
                                         f"layer's input block {want} on rank {rank}")
                w, b = folded(node, weights)
                fr = block_ranges(spec, pl.grid, cart, "filter")
                orr = block_ranges(spec, pl.grid, cart, "output")[1]
                wl = np.ascontiguousarray(w[tuple(slice(lo, hi) for lo, hi in fr)], self.fdt)
                self.steps[lp.name] = SimpleNamespace(layer=layer, w=wl,
                                                      b=b[orr[0]:orr[1]].astype(np.float32))
                self.builds += 1
            elif node.op in WINDOW_OPS:
                in_hw = self.graph.in_shape(lp.name)[1:]
                ws = window_step(node, in_hw, lp.in_layouts[0], lp.out_layout, rank,
                                 self.itemsize)
                self.steps[lp.name] = SimpleNamespace(
                    exchange=ws.exchange.build(), origin=ws.origin,
                    window_shape=ws.window_shape, out_rows=ws.out_rows, out_cols=ws.out_cols)
            elif node.op == "global_avgpool":
                rs = reduce_step(lp.in_layouts[0], rank)
                rs.comm = comm.Split(rs.color, rs.t)
                self._comms.append(rs.comm)
                self.steps[lp.name] = rs
                if local_shape(lp.out_layout, rank) != (rs.b, rs.sub, 1, 1):
                    raise AssertionError(f"{lp.name}: reduce-scatter block does not match "
                                         "the planned output layout")

    # -- running -------------------------------------------------------------------------
    def input_block(self, x_global: np.ndarray) -> np.ndarray:
        """This rank's block of a global network input (in the activation type)."""
        lay = self.plan.layers[0].out_layout
        return finish(np.asarray(x_global)[np.ix_(*lay.indices(self.rank))], self.act)

    def output_layout(self) -> Layout:
        """The layout of :meth:`run`'s result."""
        return self.plan.layers[-1].out_layout

    def run(self, x_local: np.ndarray) -> np.ndarray:
        """Run the network on this rank's input block (collective); returns this rank's
        block of the network output (float32, the output layout)."""
        from contextlib import nullcontext

        from ..runtime.deadline import collective_timeout
        from ..runtime.errors import abort_on_exception

        first = self.plan.layers[0]
        want = local_shape(first.out_layout, self.rank)
        if tuple(np.shape(x_local)) != want:
            raise ValueError(f"input block has shape {tuple(np.shape(x_local))}, expected {want}")
        guard = abort_on_exception(self.comm) if self.abort_on_error else nullcontext()
        with guard, collective_timeout(self.timeout):
            return self._run(x_local)

    def _run(self, x_local: np.ndarray) -> np.ndarray:
        acts: dict[str, np.ndarray] = {}
        self.stats = {}
        for pos, lp in enumerate(self.plan.layers):
            t0 = time.perf_counter()
            st = self.stats[lp.name] = LayerStats()
            if lp.op == "input":
                acts[lp.name] = finish(x_local, self.act)
                st.seconds = time.perf_counter() - t0
                continue
            ins = []
            for x, lay in zip(lp.inputs, lp.in_layouts):
                ex = self.redists.get((lp.name, x))
                if ex is None:
                    ins.append(acts[x])
                    continue
                dst = np.empty(local_shape(lay, self.rank), self.act)
                st.redistributions[x] = ex.run(self.comm, f"{lp.name} redistribution of {x}",
                                               np.ascontiguousarray(acts[x]), dst)
                ins.append(dst)
            acts[lp.name] = self._layer(lp, ins, st)
            del ins
            for x in lp.inputs:                      # free what no later layer reads
                if self.last_use[x] <= pos and x in acts:
                    del acts[x]
            st.seconds = time.perf_counter() - t0
        return acts[self.plan.layers[-1].name]

    def _layer(self, lp: LayerPlan, ins: list[np.ndarray], st: LayerStats) -> np.ndarray:
        from ..runtime.exchange import Counters, reduce_scatter

        node = self.graph[lp.name]
        step = self.steps.get(lp.name)
        last = self.last_use[lp.name] >= len(self.plan.layers)
        if node.is_conv:
            out = step.layer.forward(np.ascontiguousarray(ins[0]), step.w)
            st.layer = tuple(int(sum(v[i] for v in step.layer.measured().values()))
                             for i in (0, 1))
            z = out.astype(np.float32, copy=False)
            z += step.b[None, :, None, None]
            return z if last else finish(z, self.act)
        if node.op == "relu":
            return relu(ins[0])
        if node.op in WINDOW_OPS:
            win = np.zeros(step.window_shape, self.act)
            st.layer = step.exchange.run(self.comm, f"{lp.name} halo",
                                         np.ascontiguousarray(ins[0]), win)
            in_hw = self.graph.in_shape(lp.name)[1:]
            return finish(window_block(node, in_hw, win, step.origin, step.out_rows,
                                       step.out_cols), self.act)
        if node.op == "global_avgpool":
            part = np.ascontiguousarray(ins[0].astype(np.float32).sum(axis=(2, 3)).T)  # (c, b)
            if step.q == 1:
                red = part
            else:
                red = np.empty(step.counts[step.t], np.float32)
                c = Counters()
                sched = SimpleNamespace(op=lp.name, counts=step.counts, index=step.t)
                reduce_scatter(step.comm, sched, part.reshape(-1), red, c)
                st.layer = (c.recv_bytes, c.send_bytes)
            b = ins[0].shape[0]
            red = red.reshape(-1, b).T / np.float32(step.hw)
            return finish(red[:, :, None, None], self.act)
        if node.op == "add":
            return add_arrays(ins, self.act)
        if node.op == "concat":
            return np.concatenate(ins, axis=1)
        if node.op == "flatten":
            return ins[0].reshape(ins[0].shape[0], -1, 1, 1)
        raise ValueError(f"{lp.name}: unsupported op {node.op!r}")

    # -- accounting ---------------------------------------------------------------------
    def planned(self) -> dict[str, LayerStats]:
        """This rank's planned (recv, send) bytes per layer and redistribution."""
        r = self.rank
        out = {}
        for lp in self.plan.layers:
            out[lp.name] = LayerStats(
                (int(lp.step.recv[r]), int(lp.step.send[r])),
                {x: (int(red.recv_bytes[r]), int(red.send_bytes[r]))
                 for x, red in lp.redistributions.items()})
        return out

    def mismatches(self) -> list[str]:
        """Where the last run's measured bytes differ from the plan (empty: none)."""
        bad = []
        for name, want in self.planned().items():
            got = self.stats.get(name, LayerStats())
            if got.layer != want.layer:
                bad.append(f"{name}: measured {got.layer} != planned {want.layer}")
            for x, v in want.redistributions.items():
                g = got.redistributions.get(x, (0, 0))
                if g != v:
                    bad.append(f"{name} <- {x}: measured {g} != planned {v}")
            for x, g in got.redistributions.items():
                if x not in want.redistributions and g != (0, 0):
                    bad.append(f"{name} <- {x}: measured {g}, none planned")
        return bad

    def free(self) -> None:
        """Release communicators and datatypes."""
        for ex in self.redists.values():
            ex.free()
        for s in self.steps.values():
            if hasattr(s, "exchange"):
                s.exchange.free()
            elif hasattr(s, "layer"):
                s.layer.free()
        for c in self._comms:
            c.Free()
        self.comm.Free()
        self._comms, self.steps, self.redists = [], {}, {}


def gather_layout(layout: Layout, local: np.ndarray, comm, root: int = 0) -> np.ndarray | None:
    """Assemble the global tensor of ``layout`` on ``root`` from every rank's block
    (collective; for checking and saving, not counted); others get None."""
    blocks = comm.gather(np.ascontiguousarray(local), root=root)
    if comm.Get_rank() != root:
        return None
    out = np.empty(layout.shape, local.dtype)
    for r, blk in enumerate(blocks):
        idx = layout.indices(r)
        if blk.shape != tuple(i.size for i in idx):
            raise ValueError(f"rank {r}: block shape {blk.shape} does not match its layout")
        out[np.ix_(*idx)] = blk
    return out


def _check_pairs(name: str, sends: list[dict[int, int]], recvs: list[dict[int, int]],
                 bad: list[str]) -> int:
    """Every message ``r -> r'`` of ``n`` elements must be received by ``r'`` from ``r``
    with ``n`` elements, and nothing else received; returns the number of messages."""
    n = 0
    for r, out in enumerate(sends):
        for peer, cnt in out.items():
            n += 1
            got = recvs[peer].get(r)
            if got != cnt:
                bad.append(f"{name}: rank {r} sends {cnt} elements to rank {peer}, which "
                           f"expects {got}")
    for r, inc in enumerate(recvs):
        for peer in inc:
            if r not in sends[peer]:
                bad.append(f"{name}: rank {r} expects data from rank {peer}, which sends none")
    return n


@dataclass
class NetworkSimulation:
    """Per-rank bytes of every step of a network plan, from every rank's schedules (no
    MPI): ``layers[name] = {"layer": (recv, send), "redistributions": {input: (recv,
    send)}}`` with per-rank int64 arrays; ``mismatches``: schedule inconsistencies and
    differences from the plan's figures (empty when none); ``messages``: point-to-point
    payload transfers counted."""

    procs: int
    layers: dict[str, dict] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    messages: int = 0
    seconds: float = 0.0


def simulate_network(graph: Graph, plan: NetworkPlan, cross_check_ranks: int = 64
                     ) -> NetworkSimulation:
    """Build every rank's part of every step and add up its bytes (see
    :class:`NetworkSimulation`). Convolutions: :func:`parconv.planner.simulate.simulate` of the
    layer on its grid (its own consistency check), permuted to the placement's ranks;
    redistributions: every rank's :meth:`Redistribution.messages`, and for up to
    ``cross_check_ranks`` ranks also the runtime's own exchange (index-set intersections);
    pooling: the runtime's halo exchange of every rank; global pool: its reduce-scatter
    counts. Each is checked message by message (every send has its matching receive)
    and against the plan's per-rank figures."""
    from ..planner.simulate import simulate

    t0 = time.perf_counter()
    P = plan.procs
    sim = NetworkSimulation(P)
    bad = sim.mismatches
    z = np.zeros(P, np.int64)
    prod = {lp.name: lp for lp in plan.layers}
    for lp in plan.layers:
        node = graph[lp.name]
        layer = (z.copy(), z.copy())
        if node.is_conv:
            s = simulate(lp.spec, lp.placement.grid, check=True)
            bad += [f"{lp.name}: {m}" for m in s.mismatches]
            sim.messages += s.messages
            world = lp.placement.world_ranks().ravel()
            layer[0][world], layer[1][world] = s.recv_bytes, s.send_bytes
        elif node.op in WINDOW_OPS:
            in_hw = graph.in_shape(lp.name)[1:]
            steps = [window_step(node, in_hw, lp.in_layouts[0], lp.out_layout, r,
                                 dtypes.numpy_dtype(plan.precision.input).itemsize).exchange
                     for r in range(P)]
            sim.messages += _check_pairs(lp.name, [e.elems("send") for e in steps],
                                         [e.elems("recv") for e in steps], bad)
            layer = (np.array([e.recv_bytes for e in steps]),
                     np.array([e.send_bytes for e in steps]))
        elif node.op == "global_avgpool":
            acc = dtypes.numpy_dtype(plan.precision.accum).itemsize
            steps = [reduce_step(lp.in_layouts[0], r) for r in range(P)]
            groups: dict[int, set] = {}
            for st in steps:
                groups.setdefault(st.color, set()).add((st.counts, st.q))
            bad += [f"{lp.name}: members of group {c} disagree on the counts"
                    for c, v in groups.items() if len(v) != 1]
            layer = (np.array([(st.q - 1) * st.counts[st.t] * acc for st in steps]),
                     np.array([(sum(st.counts) - st.counts[st.t]) * acc for st in steps]))
        red = {}
        for x, r in lp.redistributions.items():
            msgs = [r.messages(k) for k in range(P)]
            sim.messages += _check_pairs(f"{lp.name} <- {x}", [m["send"] for m in msgs],
                                         [m["recv"] for m in msgs], bad)
            recv = np.array([sum(m["recv"].values()) for m in msgs]) * r.elem_bytes
            send = np.array([sum(m["send"].values()) for m in msgs]) * r.elem_bytes
            if P <= cross_check_ranks:
                for k in range(P):
                    ex = redistribution_exchange(prod[x].out_layout, r.dst, k, r.elem_bytes)
                    if ex.elems("send") != msgs[k]["send"] or ex.elems("recv") != msgs[k]["recv"]:
                        bad.append(f"{lp.name} <- {x}: rank {k}'s exchange differs from the "
                                   "plan's messages")
            red[x] = (recv, send)
        for what, (rv, sd), (pr, ps) in [("layer", layer, (lp.step.recv, lp.step.send))] + [
                (f"redistribution of {x}", red[x], (r.recv_bytes, r.send_bytes))
                for x, r in lp.redistributions.items()]:
            if not (np.array_equal(rv, pr) and np.array_equal(sd, ps)):
                bad.append(f"{lp.name}: {what}: simulated bytes differ from the plan's")
        sim.layers[lp.name] = {"layer": layer, "redistributions": red}
    sim.seconds = time.perf_counter() - t0
    return sim


def check_plan_runnable(plan: NetworkPlan, graph: Graph) -> None:
    """Checks a runner makes before any communication (also for ``net simulate``)."""
    check_network_precision(plan.precision)
    for lp in plan.layers:
        node = graph[lp.name]
        if node.op not in ("input", "conv", "fc", "relu", "add", "concat", "flatten",
                           "global_avgpool", *WINDOW_OPS):
            raise ValueError(f"{lp.name}: unsupported op {node.op!r}")


__all__ = ["NetworkRunner", "Exchange", "ExchangePlan", "NetworkSimulation", "simulate_network",
           "check_plan_runnable", "block_datatype", "redistribution_exchange",
           "window_step", "gather_layout", "local_shape", "LayerStats", "Redistribution"]
