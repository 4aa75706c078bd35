"""The distributed runtime: run a planned grid under MPI, counting every byte.

It executes the pure per-rank schedule of :mod:`parconv.planner.schedule` (re-exported
here as ``Schedule``/``build_schedule``); the MPI parts (:mod:`comm`, :mod:`exchange`,
:mod:`execute`, :mod:`backward`, :mod:`layer`) load mpi4py only when used.
"""

from __future__ import annotations

from ..planner.schedule import Schedule, build_schedule
from .api import (
    RunResult,
    block_ranges,
    conv2d_distributed,
    gather_blocks,
    local_block,
    scatter_operands,
    seeded_block,
    seeded_operands_global,
    seeded_operands_local,
)
from .errors import RunInputError
from .layer import DistributedConv2d

__all__ = ["DistributedConv2d", "RunInputError", "RunResult", "Schedule", "block_ranges",
           "build_schedule", "conv2d_distributed", "gather_blocks", "local_block",
           "scatter_operands", "seeded_block",
           "seeded_operands_global", "seeded_operands_local"]
