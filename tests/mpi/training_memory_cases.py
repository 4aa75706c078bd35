"""Memory of a distributed training step, measured by ``tracemalloc`` per rank.

Usage: ``mpiexec -n 3 python tests/mpi/training_memory_cases.py RESULTS.json``

For each case every rank builds a :class:`parconv.runtime.DistributedConv2d` (outside the
measurement, as a persistent layer is), warms it up with one step, then under
``tracemalloc`` generates its input and filter blocks, runs ``forward``, generates its
output-gradient block and runs ``backward``. The traced peak above the start is recorded
next to the plan's step memory for that rank without the MPI library's own
reduce-scatter temporaries (which ``tracemalloc`` cannot see). Rank 0 writes RESULTS.json.
"""

from __future__ import annotations

import json
import sys
import tracemalloc

from mpi4py import MPI

from parconv.passes import training_precision
from parconv.planner.partition import Grid, peak_memory_bits, rank_memory_buffers, rank_memory_bytes
from parconv.runtime import DistributedConv2d
from parconv.runtime.api import block_ranges, seeded_block, seeded_operands_local
from parconv.runtime.errors import abort_on_exception
from parconv.spec import ConvSpec

#: (name, grid, ConvSpec arguments, training preset): every split kind at 3 ranks.
CASES = [
    ("c split", "1x1x3x1x1", dict(batch=8, in_channels=24, out_channels=32, in_size=(48, 48),
                                  kernel=3, padding=1), "fp32"),
    ("h split halo", "1x1x1x3x1", dict(batch=6, in_channels=16, out_channels=24,
                                       in_size=(72, 48), kernel=5, padding=2), "fp32"),
    ("k split bf16", "1x3x1x1x1", dict(batch=8, in_channels=12, out_channels=30,
                                       in_size=(56, 56), kernel=3, padding=1), "bf16"),
    ("b split stride 2", "3x1x1x1x1", dict(batch=12, in_channels=16, out_channels=32,
                                           in_size=(65, 65), kernel=3, stride=2), "fp32"),
]

MPI_TEMPS = ("mpi_reduce_scatter", "mpi_drs", "mpi_dfrs")


def run_case(comm, name: str, grid_text: str, args: dict, preset: str) -> dict:
    rank = comm.Get_rank()
    spec = ConvSpec(precision=training_precision(preset).forward_precision, **args)
    grid = Grid.parse(grid_text)
    layer = DistributedConv2d(spec, grid, comm)
    gr = block_ranges(spec, grid, rank, "grad_output")
    # warm-up (numba dispatch) outside the measurement
    layer.forward(*seeded_operands_local(spec, grid, rank, 1))
    layer.backward(seeded_block(spec, "grad_output", gr, 1))
    comm.Barrier()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    x, w = seeded_operands_local(spec, grid, rank, 0)
    y = layer.forward(x, w)
    g = seeded_block(spec, "grad_output", gr, 0)
    gx, gw = layer.backward(g)
    peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    layer.free()
    n = rank_memory_buffers(spec, grid, rank, "step")
    numpy_plan = int(peak_memory_bits(spec.precision, {**n, **dict.fromkeys(MPI_TEMPS, 0)},
                                      "step")) // 8
    row = {"rank": rank, "traced": peak, "plan_numpy": numpy_plan,
           "plan": rank_memory_bytes(spec, grid, rank, "step"),
           "shapes": [list(a.shape) for a in (y, gx, gw)]}
    rows = comm.gather(row, root=0)
    return {"name": name, "grid": grid_text, "ranks": rows} if rank == 0 else {}


def main() -> None:
    comm = MPI.COMM_WORLD
    with abort_on_exception(comm):
        results = [run_case(comm, *c) for c in CASES]
    if comm.Get_rank() == 0:
        with open(sys.argv[1], "w") as fh:
            json.dump({"cases": results}, fh)


if __name__ == "__main__":
    main()
