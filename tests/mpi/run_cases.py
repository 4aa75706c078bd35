"""Run many distributed-convolution cases inside ONE ``mpiexec`` launch.

Usage: ``mpiexec -n P python tests/mpi/run_cases.py CASES.json RESULTS.json``

``CASES.json`` is a list of ``{"name", "spec": {...ConvSpec fields, "dtype"}, "grid",
"seed"}`` (optional ``"source": "scatter"``: the operands are
built on rank 0 and scattered instead of generated per rank). Each case runs on every rank through the public API (seeded local blocks,
:func:`conv2d_distributed`), then rank 0 gathers the output, compares it with the
reference and compares every rank's measured bytes with ``partition.rank_volume``.
A case whose grid is refused records the error message (raised on every rank before
any communication). Rank 0 writes ``RESULTS.json``: one entry per case.
"""

from __future__ import annotations

import json
import sys
import time

from mpi4py import MPI

from parconv.dtypes import parse_precision
from parconv.planner.partition import Grid, rank_volume
from parconv.runtime import (
    RunInputError,
    conv2d_distributed,
    gather_blocks,
    scatter_operands,
    seeded_operands_global,
    seeded_operands_local,
)
from parconv.runtime.errors import abort_on_exception
from parconv.runtime.verify import compare
from parconv.spec import ConvSpec


def make_spec(d: dict) -> ConvSpec:
    d = dict(d)
    prec = parse_precision(d.pop("dtype", "fp32"))
    return ConvSpec(precision=prec, **d)


def run_case(comm, case: dict) -> dict | None:
    rank = comm.Get_rank()
    spec, grid = make_spec(case["spec"]), Grid.parse(case["grid"])
    t0 = time.perf_counter()
    try:
        if case.get("source") == "scatter":  # global arrays on rank 0, scattered
            xg, wg = seeded_operands_global(spec, case.get("seed", 0)) if rank == 0 else (None, None)
            x, w = scatter_operands(spec, grid, comm, xg, wg)
        elif grid.size == comm.Get_size():
            x, w = seeded_operands_local(spec, grid, rank, case.get("seed", 0))
        else:
            x, w = None, None
        if case.get("corrupt_rank") == rank:
            x = x.astype("float64")
        res = conv2d_distributed(spec, grid, x, w, comm)
    except RunInputError as exc:
        return {"name": case["name"], "error": str(exc)} if rank == 0 else None
    out = gather_blocks(spec, grid, "output", res.output, comm)
    measured = comm.gather({op: list(v) for op, v in res.measured.items()}, root=0)
    seconds = comm.gather(res.stats.seconds, root=0)
    if rank != 0:
        return None
    xg, wg = seeded_operands_global(spec, case.get("seed", 0))
    verdict = compare(spec, xg, wg, out)
    planned = [{op: list(v) for op, v in rank_volume(spec, grid, r).items()} for r in range(grid.size)]
    return {"name": case["name"], "ok": verdict.ok, "message": verdict.message,
            "worst_ratio": verdict.worst_ratio, "measured": measured, "planned": planned,
            "bytes_match": measured == planned, "seconds": time.perf_counter() - t0,
            "phase_seconds": seconds}


def run_all(run_case) -> None:
    """``run_case(comm, case)`` on every rank for each case of ``CASES.json``
    (``sys.argv[1]``) under :func:`abort_on_exception`; rank 0 writes its results to
    ``RESULTS.json`` (``sys.argv[2]``)."""
    comm = MPI.COMM_WORLD
    with open(sys.argv[1]) as fh:
        cases = json.load(fh)
    results = []
    with abort_on_exception(comm):
        for case in cases:
            r = run_case(comm, case)
            if comm.Get_rank() == 0:
                results.append(r)
    if comm.Get_rank() == 0:
        with open(sys.argv[2], "w") as fh:
            json.dump(results, fh, indent=1)


def main() -> None:
    run_all(run_case)


if __name__ == "__main__":
    main()
