"""Python API of the distributed runtime: data stays distributed.

Each rank passes its own blocks (shapes from :func:`parconv.planner.partition.layout`:
``input_owned_shape``, ``filter_owned_shape``; the result has ``output_owned_shape``).
Blocks can also come from a global array on one rank (:func:`scatter_operands`) or be
generated per rank from a seed (:func:`seeded_block`: a counter-based hash of the global
element index, so every rank makes exactly its part of one global array without
communication). :func:`gather_blocks` assembles a global array on one rank for checking.

Example (under ``mpiexec -n 4``)::

    from mpi4py import MPI
    from parconv.layers import layer
    from parconv.planner.partition import Grid
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
from ..planner.partition import Grid, layout
from ..planner.schedule import Schedule, build_schedule
from ..spec import ConvSpec
from .errors import abort_on_exception, agree, check_local_blocks, validate_run
from .execute import RankStats, execute

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
    if which in ("output", "grad_output"):
        return (me.batch, me.output_out_channels_owned, me.out_rows, me.out_cols)
    raise ValueError(f"unknown block kind {which!r}: expected input, filter, output or "
                     "grad_output")


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
            "output": spec.output_shape, "grad_output": spec.output_shape}[which]


_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), \
    np.uint64(0x9E3779B97F4A7C15)


def _splitmix(z: np.ndarray) -> np.ndarray:
    z = z + _GOLD
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


#: Elements generated per chunk by :func:`seeded_block` (bounds its uint64 temporaries).
SEED_CHUNK = 1 << 15


def seeded_block(spec: ConvSpec, which: str, ranges: tuple[Range, ...], seed: int,
                 chunk: int = SEED_CHUNK) -> np.ndarray:
    """The ``ranges`` part of the global ``input``, ``filter`` or ``grad_output`` array
    defined by ``seed``.

    Element ``i`` (flat global index) is a function of ``(seed, which, i)`` only
    (SplitMix64), so blocks generated on different ranks tile one global array.
    Integers are uniform over the type's range clipped to [-128, 127]; floats uniform in
    [-1, 1), filters scaled by sqrt(3 / (C·R·S)) so that outputs stay O(1). The output
    gradient (``grad_output``: output shape and dtype) is uniform in [-1, 1).

    The block is generated ``chunk`` elements at a time straight into the result, so
    besides the result only a few ``chunk``-sized temporaries exist (about 40 bytes per
    chunk element: 1.3 MB at the default).
    """
    shape = _global_shape(spec, which)
    name = {"input": spec.precision.input, "filter": spec.precision.filter,
            "grad_output": spec.precision.output}[which]
    strides = np.cumprod((1, *shape[:0:-1]))[::-1].astype(np.uint64)
    dims = [hi - lo for lo, hi in ranges]
    los = np.array([lo for lo, _ in ranges], dtype=np.uint64)
    stream = {"input": 1, "filter": 2, "grad_output": 3}[which]
    key = _splitmix(np.array([seed & (2**64 - 1), stream], np.uint64)).sum()
    dt = dtypes.numpy_dtype(name)
    out = np.empty(dims, dt)
    flat = out.reshape(-1)
    # block strides of the C-ordered result, for unravelling block positions
    inner = np.cumprod((1, *dims[:0:-1]))[::-1]
    integer = dtypes.is_integer(name)
    if integer:
        lo, hi = dtypes.value_range(name)
        lo, hi = int(max(lo, -128)), int(min(hi, 127))
    scale = np.sqrt(3.0 / (spec.C * spec.R * spec.S)) if which == "filter" else None
    chunk = max(1, int(chunk))
    for p0 in range(0, flat.size, chunk):
        pos = np.arange(p0, min(p0 + chunk, flat.size), dtype=np.uint64)
        idx = np.zeros(pos.size, np.uint64)
        for ax in range(4):
            coord = (pos // np.uint64(inner[ax])) % np.uint64(max(dims[ax], 1)) + los[ax]
            idx += coord * strides[ax]
        del pos
        z = _splitmix(idx ^ np.uint64(key))
        del idx
        if integer:
            vals = (z >> np.uint64(33)) % np.uint64(hi - lo + 1)
            flat[p0:p0 + z.size] = vals.astype(np.int64) + lo
            continue
        u = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 * 2.0 - 1.0
        if scale is not None:
            u *= scale
        flat[p0:p0 + z.size] = u
    return out


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


_TAG_SCATTER, _TAG_GATHER = 7001, 7002


def _root_verdict(comm, root: int, message: str | None) -> None:
    """Broadcast the root's verdict; every rank raises the same ``ValueError`` on one."""
    message = comm.bcast(message, root=root)
    if message is not None:
        raise ValueError(message)


def scatter_operands(spec: ConvSpec, grid: Grid, comm, x: np.ndarray | None = None,
                     w: np.ndarray | None = None, root: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distribute global ``x`` and ``w`` held on ``root`` into each rank's owned blocks
    (collective; setup traffic, not counted as algorithm communication).

    Blocks travel as raw bytes by point-to-point messages, one rank at a time: beyond the
    global arrays the root holds one packed block at a time (none for blocks that are
    already contiguous views). Nothing is pickled but the dtypes.

    Raises
    ------
    ValueError
        On every rank (before any block moves) if the root's ``x`` / ``w`` are missing or
        do not have the layer's global shapes.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    message, dts = None, None
    if rank == root:
        for name, a, which in (("x", x, "input"), ("w", w, "filter")):
            if a is None:
                message = f"scatter_operands: the root must pass {name}"
            elif tuple(np.shape(a)) != _global_shape(spec, which):
                message = (f"scatter_operands: {name} has shape {tuple(np.shape(a))}, expected "
                           f"the global {which} shape {_global_shape(spec, which)}")
            if message:
                break
        if message is None:
            dts = (np.asarray(x).dtype, np.asarray(w).dtype)
    _root_verdict(comm, root, message)
    dts = comm.bcast(dts, root=root)
    mine = []
    for arr, which, dt in ((x, "input", dts[0]), (w, "filter", dts[1])):
        if rank == root:
            arr = np.asarray(arr)
            for r in range(size):
                if r != root:   # one packed block at a time
                    blk = np.ascontiguousarray(arr[_slices(block_ranges(spec, grid, r, which))])
                    comm.Send([blk.reshape(-1).view(np.uint8), _mpi_byte()], dest=r,
                              tag=_TAG_SCATTER)
                    del blk
            mine.append(np.array(arr[_slices(block_ranges(spec, grid, root, which))]))
        else:
            shape = tuple(hi - lo for lo, hi in block_ranges(spec, grid, rank, which))
            blk = np.empty(shape, dt)
            comm.Recv([blk.reshape(-1).view(np.uint8), _mpi_byte()], source=root,
                      tag=_TAG_SCATTER)
            mine.append(blk)
    return mine[0], mine[1]


def _mpi_byte():
    from mpi4py import MPI

    return MPI.BYTE


def gather_blocks(spec: ConvSpec, grid: Grid, which: str, block: np.ndarray, comm,
                  root: int = 0) -> np.ndarray | None:
    """Assemble the global ``input``, ``filter`` or ``output`` array on ``root`` from
    every rank's owned block (collective); other ranks get None.

    Blocks travel as raw bytes by point-to-point messages received one at a time: beyond
    the global array the root holds one block at a time. Only each block's shape and
    dtype are pickled (to check them before any block moves).

    Raises
    ------
    ValueError
        On every rank, before any block moves, if some rank's block does not have the
        shape of its part of the global array or the dtypes differ.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    _global_shape(spec, which)   # rejects an unknown kind on every rank
    block = np.asarray(block)
    metas = comm.gather((block.shape, block.dtype), root=root)
    message = None
    if rank == root:
        for r, (shape, dt) in enumerate(metas):
            want = tuple(hi - lo for lo, hi in block_ranges(spec, grid, r, which))
            if tuple(shape) != want or dt != block.dtype:
                message = (f"gather_blocks: rank {r} has a {which} block of shape "
                           f"{tuple(shape)} and dtype {dt}, expected {want} and {block.dtype}")
                break
    _root_verdict(comm, root, message)
    if rank != root:
        blk = np.ascontiguousarray(block)
        comm.Send([blk.reshape(-1).view(np.uint8), _mpi_byte()], dest=root, tag=_TAG_GATHER)
        return None
    out = np.empty(_global_shape(spec, which), block.dtype)
    out[_slices(block_ranges(spec, grid, root, which))] = block
    for r in range(size):
        if r != root:   # one block buffer at a time
            buf = np.empty(metas[r][0], block.dtype)
            comm.Recv([buf.reshape(-1).view(np.uint8), _mpi_byte()], source=r, tag=_TAG_GATHER)
            out[_slices(block_ranges(spec, grid, r, which))] = buf
            del buf
    return out


def conv2d_distributed(spec: ConvSpec, grid: Grid, x_local: np.ndarray, w_local: np.ndarray,
                       comm=None, memory_bytes: int | None = None,
                       kernel: Callable | None = None,
                       local_compute: Callable | None = None,
                       abort_on_error: bool = True,
                       timeout: float | None = None,
                       overlap: bool | None = None) -> RunResult:
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
    overlap : communication overlapped with the local convolution (True) or the
        sequential order (False); default ``$PARCONV_OVERLAP`` (on unless ``0``). Same
        result bytes and the same counted bytes either way (docs/runtime.md).

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
            out, stats = execute(gc, sched, x_local, w_local, kernel, local_compute,
                                 overlap=overlap)
            gc.free()
    finally:
        if own is not None:
            own.free()
    return RunResult(out, sched, stats)
