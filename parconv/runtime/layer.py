"""A persistent distributed convolution layer: plan once, call many times.

:class:`DistributedConv2d` builds the grid communicators, the forward schedule and the
backward (adjoint) operations once; :meth:`~DistributedConv2d.forward` and
:meth:`~DistributedConv2d.backward` then only move data and compute, as mpi4py-fft's
plans do. Usage (under ``mpiexec -n 6``)::

    layer = DistributedConv2d(spec, Grid.parse("1x2x1x3x1"))
    y = layer.forward(x_local, w_local)            # output block of this rank
    gx, gw = layer.backward(grad_y_local)          # gradients in the x / w layouts
    layer.stats["grad_input_reduce_scatter"]       # (recv, send) bytes of the last call
    layer.free()

The input gradient has the layout and dtype of ``x_local``; the filter gradient has the
layout of ``w_local`` in the accumulator dtype (float32 for bf16/fp16 training).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import numpy as np

from .. import dtypes
from ..planner.adjoint import pass_operations
from ..planner.partition import OPERATIONS, Grid
from ..planner.schedule import build_schedule
from ..spec import ConvSpec
from .backward import gather_grad_output, grad_filter, grad_input
from .deadline import DeadlineComm, check_timeout, collective_timeout
from .errors import RunInputError, abort_on_exception, agree, check_local_blocks, validate_run
from .execute import RankStats, exec_plan, execute, gather_filter, gather_input_window


def check_trainable(spec: ConvSpec) -> None:
    """The backward passes run for floating-point layers only.

    Raises
    ------
    RunInputError
        For an integer precision, naming it.
    """
    if spec.precision.is_integer:
        raise RunInputError(f"precision {spec.precision.label()}: integer training is not "
                            "supported (backward passes need fp32, bf16, fp16 or fp64)")


class DistributedConv2d:
    """One layer on one grid, with its communicators and schedules built once.

    Parameters
    ----------
    spec, grid : the layer and the processor grid (``grid.size`` = ranks of ``comm``).
    comm : communicator (default ``MPI.COMM_WORLD``).
    memory_bytes : optional per-rank memory limit the grid must fit.
    requires_grad : keep the input window and filter of :meth:`forward` for
        :meth:`backward` (the ``step`` pass of the plan with the window kept).
    abort_on_error : an exception on this rank during a call prints ``rank R failed: ...``
        and aborts the job (see :func:`parconv.runtime.conv2d_distributed`).
    validate_blocks : check every call's local blocks with one small collective before
        any data moves (shape and dtype errors then raise on every rank).
    timeout : optional deadline in seconds on every collective (construction and every
        call): a rank that waits longer names the operation and the ranks that did not
        arrive, and aborts the job (docs/runtime.md, "Failure behaviour").
    overlap : forward with communication overlapped with compute (default
        ``$PARCONV_OVERLAP``, on unless ``0``) or in the sequential order.
    local_compute : replacement of the local convolution
        (:func:`parconv.runtime.execute.execute`), e.g. the Gemmini offload model.

    Raises
    ------
    RunInputError
        On every rank, before any communication, for a bad grid or precision.
    """

    def __init__(self, spec: ConvSpec, grid: Grid, comm=None, *, memory_bytes: int | None = None,
                 requires_grad: bool = True, abort_on_error: bool = True,
                 validate_blocks: bool = True, kernel: Callable | None = None,
                 timeout: float | None = None, overlap: bool | None = None,
                 local_compute: Callable | None = None) -> None:
        if comm is None:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
        validate_run(spec, grid, comm.Get_size(), memory_bytes)
        if requires_grad:
            check_trainable(spec)
        check_timeout(timeout)
        from .comm import GridComm

        self._own_comm = None
        if timeout is not None:
            comm = self._own_comm = DeadlineComm(getattr(comm, "comm", comm), timeout)
        self.timeout = timeout

        self.spec, self.grid, self.comm = spec, grid, comm
        self.requires_grad = requires_grad
        self.abort_on_error = abort_on_error
        self.validate_blocks = validate_blocks
        self.kernel = kernel
        with collective_timeout(timeout):
            self.gc = GridComm.create(comm, grid)
        self.schedule = build_schedule(spec, grid, self.gc.rank)
        self.ops = self.schedule.pass_ops("step")
        self.plan = exec_plan(self.schedule)   # index sets, halo counts, tiles: once
        self.overlap, self.local_compute = overlap, local_compute
        self.builds = 1  #: schedules built so far (a call builds none)
        self.stats: dict[str, RankStats] = {}
        self._saved: dict | None = None

    # -- helpers ------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.gc.rank

    @contextmanager
    def _guard(self) -> Iterator[None]:
        guard = abort_on_exception(self.comm) if self.abort_on_error else nullcontext()
        with guard, collective_timeout(self.timeout):
            yield

    def _check(self, **blocks: np.ndarray) -> None:
        if not self.validate_blocks:
            return
        problem = None
        which = tuple(n for k, n in (("x", "input"), ("w", "filter")) if k in blocks)
        if which:
            problem = check_local_blocks(self.spec, self.grid, self.rank, blocks.get("x"),
                                         blocks.get("w"), which)
        if problem is None and "grad_y" in blocks:
            problem = self._check_grad_output(blocks["grad_y"])
        agree(self.comm, problem)

    def _check_grad_output(self, g) -> str | None:
        z = self.schedule.sizes
        shape = (z["b"], z["k_o"], z["out_h"], z["out_w"])
        dt = dtypes.numpy_dtype(self.spec.precision.output)
        if not isinstance(g, np.ndarray):
            return f"local grad_output block is {type(g).__name__}, expected a numpy array"
        if tuple(g.shape) != shape:
            return f"local grad_output block has shape {tuple(g.shape)}, expected {shape}"
        if g.dtype != dt:
            return f"local grad_output block has dtype {g.dtype}, expected {dt}"
        return None

    def volume(self, pass_: str) -> dict[str, tuple[int, int]]:
        """Planned ``{op: (recv_bytes, send_bytes)}`` on this rank of ``forward``,
        ``backward`` (after a forward), ``step``, or ``dgrad`` / ``wgrad`` alone
        (:meth:`grad_input`, :meth:`grad_weight`)."""
        names = pass_operations("step")
        if pass_ == "forward":
            names = OPERATIONS
        elif pass_ == "backward":
            names = names[len(OPERATIONS):]
        elif pass_ != "step":
            names = pass_operations(pass_)
        return {op: (self.ops[op].recv_bytes, self.ops[op].send_bytes) for op in names}

    # -- the passes -----------------------------------------------------------------------
    def forward(self, x_local: np.ndarray, w_local: np.ndarray) -> np.ndarray:
        """This rank's output block (collective over ``comm``); with ``requires_grad``
        the input window and filter are kept for :meth:`backward`."""
        self._check(x=x_local, w=w_local)
        keep: dict | None = {} if self.requires_grad else None
        with self._guard():
            out, stats = execute(self.gc, self.schedule, x_local, w_local, self.kernel,
                                 self.local_compute, keep=keep, overlap=self.overlap,
                                 plan=self.plan)
        self._saved = keep
        self.stats = {"forward": stats}
        return out

    def backward(self, grad_y_local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Input and filter gradients of the last :meth:`forward` (collective).

        Returns
        -------
        (grad_input block in the input layout and dtype, grad_filter block in the filter
        layout and the accumulator dtype)

        Raises
        ------
        RuntimeError
            On every rank, without communication, if no forward with ``requires_grad``
            preceded it.
        """
        if not self._saved:
            raise RuntimeError("backward() needs a forward() with requires_grad=True first")
        self._check(grad_y=grad_y_local)
        stats = RankStats()
        with self._guard():
            g = gather_grad_output(self.gc, self.schedule, self.ops, grad_y_local, stats)
            gx = grad_input(self.gc, self.schedule, self.ops, g, self._saved["filter"], stats)
            gw = grad_filter(self.gc, self.schedule, self.ops, self._saved["window"], g, stats)
        self._saved = None
        self.stats["backward"] = stats
        return gx, gw

    def grad_input(self, grad_y_local: np.ndarray, w_local: np.ndarray) -> np.ndarray:
        """The input gradient alone (the ``dgrad`` pass, collective), without a forward:
        the filter allgather, the dOut allgather, the local dgrad, the halo sent back and
        the k-fiber reduce-scatter. Returns this rank's block in the input layout and
        dtype; :meth:`measured` then has the dgrad operations."""
        check_trainable(self.spec)
        self._check(w=w_local, grad_y=grad_y_local)
        stats = RankStats()
        with self._guard():
            filt = gather_filter(self.gc, self.schedule, w_local, stats, self.plan)
            g = gather_grad_output(self.gc, self.schedule, self.ops, grad_y_local, stats)
            gx = grad_input(self.gc, self.schedule, self.ops, g, filt, stats)
        self.stats = {"dgrad": stats}
        return gx

    def grad_weight(self, x_local: np.ndarray, grad_y_local: np.ndarray) -> np.ndarray:
        """The filter gradient alone (the ``wgrad`` pass, collective), without a forward:
        the input allgather and halo exchange (the forward's, building the window), the
        dOut allgather, the local wgrad and the b·h·w reduce-scatter. Returns this rank's
        block in the filter layout and the accumulator dtype."""
        check_trainable(self.spec)
        self._check(x=x_local, grad_y=grad_y_local)
        stats = RankStats()
        with self._guard():
            win = gather_input_window(self.gc, self.schedule, x_local, stats, self.plan)
            g = gather_grad_output(self.gc, self.schedule, self.ops, grad_y_local, stats)
            gw = grad_filter(self.gc, self.schedule, self.ops, win, g, stats)
        self.stats = {"wgrad": stats}
        return gw

    def measured(self) -> dict[str, tuple[int, int]]:
        """``{op: (recv_bytes, send_bytes)}`` counted in the last forward and backward."""
        out: dict[str, tuple[int, int]] = {}
        for st in self.stats.values():
            out.update(st.counters.volume())
        return out

    def free(self) -> None:
        """Release the communicators and kept buffers."""
        self._saved = None
        self.gc.free()
        if self._own_comm is not None:
            self._own_comm.free()
            self._own_comm = None

    def __enter__(self) -> DistributedConv2d:
        return self

    def __exit__(self, *exc) -> None:
        self.free()
