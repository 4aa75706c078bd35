"""Shared helpers of the single-thread kernel benchmarks (``bench_kernels.py``,
``bench_int8.py``, ``bench_backward_kernels.py``): thread pinning, the interleaved
best-of-N timing on thread CPU time, per-layer rows of a layer suite and writing the
``.json`` / ``.md`` results.

Imports only the standard library, so a script can import it (and call
:func:`pin_threads`) before numpy or torch load their thread pools.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS")


def pin_threads() -> None:
    """Default every thread-count variable to 1 (call before numpy is imported)."""
    for var in THREAD_VARS:
        os.environ.setdefault(var, "1")


def time_call(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) of one call; every implementation runs
    single-threaded in the calling thread, so thread CPU time is its compute time without
    the time it spent descheduled by other processes."""
    c0, t0 = time.thread_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.thread_time() - c0


def best_of_interleaved(runs: dict, repeats: int) -> tuple[dict, dict]:
    """One warm-up call of every ``runs`` callable (compilation, allocator, oneDNN
    primitive cache), then ``repeats`` rounds calling each in turn, so that load from
    other processes hits all of them. Returns ``(best wall s, best thread-CPU s)`` per
    name."""
    for fn in runs.values():
        fn()
    best = dict.fromkeys(runs, float("inf"))
    best_cpu = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            wall, cpu = time_call(fn)
            best[name] = min(best[name], wall)
            best_cpu[name] = min(best_cpu[name], cpu)
    return best, best_cpu


def geomean(vals) -> float:
    """Geometric mean of the truthy values (``nan`` if none)."""
    vals = [v for v in vals if v]
    return float(math.exp(sum(math.log(v) for v in vals) / len(vals))) if vals else float("nan")


def add_suite_args(ap) -> None:
    """``--suite``, ``--batch``, ``--repeats``, ``--limit`` of an ``argparse`` parser."""
    ap.add_argument("--suite", default="resnet50")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--limit", type=int, default=0, help="only the first N distinct shapes")


def suite_shapes(args, names=None) -> tuple[list, list]:
    """``(every layer, the distinct shapes to time)`` of ``args.suite`` at ``args.batch``:
    the distinct shapes only of the layers named in ``names`` (when given), the first
    ``args.limit`` of them (when set)."""
    from parconv.layers import suite

    layers = suite(args.suite, args.batch)
    uniq = suite(args.suite, args.batch, unique=True)
    if names is not None:
        uniq = [s for s in uniq if s.name in names]
    if args.limit:
        uniq = uniq[:args.limit]
    return layers, uniq


def shape_key(s) -> tuple:
    """What makes two layers of a suite the same shape (timed once)."""
    return (s.C, s.K, s.in_size, s.kernel, s.stride, s.padding)


def shape_label(spec) -> str:
    """``C.. K.. HxW RxS/stride p..`` of a layer spec."""
    return (f"C{spec.C} K{spec.K} {spec.in_size[0]}x{spec.in_size[1]} "
            f"{spec.R}x{spec.S}/{spec.stride[0]} p{spec.padding[0]}")


def layer_rows(layers, shapes: dict) -> list[dict]:
    """One row per layer (``layer`` = its name) with its shape's figures, for every layer
    whose shape was timed."""
    return [dict(layer=s.name, **shapes[shape_key(s)]) for s in layers
            if shape_key(s) in shapes]


def total_times(rows: list[dict]) -> dict:
    """Summed best thread-CPU seconds per implementation over the rows."""
    return {k: sum(r["times_s"][k] for r in rows) for k in rows[0]["times_s"]}


def command(script: str, argv) -> str:
    """The reproducing command line of ``bench/<script>`` with ``argv`` (default
    ``sys.argv[1:]``)."""
    return ("OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 "
            f".venv/bin/python bench/{script} "
            + " ".join(argv if argv is not None else sys.argv[1:])).strip()


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_meta(cmd: str, torch) -> dict:
    """The leading ``meta`` keys: command, cpu, cores, python, numpy and torch versions
    (``torch`` may be None)."""
    import numpy as np

    return {"command": cmd, "cpu": cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__ if torch is not None else None}


def write_results(out: str, meta: dict, summary: dict, rows: list[dict], render_md) -> None:
    """Write ``<out>.json`` (meta, summary, layers) and ``<out>.md`` (``render_md(meta,
    summary, rows)``); print the summary."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps({"meta": meta, "summary": summary,
                                               "layers": rows}, indent=1))
    Path(out + ".md").write_text(render_md(meta, summary, rows))
    print(json.dumps(summary, indent=1))
