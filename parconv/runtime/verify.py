"""Checking a distributed result against :mod:`parconv.reference` (on one rank).

Integers must match bit for bit. Floats are compared with the float64 reference under
the per-element tolerance

    |out − ref| ≤ (1 + u_out)·16·√(n)·u_acc·Σ|x·w| + u_out·|ref| + s_out/2,   n = C·R·S,

the probabilistic rounding-error bound of an n-term accumulation (Higham & Mary 2019)
with a wide constant, plus the final rounding to the output type (s_out: its smallest
subnormal). The gradients use the same test (:func:`compare_grad_input`: ``n = K·R·S``,
delivered in the input dtype; :func:`compare_grad_weight`: ``n = B·H·W``, delivered in the
accumulator dtype). A wrong or missing
halo row changes whole terms of size |x·w| and exceeds it by orders of magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import dtypes
from ..reference import (
    conv2d_grad_input_reference,
    conv2d_grad_weight_reference,
    conv2d_reference,
    reference_for_spec,
)
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
    return _within("outputs", out, ref, absconv, spec.C * spec.R * spec.S, p.accum, p.output)


def _within(what: str, out: np.ndarray, ref: np.ndarray, absconv: np.ndarray, n: int,
            accum: str, delivered: str) -> Verdict:
    """The float tolerance test of the module docstring: ``n`` terms accumulated in
    ``accum``, the result rounded to ``delivered``."""
    u_out = unit_roundoff(delivered)
    tol = ((1.0 + u_out) * 16.0 * np.sqrt(n) * unit_roundoff(accum) * absconv
           + u_out * np.abs(ref) + _half_subnormal(delivered))
    err = np.abs(out.astype(np.float64) - ref)
    ratio = err / tol
    worst = float(np.nanmax(ratio)) if ratio.size else 0.0
    bad = ~(ratio <= 1.0)  # NaN counts as bad
    if bad.any():
        i = np.unravel_index(int(np.argmax(np.where(bad, ratio, -1))), out.shape)
        return Verdict(False, f"{int(bad.sum())} of {out.size} {what} outside tolerance (worst at "
                       f"{tuple(int(v) for v in i)}: {float(out[i])} vs reference {ref[i]:.6g}, "
                       f"tolerance {tol[i]:.3g})", float(np.nanmax(err)), worst)
    return Verdict(True, f"all {out.size} {what} within tolerance (max error "
                   f"{float(err.max(initial=0.0)):.3g}, worst error/tolerance {worst:.3g})",
                   float(err.max(initial=0.0)), worst)


def _check_array(what: str, a: np.ndarray, shape, dtype: str) -> Verdict | None:
    if tuple(a.shape) != tuple(shape):
        return Verdict(False, f"{what} shape {a.shape} != expected {tuple(shape)}", np.inf, np.inf)
    if a.dtype != dtypes.numpy_dtype(dtype):
        return Verdict(False, f"{what} dtype {a.dtype} != expected {dtype}", np.inf, np.inf)
    return None


def compare_grad_input(spec: ConvSpec, grad_out: np.ndarray, w: np.ndarray,
                       grad_x: np.ndarray) -> Verdict:
    """Compare a gathered input gradient (input dtype) with
    :func:`parconv.reference.conv2d_grad_input_reference`: ``n = K·R·S`` terms per element
    (an upper bound), accumulated in the accumulator dtype, delivered in the input dtype."""
    p = spec.precision
    bad = _check_array("grad_input", grad_x, spec.input_shape, p.input)
    if bad:
        return bad
    args = (spec.input_shape, spec.stride, spec.padding, spec.dilation)
    ref = conv2d_grad_input_reference(grad_out, w, *args)
    absref = conv2d_grad_input_reference(np.abs(grad_out.astype(np.float64)),
                                         np.abs(w.astype(np.float64)), *args)
    return _within("input-gradient elements", grad_x, ref, absref, spec.K * spec.R * spec.S,
                   p.accum, p.input)


def compare_grad_weight(spec: ConvSpec, x: np.ndarray, grad_out: np.ndarray,
                        grad_w: np.ndarray) -> Verdict:
    """Compare a gathered filter gradient (accumulator dtype) with
    :func:`parconv.reference.conv2d_grad_weight_reference`: ``n = B·H·W`` terms per
    element, accumulated and delivered in the accumulator dtype."""
    p = spec.precision
    bad = _check_array("grad_weight", grad_w, spec.filter_shape, p.accum)
    if bad:
        return bad
    args = ((spec.R, spec.S), spec.stride, spec.padding, spec.dilation)
    ref = conv2d_grad_weight_reference(x, grad_out, *args)
    absref = conv2d_grad_weight_reference(np.abs(x.astype(np.float64)),
                                          np.abs(grad_out.astype(np.float64)), *args)
    return _within("filter-gradient elements", grad_w, ref, absref, spec.B * spec.H * spec.W,
                   p.accum, p.accum)
