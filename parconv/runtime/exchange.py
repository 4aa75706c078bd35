"""The four collectives of the grid algorithm, each counting the payload bytes of the
buffers it actually hands to MPI.

Input and filter blocks travel as raw bytes (``MPI.BYTE``: float16 and bfloat16 have no
MPI type); partial sums travel in the accumulator type so that MPI can add them. Buffers
are contiguous numpy arrays packed with slicing / fancy indexing, never element loops.

Every collective is started non-blocking (``Iallgatherv``, ``Ialltoallv``,
``Ireduce_scatter``) and returns a :class:`Pending` request: the executor computes while
it is in flight, calls :meth:`Pending.test` between compute pieces (MPICH progresses
non-blocking collectives only inside MPI calls) and :meth:`Pending.wait` when it needs
the data. Under :func:`.deadline.collective_timeout` the start also announces the rank's
arrival to the other members and the wait polls under the deadline
(:func:`.deadline.wait_until_deadline`); otherwise the wait is ``Waitall``. The
blocking forms (:func:`allgather`, :func:`alltoallv`, :func:`reduce_scatter`) are start
+ wait. The counters are the same either way (arrival messages are not payload); they
count when a collective starts, from the sizes of the buffers handed to MPI.

Time is accounted in a :class:`Clock`: ``communication`` is the time inside the MPI
calls that start or test a collective, ``waiting`` the time blocked in a wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..planner.schedule import OpSchedule
from .deadline import Arrival, current_timeout, wait_until_deadline

#: Kinds of time a :class:`Clock` accounts.
TIME_KINDS = ("compute", "communication", "waiting", "other")


@dataclass
class Clock:
    """Seconds per kind (:data:`TIME_KINDS`) and per phase name of one rank's call."""

    kinds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIME_KINDS, 0.0))
    phases: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, kind: str, seconds: float) -> None:
        self.kinds[kind] += seconds
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds


class Pending:
    """A started collective: its request (plus the arrival messages under a deadline).

    Parameters
    ----------
    comm : the communicator. op : the operation name (counters, phase times).
    operation : the label a timeout names (e.g. ``"input_halo (Alltoallv)"``).
    start : starts the collective, returns its request.
    clock : where the start/test (``communication``) and wait (``waiting``) time goes.
    keep : buffers that must stay alive until the request completes.
    """

    def __init__(self, comm, op: str, operation: str, start: Callable[[], object],
                 clock: Clock | None = None, keep: tuple = ()) -> None:
        self.op, self.operation, self.clock, self._keep = op, operation, clock, keep
        self.timeout = current_timeout()
        t0 = time.perf_counter()
        self.arrival = (Arrival(comm) if self.timeout is not None and comm.Get_size() > 1
                        else None)
        self.requests = [start(), *(self.arrival.requests if self.arrival else ())]
        self.done = False
        self._account("communication", t0)

    def _account(self, kind: str, t0: float) -> None:
        if self.clock is not None:
            self.clock.add(self.op, kind, time.perf_counter() - t0)

    def test(self) -> bool:
        """True once the collective completed (one ``Testall``: also progresses it)."""
        if not self.done:
            from mpi4py import MPI

            t0 = time.perf_counter()
            self.done = bool(MPI.Request.Testall(self.requests))
            if self.done:
                self._keep = ()
            self._account("communication", t0)
        return self.done

    def wait(self) -> None:
        """Block until the collective completed (under the deadline, if one is set)."""
        if self.done:
            return
        from mpi4py import MPI

        t0 = time.perf_counter()
        if self.timeout is None:
            MPI.Request.Waitall(self.requests)
        else:
            wait_until_deadline(self.requests, self.arrival, self.operation, self.timeout)
        self.done = True
        self._keep = ()
        self._account("waiting", t0)


@dataclass
class Counters:
    """Measured payload bytes per operation: ``{op: [recv_bytes, send_bytes]}``."""

    bytes: dict[str, list[int]] = field(default_factory=dict)

    def add(self, op: str, recv: int, send: int) -> None:
        acc = self.bytes.setdefault(op, [0, 0])
        acc[0] += int(recv)
        acc[1] += int(send)

    def volume(self) -> dict[str, tuple[int, int]]:
        return {op: (r, s) for op, (r, s) in self.bytes.items()}

    @property
    def recv_bytes(self) -> int:
        return sum(r for r, _ in self.bytes.values())

    @property
    def send_bytes(self) -> int:
        return sum(s for _, s in self.bytes.values())


def _bytes_view(a: np.ndarray) -> np.ndarray:
    if not a.flags.c_contiguous:
        raise ValueError("internal error: MPI buffer is not contiguous")
    return a.reshape(-1).view(np.uint8)


def _displs(counts) -> list[int]:
    return [0, *np.cumsum(counts[:-1]).tolist()] if len(counts) else []


def allgather(comm, sched: OpSchedule, send: np.ndarray, recv: np.ndarray,
              counters: Counters, clock: Clock | None = None) -> None:
    """Allgatherv of byte blocks (blocking form of :func:`start_allgather`)."""
    start_allgather(comm, sched, send, recv, counters, clock).wait()


def start_allgather(comm, sched: OpSchedule, send: np.ndarray, recv: np.ndarray,
                    counters: Counters, clock: Clock | None = None) -> Pending:
    """Start an Allgatherv of byte blocks: ``recv`` receives the members' blocks in
    member order.

    Counted: received = the others' blocks (``recv`` minus the own block); sent = the own
    block once per other member.
    """
    from mpi4py import MPI

    sb, rb = _bytes_view(send), _bytes_view(recv)
    counts = [c * sched.itemsize for c in sched.counts]
    if sb.nbytes != counts[sched.index] or rb.nbytes != sum(counts):
        raise ValueError(f"internal error: {sched.op} buffers of {sb.nbytes}/{rb.nbytes} bytes "
                         f"do not match the schedule {counts}")
    bufs = ([sb, MPI.BYTE], [rb, (counts, _displs(counts)), MPI.BYTE])
    q = comm.Get_size()
    counters.add(sched.op, rb.nbytes - sb.nbytes, sb.nbytes * (q - 1))
    return Pending(comm, sched.op, f"{sched.op} (Allgatherv)", lambda: comm.Iallgatherv(*bufs),
                   clock, (sb, rb))


def alltoallv(comm, sched: OpSchedule, segments: dict[int, np.ndarray],
              recv_shapes: dict[int, tuple[int, ...]], dtype: np.dtype,
              counters: Counters, clock: Clock | None = None) -> dict[int, np.ndarray]:
    """Alltoallv of byte segments: ``segments[j]`` goes to member ``j``; returns
    ``{j: array of recv_shapes[j]}`` for the members that sent something.

    Counted: the bytes of the segments passed in and of the receive buffer.
    """
    q = comm.Get_size()
    send_counts = [0] * q
    for j, seg in segments.items():
        send_counts[j] = seg.nbytes
    sendbuf = (np.concatenate([_bytes_view(segments[j]) for j in sorted(segments)])
               if segments else np.empty(0, np.uint8))
    recv_counts = [0] * q
    itemsize = np.dtype(dtype).itemsize
    for j, shape in recv_shapes.items():
        recv_counts[j] = int(np.prod(shape)) * itemsize
    recvbuf = np.empty(sum(recv_counts), np.uint8)
    start_alltoallv(comm, sched, sendbuf, send_counts, recvbuf, recv_counts, counters,
                    clock).wait()
    out, pos = {}, 0
    for j in range(q):
        n = recv_counts[j]
        if j in recv_shapes and n:
            out[j] = recvbuf[pos:pos + n].view(dtype).reshape(recv_shapes[j])
        pos += n
    return out


def start_alltoallv(comm, sched: OpSchedule, sendbuf: np.ndarray, send_counts: list[int],
                    recvbuf: np.ndarray, recv_counts: list[int], counters: Counters,
                    clock: Clock | None = None) -> Pending:
    """Start an Alltoallv of bytes: member ``j``'s segment is the ``send_counts[j]`` bytes
    after the previous members' in ``sendbuf``; ``recvbuf`` likewise.

    Counted: the bytes of ``sendbuf`` and of ``recvbuf``.
    """
    from mpi4py import MPI

    sb, rb = _bytes_view(sendbuf), _bytes_view(recvbuf)
    if sb.nbytes != sum(send_counts) or rb.nbytes != sum(recv_counts):
        raise ValueError(f"internal error: {sched.op} buffers of {sb.nbytes}/{rb.nbytes} bytes "
                         f"do not match the counts {send_counts}/{recv_counts}")
    bufs = ([sb, (send_counts, _displs(send_counts)), MPI.BYTE],
            [rb, (recv_counts, _displs(recv_counts)), MPI.BYTE])
    counters.add(sched.op, rb.nbytes, sb.nbytes)
    return Pending(comm, sched.op, f"{sched.op} (Alltoallv)", lambda: comm.Ialltoallv(*bufs),
                   clock, (sb, rb))


def reduce_scatter(comm, sched: OpSchedule, send: np.ndarray, recv: np.ndarray,
                   counters: Counters, clock: Clock | None = None) -> None:
    """Reduce_scatter (sum) of accumulator-typed partials (blocking form of
    :func:`start_reduce_scatter` over the schedule's counts)."""
    start_reduce_scatter(comm, sched, send, recv, list(sched.counts), counters,
                         clock).wait()


def start_reduce_scatter(comm, sched: OpSchedule, send: np.ndarray, recv: np.ndarray,
                         counts: list[int], counters: Counters,
                         clock: Clock | None = None) -> Pending:
    """Start a Reduce_scatter (sum) of accumulator-typed partials: member ``j`` gets the
    sum of everyone's ``counts[j]``-element block ``j`` (blocks consecutive in ``send``).
    ``counts`` is the schedule's (:attr:`OpSchedule.counts`) or, when the output is
    reduced piece by piece, one piece's share of it.

    Counted: received = ``q − 1`` partial copies of the own block; sent = the partial
    blocks of the others.
    """
    from mpi4py import MPI

    if not (send.flags.c_contiguous and recv.flags.c_contiguous):
        raise ValueError("internal error: MPI buffer is not contiguous")
    if send.size != sum(counts) or recv.size != counts[sched.index]:
        raise ValueError(f"internal error: {sched.op} buffers of {send.size}/{recv.size} "
                         f"elements do not match the counts {counts}")
    q = comm.Get_size()
    counters.add(sched.op, recv.nbytes * (q - 1), send.nbytes - recv.nbytes)
    return Pending(comm, sched.op, f"{sched.op} (Reduce_scatter)",
                   lambda: comm.Ireduce_scatter(send, recv, recvcounts=counts, op=MPI.SUM),
                   clock, (send, recv))
