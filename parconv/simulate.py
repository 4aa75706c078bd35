"""Run the runtime's communication schedule for every virtual rank, without data or MPI.

:func:`simulate` calls :func:`parconv.runtime.schedule.build_schedule` — the very
schedule the MPI executor follows — for each of the ``P`` ranks of a grid, adds up the
payload bytes per rank and per operation, and checks that the schedules are mutually
consistent: every member of a communicator sees the same member list in the same order
at its own position, and what rank ``a`` sends to ``b`` in an operation equals what
``b`` expects to receive from ``a`` (allgather / reduce-scatter block sizes agree,
alltoallv send and receive counts are transposes). A mismatch is an error: an MPI run of
that schedule would truncate a message or hang.

Because the executor counts the bytes of exactly these messages, the simulated per-rank
bytes equal a real run's measured bytes (tested against ``mpiexec`` runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .partition import GRID_AXES, OPERATIONS, Grid, check_grid
from .spec import ConvSpec


@dataclass
class Simulation:
    """Per-rank bytes of one layer on one grid.

    Attributes
    ----------
    spec, grid : the layer and the grid.
    recv, send : ``{op: int64 array over ranks}`` payload bytes received / sent.
    mismatches : schedule inconsistencies found (empty when consistent).
    messages : number of point-to-point payload transfers (pairs with bytes > 0).
    elapsed_s : wall time of the simulation.
    """

    spec: ConvSpec
    grid: Grid
    recv: dict[str, np.ndarray]
    send: dict[str, np.ndarray]
    mismatches: list[str] = field(default_factory=list)
    messages: int = 0
    elapsed_s: float = 0.0

    @property
    def procs(self) -> int:
        return self.grid.size

    @property
    def recv_bytes(self) -> np.ndarray:
        """Total received bytes per rank."""
        return sum(self.recv[op] for op in OPERATIONS)

    @property
    def send_bytes(self) -> np.ndarray:
        """Total sent bytes per rank."""
        return sum(self.send[op] for op in OPERATIONS)

    @property
    def consistent(self) -> bool:
        return not self.mismatches

    def summary(self) -> dict[str, dict[str, float]]:
        """``{op or "total": {"max", "mean", "min"}}`` of received bytes over ranks."""
        cols = {**{op: self.recv[op] for op in OPERATIONS}, "total": self.recv_bytes}
        return {k: {"max": int(v.max()), "mean": float(v.mean()), "min": int(v.min())}
                for k, v in cols.items()}

    def rank(self, r: int) -> dict[str, Any]:
        """One rank: coordinates, totals and the per-operation breakdown."""
        ops = {op: {"recv_bytes": int(self.recv[op][r]), "send_bytes": int(self.send[op][r])}
               for op in OPERATIONS}
        return {"rank": r, "coords": dict(zip(GRID_AXES, self.grid.coords(r))),
                "recv_bytes": sum(v["recv_bytes"] for v in ops.values()),
                "send_bytes": sum(v["send_bytes"] for v in ops.values()),
                "operations": ops}

    def to_dict(self, include_ranks: bool = True) -> dict[str, Any]:
        """JSON-friendly form; ``ranks`` has the keys of ``parconv run --json``'s ranks
        that a simulation can know (``recv_bytes``, ``send_bytes``, ``operations``)."""
        d: dict[str, Any] = {
            "command": "simulate",
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


def simulate(spec: ConvSpec, grid: Grid, check: bool = True,
             progress: Callable[[int, int], None] | None = None,
             max_mismatches: int = 100) -> Simulation:
    """Build every rank's schedule and add up its bytes.

    Parameters
    ----------
    spec, grid : the layer and the processor grid.
    check : verify schedule consistency (see the module docstring).
    progress : called as ``progress(done, total)`` every 256 ranks.
    max_mismatches : keep at most this many mismatch messages.

    Raises
    ------
    ValueError
        If the grid splits a dimension finer than its size.
    """
    from .runtime.schedule import build_schedule

    check_grid(spec, grid)
    t0 = time.perf_counter()
    P = grid.size
    recv = {op: np.zeros(P, dtype=np.int64) for op in OPERATIONS}
    send = {op: np.zeros(P, dtype=np.int64) for op in OPERATIONS}
    scheds = []
    for r in range(P):
        s = build_schedule(spec, grid, r)
        for op, (rv, sd) in s.volume().items():
            recv[op][r] = rv
            send[op][r] = sd
        if check:
            scheds.append(s)
        if progress is not None and (r + 1) % 256 == 0:
            progress(r + 1, P)
    mismatches: list[str] = []
    messages = 0
    if check:
        for op in OPERATIONS:
            messages += _check_op(op, scheds, mismatches, max_mismatches)
    return Simulation(spec, grid, recv, send, mismatches, messages, time.perf_counter() - t0)
