"""Gemmini offload path: the accelerator's configuration, the C library's tile chooser
(:func:`vendor_tile`), parconv's communication-optimal tiling, a bit-exact simulator that
counts DRAM bytes and models cycles, C export, and the per-rank offload entry point
(:func:`parconv.gemmini.offload.run_local`). See ``docs/gemmini.md``.
"""

from .config import DEFAULT, GemminiConfig, config_from_dict, load_config
from .simulator import SimResult, reference_output, requantize, simulate
from .tiling import Cost, Plan, compare, evaluate, parconv_plan, vendor_plan
from .vendor import TILE_FIELDS, vendor_tile

__all__ = ["DEFAULT", "Cost", "GemminiConfig", "Plan", "SimResult", "TILE_FIELDS", "compare",
           "config_from_dict", "evaluate", "load_config", "parconv_plan", "reference_output",
           "requantize", "simulate", "vendor_plan", "vendor_tile"]
