"""Finding and driving the MPI launcher, and SLURM helpers (no MPI import).

Used by ``launch/parconv-launch`` (build an ``mpiexec``/``mpirun``/``srun`` command
with sensible binding) and by the runtime at start-up (:func:`check_world_size`: some
MPI builds started by a plain ``srun`` silently run N copies of "rank 0 of 1").

Launcher search order (:func:`find_launcher`):

1. ``PARCONV_MPIEXEC`` (a command, split like a shell would: ``"mpirun --mca ..."``);
2. the ``mpiexec`` next to the running interpreter (the virtual environment's, from the
   PyPI ``mpich`` package);
3. the system ``mpiexec``, then ``mpirun`` on ``PATH``;
4. ``srun`` when inside a SLURM job (``SLURM_JOB_ID`` set).

The implementation (:func:`detect_implementation`: ``hydra`` for MPICH / Intel MPI,
``openmpi``, ``slurm`` for ``srun``, or ``unknown``) is read from ``--version`` and
can be forced with ``PARCONV_MPI_IMPL``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

IMPLEMENTATIONS = ("hydra", "openmpi", "slurm", "unknown")


class WorldSizeError(ValueError):
    """The MPI world size disagrees with what the launcher or SLURM asked for."""


@dataclass(frozen=True)
class Launcher:
    """An MPI launcher command.

    Attributes
    ----------
    command : the launcher and any fixed arguments, e.g. ``("/venv/bin/mpiexec",)``.
    impl : one of :data:`IMPLEMENTATIONS`.
    source : where it was found (``PARCONV_MPIEXEC``, ``venv``, ``PATH``, ``SLURM``).
    """

    command: tuple[str, ...]
    impl: str
    source: str


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def in_slurm_job(env: Mapping[str, str] | None = None) -> bool:
    """True inside a SLURM allocation (``SLURM_JOB_ID`` set)."""
    e = _env(env)
    return bool(e.get("SLURM_JOB_ID") or e.get("SLURM_JOBID"))


def _int_env(e: Mapping[str, str], *names: str) -> tuple[int, str] | None:
    for name in names:
        v = e.get(name, "").strip()
        if v:
            try:
                return int(v), name
            except ValueError:
                raise WorldSizeError(f"{name}={v!r} is not an integer") from None
    return None


def slurm_ntasks(env: Mapping[str, str] | None = None) -> int | None:
    """Number of tasks SLURM started for this step (``SLURM_STEP_NUM_TASKS``, set by
    ``srun``), else for the job (``SLURM_NTASKS``, ``SLURM_NPROCS``); None outside SLURM."""
    found = _int_env(_env(env), "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
    return None if found is None else found[0]


def expected_world_size(env: Mapping[str, str] | None = None) -> tuple[int, str] | None:
    """The world size the launcher asked for, and the variable that says so.

    The process manager's own variable wins (``OMPI_COMM_WORLD_SIZE`` for Open MPI,
    ``PMI_SIZE`` for MPICH/Intel hydra and SLURM's pmi2), so ``mpirun -n 2`` inside a
    larger allocation is fine; otherwise the SLURM task count (:func:`slurm_ntasks`).
    None when nothing says.
    """
    e = _env(env)
    found = _int_env(e, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
    if found is not None:
        return found
    return _int_env(e, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")


def check_world_size(size: int, env: Mapping[str, str] | None = None) -> None:
    """Check the MPI world size against the launcher/SLURM (call once at start-up, on
    every rank, before any communication).

    Set ``PARCONV_SKIP_WORLD_CHECK=1`` to bypass (e.g. a deliberately smaller step).

    Raises
    ------
    WorldSizeError
        When they disagree, naming both numbers and the likely cause.
    """
    e = _env(env)
    if e.get("PARCONV_SKIP_WORLD_CHECK", "") not in ("", "0"):
        return
    found = expected_world_size(e)
    if found is None or found[0] == size:
        return
    want, name = found
    hint = ""
    if size == 1 and want > 1:
        hint = (" Every process started as its own 'rank 0 of 1': the MPI library did not get "
                "the process-manager information. Under SLURM use `srun --mpi=pmix` (or "
                "`--mpi=pmi2`, whichever `srun --mpi=list` offers and your MPI was built for), "
                "or launch with that MPI's own `mpirun`/`mpiexec`.")
    raise WorldSizeError(f"MPI world size is {size} but {name}={want}.{hint} "
                         f"(set PARCONV_SKIP_WORLD_CHECK=1 to bypass)")


def detect_implementation(command: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """``hydra`` (MPICH, Intel MPI), ``openmpi``, ``slurm`` (``srun``) or ``unknown``,
    from ``PARCONV_MPI_IMPL`` or the launcher's ``--version`` output."""
    e = _env(env)
    forced = e.get("PARCONV_MPI_IMPL", "").strip().lower()
    if forced:
        if forced not in IMPLEMENTATIONS:
            raise ValueError(f"PARCONV_MPI_IMPL={forced!r}: expected one of {', '.join(IMPLEMENTATIONS)}")
        return forced
    if Path(command[0]).name == "srun":
        return "slurm"
    try:
        out = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=20)
        text = (out.stdout + out.stderr).lower()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return implementation_from_version(text)


def implementation_from_version(text: str) -> str:
    """Classify a launcher's ``--version`` text."""
    t = text.lower()
    if "hydra" in t or "intel(r) mpi" in t or "mpich" in t:
        return "hydra"
    if "open mpi" in t or "openrte" in t or "open-mpi" in t or "prrte" in t:
        return "openmpi"
    if t.startswith("slurm"):
        return "slurm"
    return "unknown"


def find_launcher(env: Mapping[str, str] | None = None) -> Launcher:
    """The MPI launcher to use (search order in the module docstring).

    Raises
    ------
    FileNotFoundError
        When none is found, saying how to get one.
    """
    e = _env(env)
    if e.get("PARCONV_MPIEXEC", "").strip():
        cmd = tuple(shlex.split(e["PARCONV_MPIEXEC"]))
        exe = shutil.which(cmd[0], path=e.get("PATH"))
        if exe is None:
            raise FileNotFoundError(f"PARCONV_MPIEXEC={e['PARCONV_MPIEXEC']!r}: {cmd[0]} not found")
        return Launcher(cmd, detect_implementation(cmd, e), "PARCONV_MPIEXEC")
    venv = Path(sys.executable).parent / "mpiexec"
    if venv.is_file() and os.access(venv, os.X_OK):
        cmd = (str(venv),)
        return Launcher(cmd, detect_implementation(cmd, e), "venv")
    for name in ("mpiexec", "mpirun"):
        exe = shutil.which(name, path=e.get("PATH"))
        if exe:
            return Launcher((exe,), detect_implementation((exe,), e), "PATH")
    if in_slurm_job(e):
        exe = shutil.which("srun", path=e.get("PATH"))
        if exe:
            return Launcher((exe,), "slurm", "SLURM")
    raise FileNotFoundError("no MPI launcher found: install one (`pip install mpich` in the "
                            "virtual environment, or load your cluster's MPI module) or set "
                            "PARCONV_MPIEXEC")


def available_cores(env: Mapping[str, str] | None = None) -> int:
    """Cores this job may use: SLURM's allocation (``SLURM_CPUS_ON_NODE`` × nodes) inside
    a job, else the CPU affinity of this process."""
    e = _env(env)
    if in_slurm_job(e):
        cpn = _int_env(e, "SLURM_CPUS_ON_NODE")
        nodes = _int_env(e, "SLURM_JOB_NUM_NODES", "SLURM_NNODES")
        if cpn is not None:
            return cpn[0] * (nodes[0] if nodes else 1)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def binding_flags(impl: str, nprocs: int, cores: int) -> list[str]:
    """Process-binding flags for ``nprocs`` ranks on ``cores`` cores.

    One rank per core when they fit (hydra ``-bind-to core``, Open MPI ``--bind-to
    core``, srun ``--cpu-bind=cores``); no binding when oversubscribed (bound ranks
    would share cores; Open MPI also needs ``--oversubscribe``).
    """
    fits = nprocs <= cores
    if impl == "hydra":
        return ["-bind-to", "core"] if fits else []
    if impl == "openmpi":
        return ["--bind-to", "core"] if fits else ["--oversubscribe", "--bind-to", "none"]
    if impl == "slurm":
        return ["--cpu-bind=cores"] if fits else ["--overcommit", "--cpu-bind=none"]
    return []


def launch_command(launcher: Launcher, nprocs: int, program: Sequence[str],
                   cores: int | None = None, env: Mapping[str, str] | None = None) -> list[str]:
    """The full command line running ``program`` on ``nprocs`` ranks.

    ``srun`` gets ``--mpi=$PARCONV_SRUN_MPI`` (default ``pmix``; ``none`` omits it).
    """
    if nprocs < 1:
        raise ValueError(f"number of ranks must be positive, got {nprocs}")
    e = _env(env)
    cores = available_cores(e) if cores is None else cores
    cmd = list(launcher.command)
    if launcher.impl == "slurm":
        mpi = e.get("PARCONV_SRUN_MPI", "pmix").strip()
        cmd += [f"--ntasks={nprocs}"] + ([f"--mpi={mpi}"] if mpi and mpi != "none" else [])
    else:
        cmd += ["-n", str(nprocs)]
    return cmd + binding_flags(launcher.impl, nprocs, cores) + list(program)
