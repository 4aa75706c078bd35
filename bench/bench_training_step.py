"""Wall time of one layer's distributed training step (forward + backward) at P = 1, 2, 4
MPI ranks against PyTorch CPU forward + backward with the same total threads.

A few ResNet-50 layers at batch 8, float32. For each P one ``mpiexec -n P`` job
(``--worker``) builds a :class:`parconv.runtime.DistributedConv2d` on the planner's
``step`` grid, runs ``--repeats`` steps (forward of seeded blocks, then backward of a
seeded output gradient; one warm-up step first) and records each step's wall time as the
maximum over ranks; then, in the same job while the other ranks wait at a barrier, rank 0
times PyTorch (``torch.nn.functional.conv2d`` forward and ``backward`` for the input and
weight gradients) with ``torch.set_num_threads(P)``. The ratio PyTorch ÷ parconv (> 1:
parconv faster) uses the median of each, measured under the same load. Each rank runs
one kernel thread (``PARCONV_THREADS=1``).

This machine has 2 cores shared with other jobs: P = 4 is **oversubscribed** (4 ranks on
2 cores, and PyTorch with 4 threads likewise), so its times measure contention as much as
scaling. PyTorch (CPU) is a benchmark-only dependency.

Reproduce: ``.venv/bin/python bench/bench_training_step.py`` (writes
``bench/results/training_step.json`` and ``.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("resnet50/layer1.0.conv2", "resnet50/layer2.0.conv1", "resnet50/layer3.1.conv2",
          "resnet50/layer4.0.conv2")
PROCS = (1, 2, 4)
BATCH = 8


def worker(args) -> None:
    """Under mpiexec: time parconv steps, then (rank 0) PyTorch with P threads."""
    from mpi4py import MPI

    from parconv.layers import layer
    from parconv.passes import training_precision
    from parconv.planner.plan import plan
    from parconv.runtime import DistributedConv2d
    from parconv.runtime.api import block_ranges, seeded_block, seeded_operands_local

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    fp = training_precision("fp32").forward_precision
    rows = []
    for name in args.layers:
        spec = layer(name, args.batch, fp)
        grid = plan(spec, size, pass_="step").grid
        lay = DistributedConv2d(spec, grid, comm)
        x, w = seeded_operands_local(spec, grid, rank, 0)
        g = seeded_block(spec, "grad_output", block_ranges(spec, grid, rank, "grad_output"), 0)
        times = []
        for i in range(args.repeats + 1):
            comm.Barrier()
            t0 = time.perf_counter()
            lay.forward(x, w)
            lay.backward(g)
            dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
            if i:                      # the first step warms up (numba dispatch, caches)
                times.append(dt)
        lay.free()
        torch_times = []
        if rank == 0:
            import torch

            torch.set_num_threads(size)
            tx = torch.from_numpy(seeded_block(spec, "input", tuple((0, n) for n in
                                                                 spec.input_shape), 0))
            tw = torch.from_numpy(seeded_block(spec, "filter", tuple((0, n) for n in
                                                                  spec.filter_shape), 0))
            tg = torch.from_numpy(seeded_block(spec, "grad_output", tuple((0, n) for n in
                                                                       spec.output_shape), 0))
            tx.requires_grad_(True)
            tw.requires_grad_(True)
            for i in range(args.repeats + 1):
                tx.grad = tw.grad = None
                t0 = time.perf_counter()
                y = torch.nn.functional.conv2d(tx, tw, None, spec.stride, spec.padding,
                                               spec.dilation)
                y.backward(tg)
                if i:
                    torch_times.append(time.perf_counter() - t0)
        comm.Barrier()
        if rank == 0:
            pc, pt = statistics.median(times), statistics.median(torch_times)
            rows.append({"layer": name, "procs": size, "grid": str(grid),
                         "parconv_s": pc, "torch_s": pt, "torch_over_parconv": pt / pc,
                         "parconv_times": times, "torch_times": torch_times})
            print(f"P={size} {name}: grid {grid} parconv {pc:.4f} s, torch {pt:.4f} s, "
                  f"ratio {pt / pc:.2f}", flush=True)
    if rank == 0:
        Path(args.worker).write_text(json.dumps(rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--layers", nargs="+", default=list(LAYERS))
    ap.add_argument("--procs", type=int, nargs="+", default=list(PROCS))
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    env = dict(os.environ, PARCONV_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    rows, cmds = [], []
    t0 = time.perf_counter()
    for p in args.procs:
        tmp = Path(args.out) / f".training_step_{p}.json"
        cmd = [mpiexec, "-n", str(p), sys.executable, __file__, "--worker", str(tmp),
               "--batch", str(args.batch), "--repeats", str(args.repeats), "--layers",
               *args.layers]
        cmds.append(" ".join(["mpiexec", "-n", str(p), "python", "bench/bench_training_step.py",
                              "--worker", "OUT", "..."]))
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=900)
        rows += json.loads(tmp.read_text())
        tmp.unlink()
    res = {"command": ".venv/bin/python bench/bench_training_step.py", "workers": cmds,
           "machine": platform.platform(), "cpus": os.cpu_count(), "batch": args.batch,
           "repeats": args.repeats, "seconds": time.perf_counter() - t0, "rows": rows}
    out = Path(args.out)
    (out / "training_step.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = ["# Training step wall time: parconv (MPI ranks) vs PyTorch CPU", "",
             f"Reproduce: `{res['command']}` (machine: {res['machine']}, {res['cpus']} CPUs "
             "shared with other jobs). " + __doc__.split("\n\n")[1].replace("\n", " "), "",
             "P = 4 is oversubscribed (4 ranks / 4 PyTorch threads on 2 cores).", "",
             "| layer | P | grid (step plan) | parconv step s (median) | PyTorch fwd+bwd s "
             "(median, P threads) | PyTorch ÷ parconv |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['procs']}{' (oversubscribed)' if r['procs'] > 2 else ''}"
                     f" | {r['grid']} | {r['parconv_s']:.4f} | {r['torch_s']:.4f} | "
                     f"{r['torch_over_parconv']:.2f} |")
    for p in args.procs:
        rs = [r["torch_over_parconv"] for r in rows if r["procs"] == p]
        gm = math.exp(sum(math.log(x) for x in rs) / len(rs))
        lines.append(f"\nP = {p}: geomean PyTorch ÷ parconv = {gm:.2f}")
    (out / "training_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
