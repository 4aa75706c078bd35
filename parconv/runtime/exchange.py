"""The four collectives of the grid algorithm, each counting the payload bytes of the
buffers it actually hands to MPI.

Input and filter blocks travel as raw bytes (``MPI.BYTE``: float16 and bfloat16 have no
MPI type); partial sums travel in the accumulator type so that MPI can add them. Buffers
are contiguous numpy arrays packed with slicing / fancy indexing, never element loops.

Under :func:`.deadline.collective_timeout` each collective runs non-blocking under that
deadline (:func:`.deadline.timed`); otherwise it is the blocking MPI call. The counters
are the same either way (arrival messages are not payload).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .deadline import current_timeout, timed
from .schedule import OpSchedule


def _collective(comm, operation: str, blocking, nonblocking) -> None:
    """``blocking()`` without a deadline, else ``nonblocking()`` (returns the request)
    under it."""
    timeout = current_timeout()
    if timeout is None:
        blocking()
    else:
        timed(comm, operation, nonblocking, timeout)


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
              counters: Counters) -> None:
    """Allgatherv of byte blocks: ``recv`` receives the members' blocks in member order.

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
    _collective(comm, f"{sched.op} (Allgatherv)", lambda: comm.Allgatherv(*bufs),
                lambda: comm.Iallgatherv(*bufs))
    q = comm.Get_size()
    counters.add(sched.op, rb.nbytes - sb.nbytes, sb.nbytes * (q - 1))


def alltoallv(comm, sched: OpSchedule, segments: dict[int, np.ndarray],
              recv_shapes: dict[int, tuple[int, ...]], dtype: np.dtype,
              counters: Counters) -> dict[int, np.ndarray]:
    """Alltoallv of byte segments: ``segments[j]`` goes to member ``j``; returns
    ``{j: array of recv_shapes[j]}`` for the members that sent something.

    Counted: the bytes of the segments passed in and of the receive buffer.
    """
    from mpi4py import MPI

    q = comm.Get_size()
    send_counts = [0] * q
    for j, seg in segments.items():
        send_counts[j] = seg.nbytes
    recv_counts = [0] * q
    itemsize = np.dtype(dtype).itemsize
    for j, shape in recv_shapes.items():
        recv_counts[j] = int(np.prod(shape)) * itemsize
    sendbuf = (np.concatenate([_bytes_view(segments[j]) for j in sorted(segments)])
               if segments else np.empty(0, np.uint8))
    recvbuf = np.empty(sum(recv_counts), np.uint8)
    bufs = ([sendbuf, (send_counts, _displs(send_counts)), MPI.BYTE],
            [recvbuf, (recv_counts, _displs(recv_counts)), MPI.BYTE])
    _collective(comm, f"{sched.op} (Alltoallv)", lambda: comm.Alltoallv(*bufs),
                lambda: comm.Ialltoallv(*bufs))
    counters.add(sched.op, recvbuf.nbytes, sendbuf.nbytes)
    out, pos = {}, 0
    for j in range(q):
        n = recv_counts[j]
        if j in recv_shapes and n:
            out[j] = recvbuf[pos:pos + n].view(dtype).reshape(recv_shapes[j])
        pos += n
    return out


def reduce_scatter(comm, sched: OpSchedule, send: np.ndarray, recv: np.ndarray,
                   counters: Counters) -> None:
    """Reduce_scatter (sum) of accumulator-typed partials: member ``j`` gets the sum of
    everyone's ``counts[j]``-element block ``j`` (blocks consecutive in ``send``).

    Counted: received = ``q − 1`` partial copies of the own block; sent = the partial
    blocks of the others.
    """
    from mpi4py import MPI

    if not (send.flags.c_contiguous and recv.flags.c_contiguous):
        raise ValueError("internal error: MPI buffer is not contiguous")
    counts = list(sched.counts)
    if send.size != sum(counts) or recv.size != counts[sched.index]:
        raise ValueError(f"internal error: {sched.op} buffers of {send.size}/{recv.size} "
                         f"elements do not match the schedule {counts}")
    q = comm.Get_size()
    _collective(comm, f"{sched.op} (Reduce_scatter)",
                lambda: comm.Reduce_scatter(send, recv, recvcounts=counts, op=MPI.SUM),
                lambda: comm.Ireduce_scatter(send, recv, recvcounts=counts, op=MPI.SUM))
    counters.add(sched.op, recv.nbytes * (q - 1), send.nbytes - recv.nbytes)
