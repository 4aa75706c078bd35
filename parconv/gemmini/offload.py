"""Per-rank offload: one rank's local convolution through the Gemmini model.

The MPI runtime calls :func:`run_local` on each rank's already padded local input
block; it gets back the raw int32 accumulator (partial sums are reduced across ranks
before any scaling) and a report of modelled cycles and DRAM bytes for parconv's tiling
and the vendor's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..dtypes import PRESETS
from ..spec import ConvSpec
from .config import DEFAULT, GemminiConfig
from .simulator import simulate
from .tiling import evaluate, parconv_plan, vendor_plan


def run_local(x_int8_padded: np.ndarray, w_int8: np.ndarray, stride=1, dilation=1,
              config: GemminiConfig | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Run one local convolution (no padding: ``x`` is already zero-padded) on Gemmini.

    Parameters
    ----------
    x_int8_padded : (B, C, Hp, Wp) int8 or uint8, padding included.
    w_int8 : (K, C, R, S) int8.
    stride, dilation : int or pair.
    config : the Gemmini build (default configuration when None).

    Returns
    -------
    acc : (B, K, H, W) int32, the raw accumulator (exact sum, no scaling).
    report : dict with ``cycles`` (parconv tiling, modelled), ``dram_bytes`` (per array
        and ``total``), ``tile`` (7-entry form), ``order``, ``utilisation``,
        ``vendor_cycles`` and ``vendor_dram_bytes`` (the library's tiling on the same
        local problem; None when it is not square) and ``vendor_tile``.

    Raises
    ------
    ValueError
        For dtypes other than int8/uint8 × int8 (naming the dtype) or bad shapes.
    """
    cfg = config or DEFAULT
    x, w = np.asarray(x_int8_padded), np.asarray(w_int8)
    if x.dtype not in (np.int8, np.uint8):
        raise ValueError(f"Gemmini offload supports int8/uint8 inputs only, got input dtype {x.dtype}")
    if w.dtype != np.int8:
        raise ValueError(f"Gemmini offload supports int8 weights only, got weight dtype {w.dtype}")
    if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[1]:
        raise ValueError(f"expected x (B,C,H,W) and w (K,C,R,S) with equal C, got {x.shape}, {w.shape}")
    prec = PRESETS["uint8" if x.dtype == np.uint8 else "int8"]
    spec = ConvSpec(x.shape[0], x.shape[1], w.shape[0], x.shape[2:], w.shape[2:], stride, 0,
                    dilation, prec, "local")
    vendor = None
    try:
        vp = vendor_plan(spec, cfg)
        vendor = (vp, evaluate(spec, vp, cfg, raw=True))
    except ValueError:  # non-square local block: the library's chooser does not apply
        pass
    plan, _ = parconv_plan(spec, cfg, raw=True,
                           max_bytes=vendor[1].dram_bytes["total"] if vendor else None)
    res = simulate(spec, x, w, plan, cfg, raw=True)
    report = {
        "cycles": res.cycles, "dram_bytes": res.dram_bytes, "tile": list(plan.tile),
        "order": "".join(plan.order), "macs": spec.macs,
        "utilisation": spec.macs / (cfg.peak_macs_per_cycle * res.cycles) if res.cycles else 0.0,
        "vendor_cycles": vendor[1].cycles if vendor else None,
        "vendor_dram_bytes": vendor[1].dram_bytes if vendor else None,
        "vendor_tile": list(vendor[0].tile) if vendor else None,
    }
    return res.output, report
