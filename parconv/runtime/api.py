"""Python API of the distributed runtime: data stays distributed.

Each rank passes its own blocks (shapes from :func:`parconv.partition.layout`:
``input_owned_shape``, ``filter_owned_shape``; the result has ``output_owned_shape``).
Blocks can also come from a global array on one rank (:func:`scatter_operands`) or be
generated per rank from a seed (:func:`seeded_block`: a counter-based hash of the global
element index, so every rank makes exactly its part of one global array without
communication). :func:`gather_blocks` assembles a global array on one rank for checking.

Example (under ``mpiexec -n 4``)::

    from mpi4py import MPI
    from parconv.layers import layer
    from parconv.partition import Grid
    from parconv.runtime import conv2d_distributed, seeded_operands_local, gather_blocks
    spec = layer("resnet50/layer3.1.conv2", batch=2)
    grid = Grid.parse("1x2x2x1x1")
    x, w = seeded_operands_local(spec, grid, MPI.COMM_WORLD.rank, seed=0)
    res = conv2d_distributed(spec, grid, x, w)
    out = gather_blocks(spec, grid, "output", res.output, MPI.COMM_WORLD)  # on rank 0
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from .. import dtypes
from ..partition import Grid, layout
from ..spec import ConvSpec
from .errors import abort_on_exception, agree, check_local_blocks, validate_run
from .execute import RankStats, execute
from .schedule import Schedule, build_schedule

Range = tuple[int, int]


@dataclass
class RunResult:
    """One rank's result: its output block, schedule and measurements."""

    output: np.ndarray
    schedule: Schedule
    stats: RankStats

    @property
    def measured(self) -> dict[str, tuple[int, int]]:
        """``{op: (recv_bytes, send_bytes)}`` counted from the MPI buffers."""
        return self.stats.counters.volume()

    @property
    def planned(self) -> dict[str, tuple[int, int]]:
        """``{op: (recv_bytes, send_bytes)}`` the schedule (and partition) expect."""
        return self.schedule.volume()


def block_ranges(spec: ConvSpec, grid: Grid, rank: int, which: str) -> tuple[Range, ...]:
    """Global index ranges (per axis) of a rank's ``input``, ``filter`` or ``output`` block."""
    me = layout(spec, grid, rank)
    if which == "input":
        return (me.batch, me.input_channels_owned, me.own_rows, me.own_cols)
    if which == "filter":
        return (me.filter_out_channels_owned, me.in_channels, (0, spec.R), (0, spec.S))
    if which == "output":
        return (me.batch, me.output_out_channels_owned, me.out_rows, me.out_cols)
    raise ValueError(f"unknown block kind {which!r}: expected input, filter or output")


def local_block(global_array: np.ndarray, spec: ConvSpec, grid: Grid, rank: int,
                which: str) -> np.ndarray:
    """This rank's owned block (a contiguous copy) of a global ``input``, ``filter`` or
    ``output`` array: ``global_array[block_ranges(spec, grid, rank, which)]``.

    The input and filter blocks are what :func:`conv2d_distributed` takes on that rank;
    the output block is what it returns there.

    Raises
    ------
    ValueError
        If ``global_array`` does not have the global shape of ``which`` (``spec.input_shape``,
        ``spec.filter_shape`` or ``spec.output_shape``) or ``which`` is unknown.
    """
    ranges = block_ranges(spec, grid, rank, which)
    shape = _global_shape(spec, which)
    if tuple(np.shape(global_array)) != tuple(shape):
        raise ValueError(f"local_block: global {which} has shape {tuple(np.shape(global_array))}, "
                         f"expected {tuple(shape)}")
    return np.ascontiguousarray(global_array[_slices(ranges)])


def _global_shape(spec: ConvSpec, which: str) -> tuple[int, ...]:
    return {"input": spec.input_shape, "filter": spec.filter_shape,
            "output": spec.output_shape}[which]


_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), \
    np.uint64(0x9E3779B97F4A7C15)


def _splitmix(z: np.ndarray) -> np.ndarray:
    z = z + _GOLD
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def seeded_block(spec: ConvSpec, which: str, ranges: tuple[Range, ...], seed: int) -> np.ndarray:
    """The ``ranges`` part of the global ``input`` or ``filter`` array defined by ``seed``.

    Element ``i`` (flat global index) is a function of ``(seed, which, i)`` only
    (SplitMix64), so blocks generated on different ranks tile one global array.
    Integers are uniform over the type's range clipped to [-128, 127]; floats uniform in
    [-1, 1), filters scaled by sqrt(3 / (C·R·S)) so that outputs stay O(1).
    """
    shape = _global_shape(spec, which)
    name = spec.precision.input if which == "input" else spec.precision.filter
    strides = np.cumprod((1, *shape[:0:-1]))[::-1]
    idx = np.zeros([hi - lo for lo, hi in ranges], np.uint64)
    for ax, (lo, hi) in enumerate(ranges):
        sh = [1] * 4
        sh[ax] = hi - lo
        idx = idx + (np.arange(lo, hi, dtype=np.uint64) * np.uint64(strides[ax])).reshape(sh)
    key = _splitmix(np.array([seed & (2**64 - 1), 1 + (which == "filter")], np.uint64)).sum()
    z = _splitmix(idx ^ np.uint64(key))
    dt = dtypes.numpy_dtype(name)
    if dtypes.is_integer(name):
        lo, hi = dtypes.value_range(name)
        lo, hi = int(max(lo, -128)), int(min(hi, 127))
        vals = (z >> np.uint64(33)) % np.uint64(hi - lo + 1)
        return (vals.astype(np.int64) + lo).astype(dt)
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 * 2.0 - 1.0
    if which == "filter":
        u *= np.sqrt(3.0 / (spec.C * spec.R * spec.S))
    return u.astype(dt)


def seeded_operands_local(spec: ConvSpec, grid: Grid, rank: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """This rank's input and filter blocks of the global operands defined by ``seed``."""
    return (seeded_block(spec, "input", block_ranges(spec, grid, rank, "input"), seed),
            seeded_block(spec, "filter", block_ranges(spec, grid, rank, "filter"), seed))


def seeded_operands_global(spec: ConvSpec, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The whole global input and filter defined by ``seed`` (for checking)."""
    full = {w: tuple((0, n) for n in _global_shape(spec, w)) for w in ("input", "filter")}
    return seeded_block(spec, "input", full["input"], seed), seeded_block(spec, "filter", full["filter"], seed)


def _slices(ranges) -> tuple[slice, ...]:
    return tuple(slice(lo, hi) for lo, hi in ranges)


def scatter_operands(spec: ConvSpec, grid: Grid, comm, x: np.ndarray | None = None,
                     w: np.ndarray | None = None, root: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distribute global ``x`` and ``w`` held on ``root`` into each rank's owned blocks
    (collective; setup traffic, not counted as algorithm communication)."""
    parts = None
    if comm.Get_rank() == root:
        if x is None or w is None:
            raise ValueError("scatter_operands: the root must pass x and w")
        parts = [(np.ascontiguousarray(x[_slices(block_ranges(spec, grid, r, "input"))]),
                  np.ascontiguousarray(w[_slices(block_ranges(spec, grid, r, "filter"))]))
                 for r in range(comm.Get_size())]
    return comm.scatter(parts, root=root)


def gather_blocks(spec: ConvSpec, grid: Grid, which: str, block: np.ndarray, comm,
                  root: int = 0) -> np.ndarray | None:
    """Assemble the global ``input``, ``filter`` or ``output`` array on ``root`` from
    every rank's owned block (collective); other ranks get None."""
    blocks = comm.gather(block, root=root)
    if comm.Get_rank() != root:
        return None
    out = np.empty(_global_shape(spec, which), block.dtype)
    for r, blk in enumerate(blocks):
        out[_slices(block_ranges(spec, grid, r, which))] = blk
    return out


def conv2d_distributed(spec: ConvSpec, grid: Grid, x_local: np.ndarray, w_local: np.ndarray,
                       comm=None, memory_bytes: int | None = None,
                       kernel: Callable | None = None,
                       local_compute: Callable | None = None,
                       abort_on_error: bool = True,
                       timeout: float | None = None) -> RunResult:
    """Distributed convolution of this rank's blocks (collective over ``comm``).

    Parameters
    ----------
    spec, grid : the layer and the processor grid (``grid.size`` = number of ranks).
    x_local, w_local : this rank's owned input / filter blocks
        (``layout(spec, grid, rank).input_owned_shape`` / ``filter_owned_shape``, in the
        spec's input / filter dtypes).
    comm : communicator (default ``MPI.COMM_WORLD``).
    memory_bytes : optional per-rank memory limit the grid must fit.
    kernel, local_compute : see :func:`parconv.runtime.execute.execute`.
    abort_on_error : once data moves, an exception on this rank prints
        ``rank R failed: ...`` and calls ``MPI_Abort`` (the other ranks would otherwise
        wait in a collective forever). False re-raises instead (only safe when every
        rank fails alike).
    timeout : optional deadline in seconds on every collective of the call (the
        agreement on the local blocks and the four exchanges): a rank that waits longer
        prints ``rank R: timed out after T s in <operation> waiting for ranks [..]``
        and aborts the job (docs/runtime.md, "Failure behaviour"). None (default):
        blocking collectives, no deadline. A :class:`~.deadline.DeadlineComm` passed as
        ``comm`` brings its own timeout.

    Returns
    -------
    RunResult with ``output`` of ``output_owned_shape`` in the output dtype.

    Raises
    ------
    RunInputError
        On every rank, before any data moves, for a bad grid or bad local blocks.
    """
    if comm is None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    validate_run(spec, grid, comm.Get_size(), memory_bytes)
    # -- deadline (opt-in): the user's communicator wrapped for the agreement ---------
    from .deadline import DeadlineComm, check_timeout, collective_timeout

    check_timeout(timeout)
    own = None
    if timeout is None:
        timeout = getattr(comm, "timeout", None) if isinstance(comm, DeadlineComm) else None
    elif not (isinstance(comm, DeadlineComm) and comm.timeout == timeout):
        comm = own = DeadlineComm(getattr(comm, "comm", comm), timeout)
    try:
        rank = comm.Get_rank()
        agree(comm, check_local_blocks(spec, grid, rank, x_local, w_local))
        from .comm import GridComm

        guard = abort_on_exception(comm) if abort_on_error else nullcontext()
        with guard, collective_timeout(timeout):
            gc = GridComm.create(comm, grid)
            sched = build_schedule(spec, grid, gc.rank)
            out, stats = execute(gc, sched, x_local, w_local, kernel, local_compute)
            gc.free()
    finally:
        if own is not None:
            own.free()
    return RunResult(out, sched, stats)
