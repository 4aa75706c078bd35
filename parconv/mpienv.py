"""Finding and driving the MPI launcher, SLURM helpers, and what a rank can learn from
its environment without MPI (its rank, the ranks on its node, the memory they have).

Used by ``launch/parconv-launch`` (build an ``mpiexec``/``mpirun``/``srun`` command
with sensible binding) and by the runtime at start-up (:func:`check_world_size`: some
MPI builds started by a plain ``srun`` silently run N copies of "rank 0 of 1").

Launcher search order (:func:`find_launcher`):

1. ``PARCONV_MPIEXEC`` (a command, split like a shell would: ``"mpirun --mca ..."``);
2. the ``mpiexec`` next to the running interpreter (the virtual environment's, from the
   PyPI ``mpich`` package);
3. the system ``mpiexec``, then ``mpirun`` on ``PATH``;
4. ``srun`` when inside a SLURM job (``SLURM_JOB_ID`` set).

Without importing MPI, :func:`launcher_rank` reads this process's rank from the
launcher's variables (to print argument errors once, before MPI starts),
:func:`local_ranks` the number of ranks on this node, and :func:`default_memory_limit`
the memory each of them really has (``parconv run``'s default ``--memory``).

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
from typing import Any

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


# -- rank, ranks per node and memory, from the environment (no MPI import) ----------------

#: Variables that give this process's rank in the job, the process manager's first.
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK",
             "SLURM_PROCID")

#: Variables that give the number of ranks on this node (process managers' own).
LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")

#: SLURM's tasks-per-node variables, the step's first (``2(x3),1`` lists are allowed).
SLURM_TASKS_PER_NODE_VARS = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE",
                             "SLURM_TASKS_PER_NODE")


def launcher_rank(env: Mapping[str, str] | None = None) -> int | None:
    """This process's rank as its launcher set it (:data:`RANK_VARS`, first one set), or
    None when no launcher variable says (a plain ``python``/``parconv`` start).

    Reads the environment only: usable before MPI is imported, e.g. to print an
    argument error on rank 0 only. A malformed value counts as unset.
    """
    e = _env(env)
    for name in RANK_VARS:
        try:
            return int(e.get(name, "").strip())
        except ValueError:
            continue
    return None


def is_rank_zero(env: Mapping[str, str] | None = None) -> bool:
    """True unless a launcher variable says this process is not rank 0 (the one process
    that prints refusals)."""
    return launcher_rank(env) in (None, 0)


def _max_tasks_per_node(text: str) -> int:
    """Largest count in a SLURM tasks-per-node list such as ``2(x3),1`` or ``4``."""
    counts = []
    for item in text.split(","):
        head = item.split("(")[0].strip()
        counts.append(int(head))
    if not counts or min(counts) <= 0:
        raise ValueError(text)
    return max(counts)


def local_ranks(env: Mapping[str, str] | None = None) -> tuple[int, str] | None:
    """Number of ranks on this node and the variable that says so, or None.

    The process manager's variable wins (:data:`LOCAL_SIZE_VARS`: MPICH/Intel hydra's
    ``MPI_LOCALNRANKS``, Open MPI's ``OMPI_COMM_WORLD_LOCAL_SIZE``, MVAPICH's), then,
    inside a SLURM job, :data:`SLURM_TASKS_PER_NODE_VARS` (the largest count over the
    nodes of a list like ``2(x3),1``: the most crowded node). Malformed values are skipped.
    """
    e = _env(env)
    for name in LOCAL_SIZE_VARS:
        try:
            n = int(e.get(name, "").strip())
        except ValueError:
            continue
        if n > 0:
            return n, name
    if in_slurm_job(e):
        for name in SLURM_TASKS_PER_NODE_VARS:
            try:
                return _max_tasks_per_node(e.get(name, "")), name
            except ValueError:
                continue
    return None


def meminfo_available_bytes(path: str | Path = "/proc/meminfo") -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (None when unreadable)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                parts = line.split()
                scale = 1024 if len(parts) > 2 and parts[2].lower() == "kb" else 1
                return int(parts[1]) * scale
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    try:
        return int(text)
    except ValueError:
        return None  # "max" (cgroup v2: no limit)


def _inactive_file(stat: Path, key: str) -> int:
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


#: cgroup v1 reports "no limit" as a huge page-rounded number; anything above is none.
_NO_LIMIT = 1 << 60


def cgroup_available_bytes(cgroup_root: str | Path = "/sys/fs/cgroup",
                           proc_cgroup: str | Path = "/proc/self/cgroup") -> tuple[int, str] | None:
    """Memory this process's cgroup still allows, and the file that limits it, or None.

    For every level from this process's cgroup up to the hierarchy's root that has a
    limit (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``), the limit minus the
    usage (``memory.current`` / ``memory.usage_in_bytes``) plus the reclaimable page
    cache (``inactive_file`` of ``memory.stat``); the least over the levels.
    """
    root = Path(cgroup_root)
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    dirs: list[tuple[Path, str, str, str]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.strip().lstrip("/")
        if controllers == "":  # v2 (unified) hierarchy
            for base in (root, root / "unified"):
                dirs.append((base, rel, "memory.max", "memory.current"))
        elif "memory" in controllers.split(","):
            dirs.append((root / "memory", rel, "memory.limit_in_bytes", "memory.usage_in_bytes"))
    best: tuple[int, str] | None = None
    for base, rel, limit_name, usage_name in dirs:
        stat_key = "inactive_file" if limit_name == "memory.max" else "total_inactive_file"
        d = base / rel
        while True:
            limit = _read_int(d / limit_name)
            if limit is not None and 0 < limit < _NO_LIMIT:
                used = _read_int(d / usage_name) or 0
                free = max(0, limit - max(0, used - _inactive_file(d / "memory.stat", stat_key)))
                if best is None or free < best[0]:
                    best = (free, str(d / limit_name))
            if d == base or base not in d.parents:
                break
            d = d.parent
    return best


@dataclass(frozen=True)
class MemoryLimit:
    """A per-rank memory limit and where it comes from.

    Attributes
    ----------
    bytes : the limit in bytes, or None for no limit.
    source : how it was obtained, in words (printed in ``parconv run``'s header).
    """

    bytes: int | None
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "source": self.source}


def default_memory_limit(ranks_on_node: tuple[int, str], env: Mapping[str, str] | None = None,
                         meminfo: str | Path = "/proc/meminfo",
                         cgroup_root: str | Path = "/sys/fs/cgroup",
                         proc_cgroup: str | Path = "/proc/self/cgroup") -> MemoryLimit:
    """The memory one rank really has: the least of

    * the node's available memory (``MemAvailable``, or what this process's cgroup still
      allows when that is less) divided by the ranks on the node;
    * inside a SLURM job, ``SLURM_MEM_PER_CPU`` × ``SLURM_CPUS_PER_TASK`` (default 1),
      else ``SLURM_MEM_PER_NODE`` ÷ the ranks on the node (SLURM gives MiB; 0 means the
      whole node and is ignored).

    Parameters
    ----------
    ranks_on_node : (count, how it is known), e.g. from :func:`local_ranks`.
    env, meminfo, cgroup_root, proc_cgroup : where to read (tests pass fakes).

    Returns
    -------
    MemoryLimit
        ``bytes`` None when nothing could be read (then there is no limit).
    """
    from .units import format_bytes

    e = _env(env)
    n, n_src = ranks_on_node
    n = max(1, int(n))
    per_node = f"{n} rank{'s' if n != 1 else ''} on the node ({n_src})"
    figures: list[tuple[int, str]] = []
    avail = meminfo_available_bytes(meminfo)
    cg = cgroup_available_bytes(cgroup_root, proc_cgroup)
    if cg is not None and (avail is None or cg[0] < avail):
        figures.append((cg[0] // n, f"cgroup allows {format_bytes(cg[0])} more ({cg[1]}) / "
                                    f"{per_node}"))
    elif avail is not None:
        figures.append((avail // n, f"MemAvailable {format_bytes(avail)} / {per_node}"))
    if in_slurm_job(e):
        mib = 1 << 20
        try:
            per_cpu = _int_env(e, "SLURM_MEM_PER_CPU")
            cpus = _int_env(e, "SLURM_CPUS_PER_TASK")
            per_node_mem = _int_env(e, "SLURM_MEM_PER_NODE")
        except WorldSizeError:
            per_cpu = cpus = per_node_mem = None
        if per_cpu is not None and per_cpu[0] > 0:
            c = cpus[0] if cpus is not None and cpus[0] > 0 else 1
            figures.append((per_cpu[0] * c * mib, f"SLURM_MEM_PER_CPU {per_cpu[0]} MiB x {c} "
                                                  f"cpu{'s' if c != 1 else ''} per task"))
        elif per_node_mem is not None and per_node_mem[0] > 0:
            figures.append((per_node_mem[0] * mib // n,
                            f"SLURM_MEM_PER_NODE {per_node_mem[0]} MiB / {per_node}"))
    if not figures:
        return MemoryLimit(None, "none (no MemAvailable, cgroup or SLURM memory figure found)")
    return MemoryLimit(*min(figures, key=lambda f: f[0]))
