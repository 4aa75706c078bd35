"""parconv: communication-optimal distributed-memory parallel convolution.

Pure layers (no MPI): :mod:`parconv.spec` (the problem), :mod:`parconv.bounds` (lower
bounds), :mod:`parconv.tiling` (sequential tilings), :mod:`parconv.planner.partition` and
:mod:`parconv.planner.plan` (processor grid and exact per-rank volumes). The MPI runtime
(:mod:`parconv.runtime`) executes a plan; kernels (:mod:`parconv.kernels`) know nothing
of MPI; :mod:`parconv.gemmini` models the Gemmini accelerator.
"""

from .conv import conv2d, conv2d_grad_input, conv2d_grad_weight
from .dtypes import PRESETS, Precision, parse_precision
from .layers import layer, suite
from .planner.partition import Grid
from .reference import conv2d_reference
from .spec import Axis, ConvSpec

__version__ = "0.1.0"

__all__ = ["PRESETS", "Axis", "ConvSpec", "Grid", "Precision", "conv2d", "conv2d_grad_input",
           "conv2d_grad_weight", "conv2d_reference", "layer",
           "parse_precision", "suite", "__version__"]
