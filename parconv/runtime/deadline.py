"""Opt-in deadline on every collective: a stopped or hung rank ends the job instead of
hanging it.

Without a timeout nothing here runs: the collectives of :mod:`.exchange` stay the
blocking MPI calls. With a timeout (``parconv run --timeout S``,
``conv2d_distributed(..., timeout=S)``), each collective runs non-blocking and is polled
(``Test`` plus a short sleep) until it completes or the deadline passes. To name the
ranks that did not arrive, every member, on entering an operation, sends each other
member a tiny *arrival* message (its sequence number of operations on that
communicator) and posts receives for theirs; at the deadline the members whose arrival
has not been received are the ones named. The rank then prints once
``rank R: timed out after T s in <operation> waiting for ranks [..]`` (ranks of
``MPI.COMM_WORLD``), calls ``MPI_Abort`` and exits.

Arrival messages are control traffic, not payload: the byte counters of
:mod:`.exchange` count only the buffers of the collectives, so measured == planned stays
exact. They travel point-to-point on a communicator no user code sees: the private
fiber communicators of :class:`~.comm.GridComm` (MPI keeps point-to-point and
collective traffic apart on one communicator), or, for the user's communicator, a
duplicate made by :class:`DeadlineComm` (``Idup``, itself under the deadline).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np

from .errors import abort_job

#: Tag of the arrival messages (below the MPI-guaranteed minimum MPI_TAG_UB of 32767).
ARRIVAL_TAG = 32001

_TIMEOUT: ContextVar[float | None] = ContextVar("parconv_collective_timeout", default=None)
_KEYVAL = None


def check_timeout(timeout: float | None) -> None:
    """Raise :class:`~.errors.RunInputError` unless ``timeout`` is None or a positive,
    finite number of seconds (checked on every rank before any communication)."""
    from .errors import RunInputError

    if timeout is None:
        return
    if not isinstance(timeout, int | float) or not np.isfinite(timeout) or timeout <= 0:
        raise RunInputError(f"timeout must be a positive number of seconds, got {timeout!r}")


@contextmanager
def collective_timeout(seconds: float | None) -> Iterator[None]:
    """Run the body with ``seconds`` as the deadline of every :mod:`.exchange`
    collective (None: blocking collectives, no deadline)."""
    token = _TIMEOUT.set(seconds)
    try:
        yield
    finally:
        _TIMEOUT.reset(token)


def current_timeout() -> float | None:
    """The deadline set by the innermost :func:`collective_timeout`, or None."""
    return _TIMEOUT.get()


@dataclass
class ArrivalBook:
    """Who has arrived at one operation (pure bookkeeping, no MPI).

    Parameters
    ----------
    members : global rank of each member of the communicator, in member order.
    me : this rank's member index.
    seq : this rank's sequence number of the operation on that communicator.
    """

    members: Sequence[int]
    me: int
    seq: int
    arrived: dict[int, int] = field(default_factory=dict)

    def record(self, member: int, seq: int) -> None:
        """Member ``member`` (index) announced it entered its operation number ``seq``."""
        self.arrived[member] = int(seq)

    def missing(self) -> list[int]:
        """Global ranks of the other members whose arrival has not been received."""
        return [g for j, g in enumerate(self.members) if j != self.me and j not in self.arrived]

    def out_of_step(self) -> list[tuple[int, int]]:
        """``(global rank, its sequence number)`` of members that arrived at a different
        operation than this rank (mismatched collective calls)."""
        return [(self.members[j], s) for j, s in sorted(self.arrived.items()) if s != self.seq]

    def message(self, world_rank: int, timeout: float, operation: str) -> str:
        """The one line printed when the deadline passes."""
        missing = self.missing()
        text = (f"rank {world_rank}: timed out after {timeout:g} s in {operation} "
                f"waiting for ranks {missing}")
        if not missing:
            text += " (every member arrived; the operation itself did not complete)"
        odd = self.out_of_step()
        if odd:
            text += (f"; out of step (collective #{self.seq} here): "
                     + ", ".join(f"rank {g} at #{s}" for g, s in odd))
        return text


def _world_ranks(comm) -> list[int]:
    from mpi4py import MPI

    group, world = comm.Get_group(), MPI.COMM_WORLD.Get_group()
    try:
        return [int(r) for r in MPI.Group.Translate_ranks(group, list(range(comm.Get_size())),
                                                          world)]
    finally:
        group.Free()
        world.Free()


def _next_seq(comm) -> int:
    """This rank's count of timed operations on ``comm`` so far (an MPI attribute, so it
    lives and dies with the communicator)."""
    from mpi4py import MPI

    global _KEYVAL
    if _KEYVAL is None:
        _KEYVAL = MPI.Comm.Create_keyval()
    n = comm.Get_attr(_KEYVAL) or 0
    comm.Set_attr(_KEYVAL, n + 1)
    return n


def _poll(requests: list, until: float) -> bool:
    """Test ``requests`` with a growing short sleep until all completed (True) or the
    clock passes ``until`` (False)."""
    from mpi4py import MPI

    nap = 2e-5
    while not MPI.Request.Testall(requests):
        if time.monotonic() >= until:
            return False
        time.sleep(nap)
        nap = min(nap * 2, 1e-3)
    return True


def _stagger(world_rank: int) -> float:
    """Extra seconds before a rank reports a timeout, so that usually one rank (the
    lowest waiting one) prints and aborts before the others print the same."""
    return 0.3 * min(world_rank, 5)


class Arrival:
    """The arrival messages of one operation on ``comm``: this rank's announcement to
    the other members and its receives of theirs (posted by :meth:`post`)."""

    def __init__(self, comm) -> None:
        from mpi4py import MPI

        q = comm.Get_size()
        self.comm, self.me = comm, comm.Get_rank()
        self.seq = _next_seq(comm)
        self._mine = np.array([self.seq], np.int64)
        self.inbox = np.full(q, -1, np.int64)
        self.others = [j for j in range(q) if j != self.me]
        self.recvs = [comm.Irecv([self.inbox[j:j + 1], MPI.INT64_T], source=j, tag=ARRIVAL_TAG)
                      for j in self.others]
        self.sends = [comm.Isend([self._mine, MPI.INT64_T], dest=j, tag=ARRIVAL_TAG)
                      for j in self.others]

    @property
    def requests(self) -> list:
        return [*self.recvs, *self.sends]

    def expire(self, operation: str, timeout: float) -> None:
        """The deadline passed: print who did not arrive and abort the job."""
        from mpi4py import MPI

        book = ArrivalBook(_world_ranks(self.comm), self.me, self.seq)
        for j, r in zip(self.others, self.recvs):
            if r.Test():
                book.record(j, int(self.inbox[j]))
        abort_job(book.message(MPI.COMM_WORLD.Get_rank(), timeout, operation))


def wait_until_deadline(requests: list, arrival: Arrival | None, operation: str,
                        timeout: float) -> None:
    """Poll ``requests`` (the collective's and the arrival messages') for ``timeout``
    seconds from now (plus the rank's stagger); at the deadline name the ranks that did
    not arrive and abort."""
    from mpi4py import MPI

    until = time.monotonic() + timeout + _stagger(MPI.COMM_WORLD.Get_rank())
    if _poll(requests, until):
        return
    if arrival is None:
        abort_job(f"rank {MPI.COMM_WORLD.Get_rank()}: timed out after {timeout:g} s in "
                  f"{operation}")
    arrival.expire(operation, timeout)


def timed(comm, operation: str, start: Callable[[], object], timeout: float) -> None:
    """Run one collective under a deadline: announce arrival to the other members of
    ``comm``, call ``start()`` (returns the collective's request), poll until it and the
    arrival messages completed; at the deadline print who did not arrive and abort."""
    if comm.Get_size() == 1:
        start().Wait()
        return
    arrival = Arrival(comm)
    req = start()
    wait_until_deadline([req, *arrival.requests], arrival, operation, timeout)


def _pickled(obj) -> np.ndarray:
    return np.frombuffer(bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)), np.uint8)


def _unpickle(buf: np.ndarray, lo: int, n: int):
    return pickle.loads(buf[lo:lo + n].tobytes())


def _displs(counts: np.ndarray) -> list[int]:
    return [0, *np.cumsum(counts[:-1]).tolist()]


class DeadlineComm:
    """An intracommunicator whose collectives used by parconv (``Barrier``, ``bcast``,
    ``gather``, ``scatter``, ``allgather``) run under a deadline; everything else is
    delegated to the wrapped communicator.

    Construction is collective (``Idup`` of ``comm`` for the arrival messages, under the
    deadline; if that times out the ranks that did not arrive cannot be named). Call
    :meth:`free` when done.
    """

    def __init__(self, comm, timeout: float):
        check_timeout(timeout)
        self.comm = comm
        self.timeout = float(timeout)
        ctl, req = comm.Idup()
        if not _poll([req], time.monotonic() + self.timeout):
            from mpi4py import MPI

            abort_job(f"rank {MPI.COMM_WORLD.Get_rank()}: timed out after {self.timeout:g} s "
                      "in setup (duplicating the communicator) waiting for ranks that did "
                      "not arrive (not known at this point)")
        self.ctl = ctl

    def __getattr__(self, name: str):
        return getattr(self.comm, name)

    def free(self) -> None:
        """Release the duplicated communicator."""
        self.ctl.Free()

    def _run(self, operation: str, start: Callable[[], object]) -> None:
        timed(self.ctl, operation, start, self.timeout)

    def Barrier(self) -> None:  # noqa: N802 - mpi4py's name
        self._run("barrier", self.ctl.Ibarrier)

    barrier = Barrier

    def bcast(self, obj=None, root: int = 0):
        from mpi4py import MPI

        data = _pickled(obj) if self.ctl.Get_rank() == root else None
        n = np.array([0 if data is None else data.size], np.int64)
        self._run("bcast", lambda: self.ctl.Ibcast([n, MPI.INT64_T], root=root))
        buf = data if data is not None else np.empty(int(n[0]), np.uint8)
        self._run("bcast", lambda: self.ctl.Ibcast([buf, MPI.BYTE], root=root))
        return _unpickle(buf, 0, buf.size)

    def allgather(self, obj) -> list:
        from mpi4py import MPI

        data, q = _pickled(obj), self.ctl.Get_size()
        sizes = np.empty(q, np.int64)
        self._run("allgather", lambda: self.ctl.Iallgather(
            [np.array([data.size], np.int64), MPI.INT64_T], [sizes, MPI.INT64_T]))
        buf, displs = np.empty(int(sizes.sum()), np.uint8), _displs(sizes)
        self._run("allgather", lambda: self.ctl.Iallgatherv(
            [data, MPI.BYTE], [buf, (sizes.tolist(), displs), MPI.BYTE]))
        return [_unpickle(buf, d, int(s)) for d, s in zip(displs, sizes)]

    def gather(self, obj, root: int = 0) -> list | None:
        from mpi4py import MPI

        data, q, me = _pickled(obj), self.ctl.Get_size(), self.ctl.Get_rank()
        sizes = np.zeros(q, np.int64)
        self._run("gather", lambda: self.ctl.Igather(
            [np.array([data.size], np.int64), MPI.INT64_T], [sizes, MPI.INT64_T], root=root))
        buf, displs = np.empty(int(sizes.sum()), np.uint8), _displs(sizes)
        self._run("gather", lambda: self.ctl.Igatherv(
            [data, MPI.BYTE], [buf, (sizes.tolist(), displs), MPI.BYTE], root=root))
        if me != root:
            return None
        return [_unpickle(buf, d, int(s)) for d, s in zip(displs, sizes)]

    def scatter(self, objs: Sequence | None = None, root: int = 0):
        from mpi4py import MPI

        q, me = self.ctl.Get_size(), self.ctl.Get_rank()
        if me == root:
            parts = [_pickled(o) for o in objs]
            sizes = np.array([p.size for p in parts], np.int64)
            data = np.concatenate(parts) if parts else np.empty(0, np.uint8)
        else:
            sizes, data = np.zeros(q, np.int64), np.empty(0, np.uint8)
        n = np.empty(1, np.int64)
        self._run("scatter", lambda: self.ctl.Iscatter([sizes, MPI.INT64_T], [n, MPI.INT64_T],
                                                       root=root))
        buf = np.empty(int(n[0]), np.uint8)
        self._run("scatter", lambda: self.ctl.Iscatterv(
            [data, (sizes.tolist(), _displs(sizes)), MPI.BYTE], [buf, MPI.BYTE], root=root))
        return _unpickle(buf, 0, buf.size)
