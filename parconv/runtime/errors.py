"""Validation before any communication, fault injection, and abort-on-exception.

Every rank evaluates the same checks on the same arguments, so all ranks reach the
same decision without communicating. Checks on user-supplied local blocks differ per
rank; they are agreed on with one small collective (:func:`agree`) before any data
moves. During the run, :func:`abort_on_exception` turns an exception on one rank into
``MPI_Abort`` of the whole job (never a hang); :func:`abort_job` prints one line, aborts
and ends the process even where ``MPI_Abort`` returns (the PyPI MPICH).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from .. import dtypes
from ..planner.partition import Grid, check_grid, layout, rank_memory_bytes
from ..spec import ConvSpec
from ..units import format_bytes

#: Phases at which a fault can be injected (PARCONV_FAULT_PHASE).
PHASES = ("setup", "input_allgather", "input_halo", "filter_allgather", "compute",
          "output_reduce_scatter")

#: What an injected fault does (PARCONV_FAULT_KIND, default ``raise``): raise an
#: exception, sleep forever, stop the process (SIGSTOP) or kill it (SIGKILL).
FAULT_KINDS = ("raise", "hang", "stop", "kill")


class RunInputError(ValueError):
    """Invalid input to a distributed run, detected before any communication."""


def integer_bound(spec: ConvSpec) -> tuple[int, int] | None:
    """Worst-case ``|Out|`` of an integer convolution and the accumulator's limit, or None
    for floating point. ``|Out| ≤ C·R·S·max|x|·max|w|`` bounds every partial sum and every
    reduce-scatter sum too (they add subsets of the same products)."""
    p = spec.precision
    if not p.is_integer:
        return None
    mx = max(abs(v) for v in dtypes.value_range(p.input))
    mw = max(abs(v) for v in dtypes.value_range(p.filter))
    return int(spec.C * spec.R * spec.S * mx * mw), int(dtypes.value_range(p.accum)[1])


def check_precision(spec: ConvSpec) -> None:
    """The local kernel accumulates int8/uint8 x int8 in int32, float16/bfloat16/float32 in
    float32 and float64 in float64; partial sums travel in that type, so the spec's
    accumulator must be exactly it.

    Raises
    ------
    RunInputError
        For any other combination, naming the supported ones.
    """
    from ..kernels import accumulator_dtype

    p = spec.precision
    try:
        acc = accumulator_dtype(dtypes.numpy_dtype(p.input), dtypes.numpy_dtype(p.filter))
    except ValueError as exc:
        raise RunInputError(f"precision {p.label()}: {exc}") from None
    if dtypes.is_integer(p.output) != p.is_integer:
        raise RunInputError(f"precision {p.label()}: the output type must be "
                            f"{'an integer' if p.is_integer else 'a floating'} type like the inputs")
    if np.dtype(acc) != dtypes.numpy_dtype(p.accum):
        raise RunInputError(
            f"precision {p.label()}: the runtime accumulates {p.input} x {p.filter} in "
            f"{dtypes.canonical(acc)}, not {p.accum} (supported: int8/uint8 x int8 -> int32, "
            "float16/bfloat16/float32 -> float32, float64 -> float64; any output type)")


def validate_run(spec: ConvSpec, grid: Grid, world_size: int, memory_bytes: int | None = None) -> None:
    """All checks that need no data: grid size and shape, supported precision, integer
    overflow, memory.

    Raises
    ------
    RunInputError
        Naming the problem.
    """
    try:
        check_grid(spec, grid, world_size)
    except ValueError as exc:
        raise RunInputError(str(exc)) from None
    check_precision(spec)
    bound = integer_bound(spec)
    if bound is not None and bound[0] > bound[1]:
        raise RunInputError(
            f"integer overflow possible: C*R*S = {spec.C * spec.R * spec.S} products of "
            f"{spec.precision.input} x {spec.precision.filter} can reach {bound[0]}, beyond the "
            f"{spec.precision.accum} accumulator ({bound[1]}); the runtime does not run it")
    if memory_bytes is not None:
        need = max(rank_memory_bytes(spec, grid, r) for r in range(grid.size))
        if need > memory_bytes:
            raise RunInputError(f"grid {grid} needs {format_bytes(need)} per rank, more than "
                                f"--memory {format_bytes(memory_bytes)}")


def check_slurm(world_size: int, env=None) -> None:
    """The MPI world size must be what the launcher asked for (some MPI builds under a
    plain ``srun`` start N copies of "rank 0 of 1"): the process manager's ``PMI_SIZE`` /
    ``OMPI_COMM_WORLD_SIZE`` when set, else ``SLURM_STEP_NUM_TASKS`` / ``SLURM_NTASKS``
    (:func:`parconv.mpienv.check_world_size`; ``PARCONV_SKIP_WORLD_CHECK=1`` skips it).

    Raises
    ------
    RunInputError
        On a mismatch, naming both numbers and the likely cause.
    """
    from ..mpienv import WorldSizeError, check_world_size

    try:
        check_world_size(world_size, env)
    except WorldSizeError as exc:
        raise RunInputError(str(exc)) from None


def check_local_blocks(spec: ConvSpec, grid: Grid, rank: int, x: np.ndarray,
                       w: np.ndarray, which: tuple[str, ...] = ("input", "filter")) -> str | None:
    """Problem with this rank's local input/filter blocks (those named in ``which``), or
    None if they fit."""
    me = layout(spec, grid, rank)
    p = spec.precision
    for name, arr, shape, dt in (("input", x, me.input_owned_shape, p.input),
                                 ("filter", w, me.filter_owned_shape, p.filter)):
        if name not in which:
            continue
        if not isinstance(arr, np.ndarray):
            return f"local {name} block is {type(arr).__name__}, expected a numpy array"
        if tuple(arr.shape) != tuple(shape):
            return f"local {name} block has shape {tuple(arr.shape)}, expected {tuple(shape)}"
        if arr.dtype != dtypes.numpy_dtype(dt):
            return f"local {name} block has dtype {arr.dtype}, expected {dt}"
    return None


def agree(comm, message: str | None) -> None:
    """Collective: raise :class:`RunInputError` on every rank if any rank has a message.

    One small ``allgather`` of the (usually None) per-rank messages; call it before any
    data movement.
    """
    messages = comm.allgather(message)
    bad = [(r, m) for r, m in enumerate(messages) if m]
    if bad:
        r, m = bad[0]
        more = f" (and {len(bad) - 1} more ranks)" if len(bad) > 1 else ""
        raise RunInputError(f"rank {r}: {m}{more}")


def fault_point(phase: str, rank: int, env=None) -> None:
    """Inject a fault when PARCONV_FAULT_RANK / PARCONV_FAULT_PHASE match (tests).

    PARCONV_FAULT_KIND chooses it (:data:`FAULT_KINDS`): ``raise`` (default) raises
    ``RuntimeError``, ``hang`` sleeps forever, ``stop`` sends this process SIGSTOP,
    ``kill`` SIGKILL.
    """
    env = os.environ if env is None else env
    if env.get("PARCONV_FAULT_PHASE") != phase or env.get("PARCONV_FAULT_RANK") != str(rank):
        return
    kind = env.get("PARCONV_FAULT_KIND", "raise") or "raise"
    if kind not in FAULT_KINDS:
        raise RuntimeError(f"PARCONV_FAULT_KIND={kind!r}: expected one of {FAULT_KINDS}")
    if kind in ("stop", "kill"):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSTOP if kind == "stop" else signal.SIGKILL)
    if kind in ("hang", "stop"):
        while True:  # 'stop': in case something sends SIGCONT
            time.sleep(3600)
    raise RuntimeError(f"injected fault in phase {phase}")


def corrupt_requested(rank: int, env=None) -> bool:
    """True when PARCONV_FAULT_PHASE=corrupt_output targets this rank (tests that the
    verification catches a wrong result)."""
    env = os.environ if env is None else env
    return (env.get("PARCONV_FAULT_PHASE") == "corrupt_output"
            and env.get("PARCONV_FAULT_RANK") == str(rank))


#: Seconds between printing the abort message and ``MPI_Abort``. A rank's output reaches
#: the user through the launcher (hydra's proxy, then ``mpiexec``); an abort handled
#: before the pipes are drained drops what is still in them. Without this pause, hydra
#: lost the whole output of two aborted jobs in one CI run on a loaded 2-core machine
#: (our line and MPICH's own ``Abort(1) ...`` line alike).
#: ``PARCONV_ABORT_GRACE_S`` overrides it (0 disables).
ABORT_GRACE_S = 1.0


def abort_grace_seconds(env=None) -> float:
    """The pause before ``MPI_Abort`` (:data:`ABORT_GRACE_S`, or ``PARCONV_ABORT_GRACE_S``
    when set to a number >= 0)."""
    raw = (os.environ if env is None else env).get("PARCONV_ABORT_GRACE_S")
    try:
        value = float(raw) if raw is not None else ABORT_GRACE_S
    except ValueError:
        return ABORT_GRACE_S
    return value if 0 <= value < 60 else ABORT_GRACE_S


def abort_job(message: str, code: int = 1, comm=None) -> None:
    """Print ``message`` (one line, stderr), abort the whole MPI job and end this process.

    The message is flushed, then the rank waits :func:`abort_grace_seconds` (1 s) so the
    launcher can forward it before the abort tears the job down. ``MPI_Abort`` of
    ``comm`` (default ``MPI.COMM_WORLD``) asks the launcher to kill every rank, but with
    some MPI builds (the PyPI MPICH) it returns to the caller; the process then ends with
    ``os._exit(code)`` so that nothing after the abort runs (no second error, no
    traceback, no ``finally`` blocks, no MPI_Finalize). Never returns.
    """
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - a broken stdout must not stop the abort
        pass
    try:
        sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()
        time.sleep(abort_grace_seconds())
    finally:
        try:
            if comm is None:
                from mpi4py import MPI

                comm = MPI.COMM_WORLD
            comm.Abort(code)
        finally:
            os._exit(code)


@contextmanager
def abort_on_exception(comm) -> Iterator[None]:
    """Abort the whole job if the body raises on this rank, naming the rank and error
    (one line ``rank R failed: Type: message``; the process ends, see
    :func:`abort_job`). A ``SystemExit`` with status 0 passes through."""
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - any failure must take the job down
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        abort_job(f"rank {comm.Get_rank()} failed: {type(exc).__name__}: {exc}", 1, comm)
