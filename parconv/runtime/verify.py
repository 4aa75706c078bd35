"""Checking a distributed result against :mod:`parconv.reference` (on one rank).

Integers must match bit for bit. Floats are compared with the float64 reference under
the per-element tolerance

    |out − ref| ≤ (1 + u_out)·16·√(n)·u_acc·Σ|x·w| + u_out·|ref| + s_out/2,   n = C·R·S,

the probabilistic rounding-error bound of an n-term accumulation (Higham & Mary 2019)
with a wide constant, plus the final rounding to the output type (s_out: its smallest
subnormal). A wrong or missing
halo row changes whole terms of size |x·w| and exceeds it by orders of magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import dtypes
from ..reference import conv2d_reference, reference_for_spec
from ..spec import ConvSpec


@dataclass(frozen=True)
class Verdict:
    """Outcome of :func:`compare`: ``ok``, the worst error and its tolerance ratio."""

    ok: bool
    message: str
    max_abs_error: float
    worst_ratio: float  # max over elements of error / tolerance (0 for exact ints)


def unit_roundoff(name: str) -> float:
    """Unit roundoff 2^-t of a floating dtype (t mantissa bits incl. the implicit one)."""
    t = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}[dtypes.canonical(name)]
    return 2.0 ** -t


def _half_subnormal(name: str) -> float:
    import ml_dtypes

    dt = dtypes.numpy_dtype(name)
    info = ml_dtypes.finfo(dt) if dtypes.canonical(name) == "bfloat16" else np.finfo(dt)
    return float(info.smallest_subnormal) / 2.0


def compare(spec: ConvSpec, x: np.ndarray, w: np.ndarray, out: np.ndarray) -> Verdict:
    """Compare a gathered output with the reference convolution of ``x`` and ``w``."""
    p = spec.precision
    if tuple(out.shape) != tuple(spec.output_shape):
        return Verdict(False, f"output shape {out.shape} != expected {spec.output_shape}", np.inf, np.inf)
    if out.dtype != dtypes.numpy_dtype(p.output):
        return Verdict(False, f"output dtype {out.dtype} != expected {p.output}", np.inf, np.inf)
    if p.is_integer:
        ref = reference_for_spec(spec, x, w)
        bad = np.flatnonzero(out.ravel() != ref.ravel())
        if bad.size:
            i = np.unravel_index(bad[0], out.shape)
            err = float(np.abs(out.astype(np.int64) - ref.astype(np.int64)).max())
            return Verdict(False, f"{bad.size} of {out.size} integer outputs differ from the "
                           f"reference (first at {tuple(int(v) for v in i)}: {out[i]} != {ref[i]})",
                           err, np.inf)
        return Verdict(True, f"all {out.size} integer outputs bit-exact", 0.0, 0.0)
    args = (spec.stride, spec.padding, spec.dilation, "float64")
    ref = conv2d_reference(x, w, *args)
    absconv = conv2d_reference(np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64)), *args)
    n = spec.C * spec.R * spec.S
    u_out = unit_roundoff(p.output)
    tol = ((1.0 + u_out) * 16.0 * np.sqrt(n) * unit_roundoff(p.accum) * absconv
           + u_out * np.abs(ref) + _half_subnormal(p.output))
    err = np.abs(out.astype(np.float64) - ref)
    ratio = err / tol
    worst = float(np.nanmax(ratio)) if ratio.size else 0.0
    bad = ~(ratio <= 1.0)  # NaN counts as bad
    if bad.any():
        i = np.unravel_index(int(np.argmax(np.where(bad, ratio, -1))), out.shape)
        return Verdict(False, f"{int(bad.sum())} of {out.size} outputs outside tolerance (worst at "
                       f"{tuple(int(v) for v in i)}: {float(out[i])} vs reference {ref[i]:.6g}, "
                       f"tolerance {tol[i]:.3g})", float(np.nanmax(err)), worst)
    return Verdict(True, f"all {out.size} outputs within tolerance (max error {err.max():.3g}, "
                   f"worst error/tolerance {worst:.3g})", float(err.max()), worst)
