"""Overlapped vs sequential order, both on every case, inside ONE ``mpiexec`` launch.

Usage: ``mpiexec -n P python tests/mpi/overlap_cases.py CASES.json RESULTS.json``

``CASES.json``: a list of ``{"name", "spec", "grid", "seed"}`` as for run_cases.py plus
an optional ``"timeout"`` (both runs under that collective deadline). Every rank runs
:func:`conv2d_distributed` with ``overlap=True`` and ``overlap=False`` on its seeded
blocks; rank 0 gathers both outputs and records whether they are byte-identical, both
verdicts against the reference and every rank's measured bytes of both runs next to the
plan. Rank 0 writes ``RESULTS.json``.
"""

from __future__ import annotations

import sys

import numpy as np

from parconv.planner.partition import Grid, rank_volume
from parconv.runtime import (
    conv2d_distributed,
    gather_blocks,
    seeded_operands_global,
    seeded_operands_local,
)
from parconv.runtime.verify import compare

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from run_cases import make_spec, run_all  # noqa: E402


def run_case(comm, case: dict) -> dict | None:
    rank = comm.Get_rank()
    spec, grid = make_spec(case["spec"]), Grid.parse(case["grid"])
    x, w = seeded_operands_local(spec, grid, rank, case.get("seed", 0))
    out, info = {}, {}
    for mode in (True, False):
        res = conv2d_distributed(spec, grid, x, w, comm, timeout=case.get("timeout"),
                                 overlap=mode)
        key = "overlap" if mode else "sequential"
        out[key] = gather_blocks(spec, grid, "output", res.output, comm)
        info[key] = {
            "measured": comm.gather({op: list(v) for op, v in res.measured.items()}, root=0),
            "tiles": comm.gather(res.stats.extra["tiles"], root=0),
            "time": comm.gather(res.stats.time, root=0)}
    if rank != 0:
        return None
    xg, wg = seeded_operands_global(spec, case.get("seed", 0))
    planned = [{op: list(v) for op, v in rank_volume(spec, grid, r).items()}
               for r in range(grid.size)]
    a, b = out["overlap"], out["sequential"]
    return {"name": case["name"], "planned": planned, **info,
            "identical": a.dtype == b.dtype and np.array_equal(a.view(np.uint8),
                                                               b.view(np.uint8)),
            "max_abs_diff": float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)),
                                         initial=0.0)),
            "ok": {k: compare(spec, xg, wg, v).ok for k, v in out.items()}}


def main() -> None:
    run_all(run_case)


if __name__ == "__main__":
    main()
