"""Per-rank memory of the distributed runtime: measured peak vs the plan.

For ResNet-50 and VGG-16 layers at 2-4 ranks and several grids (batch large enough that
the buffers dominate), each case runs once under ``mpiexec``; every rank records

* **RSS**: ``ru_maxrss`` after the run minus the resident set size read from
  ``/proc/self/statm`` just before its operand blocks are generated (after the imports,
  ``MPI_Init``, the numba warm-up of the layer's kernel and a warm-up run of the layer at
  the smallest batch the grid allows: one-time library initialisation is baseline). This is what the operating
  system charged the process for the run, allocator and MPI library included;
* **tracemalloc**: the peak of the traced allocations (numpy reports its buffers to
  ``tracemalloc``) between the same two points, minus the traced size at the start:
  the numpy buffers and Python objects only;

and compares both with the plan's per-rank memory
(:func:`parconv.planner.partition.rank_memory_bytes`: the maximum over phases of the buffers
alive, ``docs/runtime.md``). Target: RSS ÷ plan ≤ 1.15 on every rank.

Writes ``bench/results/memory.json`` and ``bench/results/memory.md``.

Reproduce (from the repository root; ~8 min on 2 cores)::

    .venv/bin/python bench/bench_memory.py            # all cases
    .venv/bin/python bench/bench_memory.py --quick    # two small cases

One case by hand: ``mpiexec -n 4 .venv/bin/python bench/bench_memory.py --worker
--layer vgg16/features.2 --batch 24 --grid 1x1x4x1x1 --out case.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
TARGET = 1.15
COMMAND = ".venv/bin/python bench/bench_memory.py"

#: (layer, batch, grid, precision): ResNet-50 and VGG-16, 2-4 ranks, every grid axis.
CASES = [
    ("vgg16/features.0", 32, "1x1x1x2x2", "fp32"),
    ("vgg16/features.0", 32, "2x2x1x1x1", "fp32"),
    ("vgg16/features.2", 4, "1x1x4x1x1", "fp32"),
    ("resnet50/conv1", 32, "1x1x1x3x1", "fp32"),
    ("resnet50/layer1.0.conv1", 128, "1x1x2x1x1", "fp32"),
    ("resnet50/layer1.0.conv2", 96, "2x1x1x1x1", "bf16"),
    ("resnet50/layer1.0.conv3", 64, "1x3x1x1x1", "fp32"),
    ("resnet50/layer2.0.downsample.0", 32, "1x2x2x1x1", "fp32"),
]
QUICK = [("resnet50/layer3.1.conv2", 32, "1x1x2x1x1", "fp32"),
         ("resnet50/layer1.0.conv2", 16, "1x1x1x1x3", "int8")]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux


def worker(args) -> None:
    """One case, every rank (under mpiexec)."""
    import tracemalloc

    import numpy as np
    from mpi4py import MPI

    from parconv import dtypes
    from parconv.dtypes import parse_precision
    from parconv.kernels import warmup
    from parconv.layers import layer
    from parconv.planner.partition import Grid, rank_memory_buffers, rank_memory_bytes
    from parconv.runtime import conv2d_distributed, seeded_operands_local

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    spec = layer(args.layer, args.batch, parse_precision(args.dtype))
    grid = Grid.parse(args.grid)
    p = spec.precision
    warmup([(dtypes.numpy_dtype(p.input), dtypes.numpy_dtype(p.filter))])
    # one-time library initialisation (MPI connections, the dtype casts, numba dispatch)
    # happens in a warm-up run of the same layer at the smallest batch the grid allows
    small = layer(args.layer, grid.b, p)
    conv2d_distributed(small, grid, *seeded_operands_local(small, grid, rank, seed=1), comm)
    comm.Barrier()
    tracemalloc.start()
    base_rss, base_maxrss = _rss_bytes(), _maxrss_bytes()
    base_traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    x, w = seeded_operands_local(spec, grid, rank, seed=0)
    res = conv2d_distributed(spec, grid, x, w, comm)
    seconds = time.perf_counter() - t0
    traced_peak = tracemalloc.get_traced_memory()[1] - base_traced
    peak_rss = _maxrss_bytes()
    tracemalloc.stop()
    out_ok = bool(np.isfinite(res.output).all()) if res.output.dtype.kind == "f" else True
    planned = rank_memory_bytes(spec, grid, rank)
    row = {"rank": rank, "planned_bytes": planned,
           "buffers": rank_memory_buffers(spec, grid, rank),
           "baseline_rss_bytes": base_rss, "baseline_maxrss_bytes": base_maxrss,
           "peak_maxrss_bytes": peak_rss, "rss_bytes": peak_rss - base_rss,
           "tracemalloc_bytes": traced_peak,
           "rss_ratio": (peak_rss - base_rss) / planned,
           "tracemalloc_ratio": traced_peak / planned, "seconds": seconds,
           "output_finite": out_ok}
    rows = comm.gather(row, root=0)
    if rank == 0:
        Path(args.out).write_text(json.dumps({"layer": args.layer, "batch": args.batch,
                                              "grid": args.grid, "dtype": args.dtype,
                                              "ranks": rows}, indent=1))


def run_case(case, timeout: float) -> dict:
    name, batch, grid, dt = case
    from parconv.planner.partition import Grid

    procs = Grid.parse(grid).size
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT.parent / ".numba_cache"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "case.json"
        cmd = [mpiexec, "-n", str(procs), sys.executable, str(Path(__file__).resolve()),
               "--worker", "--layer", name, "--batch", str(batch), "--grid", grid,
               "--dtype", dt, "--out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=ROOT.parent)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
        res = json.loads(out.read_text())
    res["wall_seconds"] = time.perf_counter() - t0
    res["command"] = " ".join(["mpiexec", "-n", str(procs), ".venv/bin/python",
                               "bench/bench_memory.py", *cmd[5:-2]])
    return res


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f}"


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        "# Per-rank memory: measured peak vs the plan",
        "",
        f"Command: `{meta['command']}` ({meta['date']}, {meta['machine']}, {meta['mpi']}).",
        "",
        "Per rank: **plan** = `partition.rank_memory_bytes` (maximum over the runtime's",
        "phases of the buffers alive, owned operand blocks and the kernel's workspace",
        "included; `docs/runtime.md`, Memory); **RSS** = `ru_maxrss` after the run minus the",
        "resident set just before the operand blocks are generated (after imports,",
        "`MPI_Init`, the numba warm-up and a warm-up run of the layer at batch `P_b`);",
        "**traced** = `tracemalloc` peak over the same",
        "span (numpy buffers and Python objects). MB = 10^6 bytes. The rank shown is the one",
        "with the largest RSS ÷ plan; `max` columns are over all ranks. Target: RSS ÷ plan",
        f"≤ {TARGET} on every rank.",
        "",
        "| layer | batch | dtype | grid | P | plan MB (max rank) | RSS MB | traced MB "
        "| RSS ÷ plan (max) | traced ÷ plan (min–max) | baseline RSS MB | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ranks = r["ranks"]
        worst = max(ranks, key=lambda x: x["rss_ratio"])
        tr = [x["tracemalloc_ratio"] for x in ranks]
        lines.append(
            f"| {r['layer']} | {r['batch']} | {r['dtype']} | {r['grid']} | {len(ranks)} "
            f"| {_mb(max(x['planned_bytes'] for x in ranks))} | {_mb(worst['rss_bytes'])} "
            f"| {_mb(worst['tracemalloc_bytes'])} | {worst['rss_ratio']:.3f} "
            f"| {min(tr):.3f}–{max(tr):.3f} | {_mb(worst['baseline_rss_bytes'])} "
            f"| {max(x['seconds'] for x in ranks):.1f} |")
    allr = [x["rss_ratio"] for r in results for x in r["ranks"]]
    allt = [x["tracemalloc_ratio"] for r in results for x in r["ranks"]]
    lines += ["", f"Over all {len(allr)} ranks of {len(results)} cases: RSS ÷ plan "
              f"{min(allr):.3f}–{max(allr):.3f} (target ≤ {TARGET}: "
              f"{'met' if max(allr) <= TARGET else 'MISSED'}); traced ÷ plan "
              f"{min(allt):.3f}–{max(allt):.3f}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two small cases")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per mpiexec launch")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--layer")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--grid")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    from mpi4py import MPI

    results = []
    for case in QUICK if args.quick else CASES:
        print(f"[memory] {case}", flush=True)
        r = run_case(case, args.timeout)
        worst = max(x["rss_ratio"] for x in r["ranks"])
        print(f"[memory]   RSS/plan max {worst:.3f} ({r['wall_seconds']:.0f} s)", flush=True)
        results.append(r)
    meta = {"command": COMMAND + (" --quick" if args.quick else ""),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(),
            "cores": os.cpu_count(), "mpi": MPI.Get_library_version().splitlines()[0].strip()}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "memory_quick" if args.quick else "memory"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "target": TARGET,
                                                  "cases": results}, indent=1))
    (out / f"{stem}.md").write_text(markdown(results, meta))
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
