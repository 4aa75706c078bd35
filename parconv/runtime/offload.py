"""Local compute on a modelled Gemmini accelerator (``parconv run --offload gemmini``).

Replaces step 4 of :func:`parconv.runtime.execute.execute`: the rank's input window is
zero-padded explicitly (Gemmini's convolution takes a padded input and no offset) and
run through :func:`parconv.gemmini.offload.run_local`, which returns the exact int32
accumulator and the modelled cycles and DRAM bytes of this node.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..planner.schedule import Schedule
from ..spec import ConvSpec


def check_offload(spec: ConvSpec, target: str | None) -> None:
    """Reject an offload the target cannot run (before any communication).

    Raises
    ------
    ValueError
        For an unknown target or a precision other than int8/uint8 × int8 → int32.
    """
    if target in (None, "none"):
        return
    if target != "gemmini":
        raise ValueError(f"--offload {target!r}: expected 'gemmini' or 'none'")
    p = spec.precision
    if not (p.input in ("int8", "uint8") and p.filter == "int8" and p.accum == "int32"):
        raise ValueError(f"--offload gemmini runs int8/uint8 x int8 -> int32 only (--dtype int8 "
                         f"or uint8), got {p.label()}")


def padded_window(x_win: np.ndarray, sched: Schedule) -> np.ndarray:
    """The window re-based so that output (0, 0), tap (0, 0) reads element (0, 0), with
    explicit zeros wherever the kernel offset reads outside the window (padding)."""
    spec = sched.spec
    out_hw = (sched.sizes["out_h"], sched.sizes["out_w"])
    need = [spec.stride[a] * (out_hw[a] - 1) + spec.dilation[a] * (spec.kernel[a] - 1) + 1
            for a in range(2)]
    xp = np.zeros((*x_win.shape[:2], *need), x_win.dtype)
    src, dst = [], []
    for a in range(2):
        o, n = sched.offset[a], x_win.shape[2 + a]
        lo, hi = max(0, -o), min(need[a], n - o)
        dst.append(slice(lo, max(lo, hi)))
        src.append(slice(lo + o, max(lo, hi) + o))
    xp[:, :, dst[0], dst[1]] = x_win[:, :, src[0], src[1]]
    return xp


def gemmini_local_compute(x_win: np.ndarray, filt: np.ndarray,
                          sched: Schedule) -> tuple[np.ndarray, dict[str, Any]]:
    """Step 4 on Gemmini: ``(int32 partial output, {"gemmini": report})``."""
    from ..gemmini.offload import run_local

    spec = sched.spec
    acc, report = run_local(padded_window(x_win, sched), filt, spec.stride, spec.dilation)
    expect = (x_win.shape[0], filt.shape[0], sched.sizes["out_h"], sched.sizes["out_w"])
    if tuple(acc.shape) != expect:
        raise ValueError(f"internal error: Gemmini output {acc.shape} != expected {expect}")
    dram = report["dram_bytes"]
    return np.ascontiguousarray(acc, dtype=np.int32), {"gemmini": {
        "cycles": int(report["cycles"]),
        "dram_bytes": int(dram["total"] if isinstance(dram, dict) else dram),
        "utilisation": float(report.get("utilisation", 0.0)),
        "vendor_cycles": report.get("vendor_cycles"),
    }}
