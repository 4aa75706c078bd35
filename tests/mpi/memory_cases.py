"""Memory of distributed runs and of scatter/gather, measured by ``tracemalloc`` per rank.

Usage: ``mpiexec -n P python tests/mpi/memory_cases.py RESULTS.json``

For each case every rank generates its blocks and runs :func:`conv2d_distributed` under
``tracemalloc`` (numpy reports its buffers to it) and records the traced peak above the
start next to the plan's per-rank memory without the MPI library's own reduce-scatter
temporary (which ``tracemalloc`` cannot see). Then rank 0 scatters global operands and
gathers the output, recording its traced peak beyond the global arrays and the largest
block. Rank 0 writes RESULTS.json.
"""

from __future__ import annotations

import json
import sys
import tracemalloc

import numpy as np
from mpi4py import MPI

from parconv.dtypes import parse_precision
from parconv.planner.partition import Grid, peak_memory_bits, rank_memory_buffers, rank_memory_bytes
from parconv.runtime import (
    conv2d_distributed,
    gather_blocks,
    scatter_operands,
    seeded_operands_global,
    seeded_operands_local,
)
from parconv.runtime.api import block_ranges
from parconv.runtime.errors import abort_on_exception
from parconv.spec import ConvSpec

#: (name, grid, ConvSpec arguments): channel, spatial (halo), k and batch splits, 3 ranks.
CASES = [
    ("c split", "1x1x3x1x1", dict(batch=16, in_channels=24, out_channels=32, in_size=(64, 64),
                                  kernel=3, padding=1)),
    ("h split halo", "1x1x1x3x1", dict(batch=12, in_channels=16, out_channels=24,
                                       in_size=(96, 64), kernel=5, padding=2)),
    ("k split int8", "1x3x1x1x1", dict(batch=16, in_channels=12, out_channels=30,
                                       in_size=(72, 72), kernel=3, precision="int8")),
    ("b split stride 2", "3x1x1x1x1", dict(batch=18, in_channels=16, out_channels=32,
                                           in_size=(97, 97), kernel=3, stride=2)),
]


def make_spec(d: dict) -> ConvSpec:
    d = dict(d)
    return ConvSpec(precision=parse_precision(d.pop("precision", "fp32")), **d)


def run_case(comm, name: str, grid_text: str, args: dict) -> dict:
    rank = comm.Get_rank()
    spec, grid = make_spec(args), Grid.parse(grid_text)
    # warm-up (numba dispatch, communicator creation) outside the measurement
    conv2d_distributed(spec, grid, *seeded_operands_local(spec, grid, rank, 1), comm)
    comm.Barrier()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    x, w = seeded_operands_local(spec, grid, rank, 0)
    res = conv2d_distributed(spec, grid, x, w, comm)
    peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    buffers = rank_memory_buffers(spec, grid, rank)
    numpy_plan = int(peak_memory_bits(spec.precision, {**buffers, "mpi_reduce_scatter": 0}))
    row = {"rank": rank, "traced": peak, "plan_numpy": numpy_plan // 8,
           "plan": rank_memory_bytes(spec, grid, rank), "out_shape": list(res.output.shape)}
    rows = comm.gather(row, root=0)
    return {"name": name, "grid": grid_text, "ranks": rows} if rank == 0 else {}


def scatter_gather(comm) -> dict:
    """Root memory and bytes of scatter_operands / gather_blocks on a layer whose global
    arrays are much larger than one block."""
    rank = comm.Get_rank()
    spec = make_spec(dict(batch=6, in_channels=12, out_channels=9, in_size=(64, 64),
                          kernel=3, padding=1))
    grid = Grid.parse("3x1x1x1x1")
    xg, wg = seeded_operands_global(spec, 5) if rank == 0 else (None, None)
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    x, w = scatter_operands(spec, grid, comm, xg, wg)
    scatter_peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    lx, lw = seeded_operands_local(spec, grid, rank, 5)
    blocks_equal = bool(np.array_equal(x, lx) and np.array_equal(w, lw)
                        and x.dtype == lx.dtype and w.dtype == lw.dtype)
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    xb = gather_blocks(spec, grid, "input", x, comm)
    gather_peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    eq = comm.gather(blocks_equal, root=0)
    # a bad block is refused on every rank (no hang)
    bad = x[:, :1] if rank == 1 else x
    try:
        gather_blocks(spec, grid, "input", bad, comm)
        refused = False
    except ValueError as exc:
        refused = "rank 1" in str(exc)
    refusals = comm.gather(refused, root=0)
    if rank != 0:
        return {}
    sizes = [int(np.prod([hi - lo for lo, hi in block_ranges(spec, grid, r, "input")]))
             * xg.itemsize for r in range(grid.size)]
    wsizes = [int(np.prod([hi - lo for lo, hi in block_ranges(spec, grid, r, "filter")]))
              * wg.itemsize for r in range(grid.size)]
    return {"scatter_peak": scatter_peak, "gather_peak": gather_peak,
            "global_input": xg.nbytes, "max_input_block": max(sizes),
            "max_filter_block": max(wsizes), "own_blocks": sizes[0] + wsizes[0],
            "blocks_equal": eq, "gathered_equal": bool(np.array_equal(xb, xg)),
            "refused_everywhere": refusals}


def main() -> None:
    comm = MPI.COMM_WORLD
    with abort_on_exception(comm):
        results = [run_case(comm, *c) for c in CASES]
        sg = scatter_gather(comm)
    if comm.Get_rank() == 0:
        with open(sys.argv[1], "w") as fh:
            json.dump({"cases": results, "scatter_gather": sg}, fh)


if __name__ == "__main__":
    main()
