"""Run the runtime's communication schedule for every virtual rank, without data or MPI.

:func:`simulate` calls :func:`parconv.planner.schedule.build_schedule` — the very
schedule the MPI executor follows — for each of the ``P`` ranks of a grid, adds up the
payload bytes per rank and per operation, and checks that the schedules are mutually
consistent: every member of a communicator sees the same member list in the same order
at its own position, and what rank ``a`` sends to ``b`` in an operation equals what
``b`` expects to receive from ``a`` (allgather / reduce-scatter block sizes agree,
alltoallv send and receive counts are transposes). A mismatch is an error: an MPI run of
that schedule would truncate a message or hang.

Because the executor counts the bytes of exactly these messages, the simulated per-rank
bytes equal a real run's measured bytes (tested against ``mpiexec`` runs).

At large P, schedules are built for one rank per block class and derived for the others
(:func:`_schedules_by_class`; exact, and checked against building every rank in tests).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..spec import ConvSpec
from .partition import GRID_AXES, Grid, check_grid


@dataclass
class Simulation:
    """Per-rank bytes of one layer on one grid.

    Attributes
    ----------
    spec, grid : the layer and the grid.
    recv, send : ``{op: int64 array over ranks}`` payload bytes received / sent, for the
        operations of ``pass_`` in execution order.
    mismatches : schedule inconsistencies found (empty when consistent).
    messages : number of point-to-point payload transfers (pairs with bytes > 0).
    elapsed_s : wall time of the simulation.
    pass_ : ``forward``, ``dgrad``, ``wgrad`` or ``step``.
    """

    spec: ConvSpec
    grid: Grid
    recv: dict[str, np.ndarray]
    send: dict[str, np.ndarray]
    mismatches: list[str] = field(default_factory=list)
    messages: int = 0
    elapsed_s: float = 0.0
    pass_: str = "forward"

    @property
    def procs(self) -> int:
        return self.grid.size

    @property
    def recv_bytes(self) -> np.ndarray:
        """Total received bytes per rank."""
        return sum(self.recv.values())

    @property
    def send_bytes(self) -> np.ndarray:
        """Total sent bytes per rank."""
        return sum(self.send.values())

    @property
    def consistent(self) -> bool:
        return not self.mismatches

    def summary(self) -> dict[str, dict[str, float]]:
        """``{op or "total": {"max", "mean", "min"}}`` of received bytes over ranks."""
        cols = {**self.recv, "total": self.recv_bytes}
        return {k: {"max": int(v.max()), "mean": float(v.mean()), "min": int(v.min())}
                for k, v in cols.items()}

    def rank(self, r: int) -> dict[str, Any]:
        """One rank: coordinates, totals and the per-operation breakdown."""
        ops = {op: {"recv_bytes": int(self.recv[op][r]), "send_bytes": int(self.send[op][r])}
               for op in self.recv}
        return {"rank": r, "coords": dict(zip(GRID_AXES, self.grid.coords(r))),
                "recv_bytes": sum(v["recv_bytes"] for v in ops.values()),
                "send_bytes": sum(v["send_bytes"] for v in ops.values()),
                "operations": ops}

    def to_dict(self, include_ranks: bool = True) -> dict[str, Any]:
        """JSON-friendly form; ``ranks`` has the keys of ``parconv run --json``'s ranks
        that a simulation can know (``recv_bytes``, ``send_bytes``, ``operations``)."""
        d: dict[str, Any] = {
            "command": "simulate",
            "pass": self.pass_,
            "layer": self.spec.to_dict(),
            "procs": self.procs,
            "grid": self.grid.as_dict(),
            "max_rank_recv_bytes": int(self.recv_bytes.max()),
            "total_recv_bytes": int(self.recv_bytes.sum()),
            "summary": self.summary(),
            "consistent": self.consistent,
            "mismatches": self.mismatches,
            "messages": self.messages,
            "elapsed_s": self.elapsed_s,
        }
        if include_ranks:
            d["ranks"] = [self.rank(r) for r in range(self.procs)]
        return d


def _check_op(op: str, scheds: list, mismatches: list[str], limit: int) -> int:
    """Check one operation over all ranks; returns the number of transfers."""
    messages = 0
    seen: set[tuple[int, ...]] = set()
    for a, sa in enumerate(scheds):
        oa = sa.ops[op]
        members = oa.members
        if members in seen:
            continue
        seen.add(members)
        views = [scheds[m].ops[op] for m in members]
        q = len(members)
        bad = []
        for j, (m, v) in enumerate(zip(members, views)):
            if v.members != members:
                bad.append(f"rank {m} has members {list(v.members)}, rank {a} has {list(members)}")
            elif v.index != j:
                bad.append(f"rank {m} sits at position {v.index} but is member {j}")
            if v.itemsize != oa.itemsize:
                bad.append(f"rank {m} uses {v.itemsize}-byte items, rank {a} {oa.itemsize}")
        if not bad and oa.kind == "alltoallv":
            # sent[i, j]: elements member i sends to member j; recv[j, i]: what j expects from i
            sent = np.array([v.send_counts for v in views], dtype=np.int64).reshape(q, q)
            recv = np.array([v.counts for v in views], dtype=np.int64).reshape(q, q)
            np.fill_diagonal(sent, 0)
            np.fill_diagonal(recv, 0)
            for i, j in zip(*np.nonzero(sent != recv.T)):
                bad.append(f"rank {members[i]} sends {sent[i, j]} elements to rank {members[j]}, "
                           f"which expects {recv[j, i]}")
            messages += int(np.count_nonzero(sent))
        elif not bad:
            # allgather / reduce-scatter: member i sends block i (allgather) or block j
            # (reduce-scatter) to member j; both sides agree iff every member holds the
            # same block sizes
            for m, v in zip(members, views):
                if v.counts != oa.counts:
                    bad.append(f"rank {m} expects block sizes {list(v.counts)}, rank {a} "
                               f"{list(oa.counts)}")
            nz = sum(1 for c in oa.counts if c)
            messages += nz * (q - 1)  # each non-empty block: q − 1 transfers
        for msg in bad:
            if len(mismatches) < limit:
                mismatches.append(f"{op}: {msg}")
    return messages


def _fibers(grid: Grid, keep) -> tuple[list[tuple[int, ...]], np.ndarray, np.ndarray]:
    """Every fiber of ``grid`` varying the axes in ``keep``: the member tuples (global
    ranks ascending = row-major over the kept axes), each rank's fiber and position."""
    coords = np.stack(np.unravel_index(np.arange(grid.size), grid.dims), axis=1)
    fixed = [i for i, k in enumerate(keep) if not k]
    fid = (np.ravel_multi_index(tuple(coords[:, fixed].T), [grid.dims[i] for i in fixed])
           if fixed else np.zeros(grid.size, dtype=np.int64))
    order = np.argsort(fid, kind="stable")
    q = grid.size // (int(fid.max()) + 1)
    groups = order.reshape(-1, q)
    pos = np.empty(grid.size, dtype=np.int64)
    pos[groups] = np.arange(q)
    return [tuple(g.tolist()) for g in groups], fid, pos


def _op_bytes(o, total: int, total_send: int) -> tuple[int, int]:
    """(recv, send) payload bytes of one operation from its block sizes, by the payload
    semantics of :mod:`parconv.planner.schedule` (checked against ``OpSchedule.recv_bytes``
    / ``send_bytes`` on every built representative)."""
    q, own = len(o.members), o.counts[o.index]
    if o.kind == "allgather":
        return o.itemsize * (total - own), o.itemsize * own * (q - 1)
    if o.kind == "reduce_scatter":
        return o.itemsize * own * (q - 1), o.itemsize * (total - own)
    return o.itemsize * (total - own), o.itemsize * (total_send - o.send_counts[o.index])


def block_classes(spec: ConvSpec, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Group the ranks by *block class* ``(|b-block|, |k-block|, |c-block|, i_h, i_w)``.

    Returns ``(rep_rank, rank_class)``: the lowest rank of each class, and each rank's
    class index. Ranks of one class have the same element counts in every operation
    (:func:`_schedules_by_class`)."""
    from .partition import block_sizes

    coords = np.stack(np.unravel_index(np.arange(grid.size), grid.dims), axis=1)
    sizes = [block_sizes(n, p)[coords[:, i]] for i, (n, p) in
             enumerate(((spec.B, grid.b), (spec.K, grid.k), (spec.C, grid.c)))]
    keys = np.stack(sizes + [coords[:, 3], coords[:, 4]], axis=1)
    _, rep_rank, rank_class = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return rep_rank, rank_class.ravel()


def _schedules_by_class(spec: ConvSpec, grid: Grid, progress, mismatches: list[str]):
    """Every rank's schedule, building one per *block class* and deriving the others.

    A rank's element counts depend only on its block sizes along b, k, c and on its
    (i_h, i_w) position (balanced blocks: at most two sizes per axis), so ranks of one
    class ``(|b-block|, |k-block|, |c-block|, i_h, i_w)`` share them; only the members of
    each communicator and the rank's position in it differ, and those are derived here
    from the grid (checked against each built representative). tests/test_simulate.py
    checks that this equals building every rank.
    """
    from types import SimpleNamespace

    from . import schedule as sched_mod

    P = grid.size
    rep_rank, rank_class = block_classes(spec, grid)
    reps = {}
    for c, r in enumerate(rep_rank.tolist()):
        reps[c] = sched_mod.build_schedule(spec, grid, r)
        if progress is not None and (c + 1) % 256 == 0:
            progress(c + 1, len(rep_rank))
    fibers = {op: _fibers(grid, keep) for op, keep in sched_mod.FIBERS.items()}
    for c, r in enumerate(rep_rank.tolist()):  # the derivation must reproduce the built ones
        for op, (groups, fid, pos) in fibers.items():
            o = reps[c].ops[op]
            if o.members != groups[fid[r]] or o.index != pos[r]:
                mismatches.append(f"{op}: rank {r}'s members/position differ from the grid's "
                                  "fibers (cannot derive schedules by class)")
            if _op_bytes(o, sum(o.counts), sum(o.send_counts)) != (o.recv_bytes, o.send_bytes):
                mismatches.append(f"{op}: rank {r}'s bytes differ from the payload semantics "
                                  "(cannot derive schedules by class)")
    if mismatches:
        return None
    out = []
    for r in range(P):
        c = int(rank_class[r])
        if r == rep_rank[c]:
            out.append(reps[c])
            continue
        ops = {op: dataclasses.replace(reps[c].ops[op], members=groups[fid[r]], index=int(pos[r]))
               for op, (groups, fid, pos) in fibers.items()}
        out.append(SimpleNamespace(rank=r, ops=ops))
    return out


def simulate(spec: ConvSpec, grid: Grid, check: bool = True,
             progress: Callable[[int, int], None] | None = None,
             max_mismatches: int = 100, method: str = "auto", pass_: str = "forward",
             keep_window: bool = True) -> Simulation:
    """Build every rank's schedule and add up its bytes.

    Parameters
    ----------
    spec, grid : the layer and the processor grid.
    check : verify schedule consistency (see the module docstring).
    progress : called as ``progress(done, total)`` every 256 schedules built.
    max_mismatches : keep at most this many mismatch messages.
    method : ``"full"`` calls ``build_schedule`` for every rank; ``"classes"`` builds one
        rank per block class and derives the others' communicators (same result, much
        faster at large P; see :func:`_schedules_by_class`); ``"auto"``: classes from
        P = 512 on.
    pass_, keep_window : the pass whose operations are counted
        (:func:`parconv.planner.schedule.pass_operations`); backward operations are the
        adjoints of forward ones and are checked the same way.

    Raises
    ------
    ValueError
        If the grid splits a dimension finer than its size, or ``method`` is unknown.
    """
    from . import schedule as sched_mod

    if method not in ("auto", "full", "classes"):
        raise ValueError(f"method must be auto, full or classes, got {method!r}")
    check_grid(spec, grid)
    names = sched_mod.pass_operations(pass_, keep_window)
    t0 = time.perf_counter()
    P = grid.size
    mismatches: list[str] = []
    scheds = None
    if method == "classes" or (method == "auto" and P >= 512):
        scheds = _schedules_by_class(spec, grid, progress, mismatches)
        if scheds is None:
            return Simulation(spec, grid, {op: np.zeros(P, np.int64) for op in names},
                              {op: np.zeros(P, np.int64) for op in names}, mismatches,
                              0, time.perf_counter() - t0, pass_)
    recv = {op: np.zeros(P, dtype=np.int64) for op in names}
    send = {op: np.zeros(P, dtype=np.int64) for op in names}
    built = []
    sums: dict[int, tuple[int, int]] = {}
    for r in range(P):
        s = scheds[r] if scheds is not None else sched_mod.build_schedule(spec, grid, r)
        ops = sched_mod.derive_pass_ops(s.ops, spec, pass_, keep_window)
        if pass_ != "forward":
            s = _with_ops(s, ops)
        for op, o in ops.items():
            if scheds is None:  # every rank built: the runtime's own byte counts
                recv[op][r], send[op][r] = o.recv_bytes, o.send_bytes
                continue
            key = (id(o.counts), id(o.send_counts))  # shared by a class (kept alive)
            if key not in sums:
                sums[key] = (sum(o.counts), sum(o.send_counts))
            recv[op][r], send[op][r] = _op_bytes(o, *sums[key])
        if check and scheds is None:
            built.append(s)
        if scheds is None and progress is not None and (r + 1) % 256 == 0:
            progress(r + 1, P)
    messages = 0
    if check:
        views = built if scheds is None else [
            _with_ops(s, sched_mod.derive_pass_ops(s.ops, spec, pass_, keep_window))
            for s in scheds]
        for op in names:
            messages += _check_op(op, views, mismatches, max_mismatches)
    return Simulation(spec, grid, recv, send, mismatches, messages, time.perf_counter() - t0,
                      pass_)


def _with_ops(s, ops):
    """A schedule-like view of ``s`` carrying one pass's operations."""
    from types import SimpleNamespace

    return SimpleNamespace(rank=s.rank, ops=ops)
