"""Numpy reference convolution: the oracle for every test.

PyTorch ``conv2d`` semantics (NCHW input, OIHW weight, cross-correlation). Integer
convolutions are computed exactly in int64 and checked against the accumulator's
range: an overflow raises instead of wrapping silently. Floating convolutions are
computed in float64 and rounded once to the requested type.
"""

from __future__ import annotations

import numpy as np

from . import dtypes
from .spec import ConvSpec


class AccumulatorOverflow(OverflowError):
    """An exact integer result does not fit the accumulator type."""


def conv2d_reference(
    x: np.ndarray,
    w: np.ndarray,
    stride=1,
    padding=0,
    dilation=1,
    out_dtype: str | None = None,
) -> np.ndarray:
    """Reference 2-D convolution.

    Parameters
    ----------
    x : ndarray, shape (B, C, Hin, Win)
    w : ndarray, shape (K, C, R, S)
    stride, padding, dilation : int or pair of ints
    out_dtype : str, optional
        Result dtype name. Default: int32 for integer inputs, float32 for float16 /
        bfloat16 / float32 inputs, float64 for float64.

    Returns
    -------
    ndarray, shape (B, K, H, W)

    Raises
    ------
    ValueError
        On shape mismatch.
    AccumulatorOverflow
        If an integer result does not fit ``out_dtype``.
    """
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"expected 4-D input and weight, got {x.shape} and {w.shape}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"input has {x.shape[1]} channels but weight expects {w.shape[1]}")
    xin, win = dtypes.canonical(x.dtype), dtypes.canonical(w.dtype)
    integer = dtypes.is_integer(xin)
    if integer != dtypes.is_integer(win):
        raise ValueError(f"input dtype {xin} and weight dtype {win} must both be integer or float")
    if out_dtype is None:
        out_dtype = "int32" if integer else ("float64" if "float64" in (xin, win) else "float32")
    out_dtype = dtypes.canonical(out_dtype)
    spec = ConvSpec(x.shape[0], x.shape[1], w.shape[0], x.shape[2:], w.shape[2:],
                    stride, padding, dilation)
    acc = np.int64 if integer else np.float64
    (ph, pw), (sh, sw), (dh, dw) = spec.padding, spec.stride, spec.dilation
    xp = np.zeros((spec.B, spec.C, x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), dtype=acc)
    xp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x.astype(acc)
    wa = w.astype(acc)
    H, W = spec.out_size
    out = np.zeros((spec.B, spec.K, H, W), dtype=acc)
    for r in range(spec.R):
        for s in range(spec.S):
            patch = xp[:, :, r * dh: r * dh + sh * (H - 1) + 1: sh, s * dw: s * dw + sw * (W - 1) + 1: sw]
            # (B, C, H, W) x (K, C) -> (B, K, H, W)
            out += np.einsum("bchw,kc->bkhw", patch, wa[:, :, r, s], optimize=True)
    if integer:
        return checked_cast(out, out_dtype, "result type")
    return out.astype(dtypes.numpy_dtype(out_dtype))


def checked_cast(values: np.ndarray, dtype: str, what: str = "accumulator") -> np.ndarray:
    """Cast exact integers to ``dtype``, raising :class:`AccumulatorOverflow` if any value
    falls outside its range; ``what`` names the role of ``dtype`` in the message
    (``"accumulator"``, ``"output type"``, ...)."""
    lo, hi = dtypes.value_range(dtype)
    if values.size and (values.min() < lo or values.max() > hi):
        raise AccumulatorOverflow(
            f"integer convolution result range [{values.min()}, {values.max()}] does not fit "
            f"the {dtype} {what} [{int(lo)}, {int(hi)}]"
        )
    return values.astype(dtypes.numpy_dtype(dtype))


def random_operands(spec: ConvSpec, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic random input and filter for ``spec`` in its precision.

    Integers are drawn from the full int8/uint8 range (int16: ±127), floats from a
    standard normal scaled by 1/sqrt(C·R·S) so that outputs stay O(1).
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for shape, name in ((spec.input_shape, spec.precision.input),
                        (spec.filter_shape, spec.precision.filter)):
        dt = dtypes.numpy_dtype(name)
        if dtypes.is_integer(name):
            lo, hi = dtypes.value_range(name)
            lo, hi = max(lo, -128), min(hi, 127)
            arrays.append(rng.integers(int(lo), int(hi) + 1, size=shape).astype(dt))
        else:
            scale = 1.0 if shape == spec.input_shape else 1.0 / np.sqrt(spec.C * spec.R * spec.S)
            arrays.append((rng.standard_normal(shape) * scale).astype(dt))
    return arrays[0], arrays[1]


def reference_for_spec(spec: ConvSpec, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Reference output for a spec, in the spec's output dtype (via the accumulator)."""
    out = conv2d_reference(x, w, spec.stride, spec.padding, spec.dilation, spec.precision.accum)
    return out.astype(dtypes.numpy_dtype(spec.precision.output)) if not spec.precision.is_integer \
        else checked_cast(out.astype(np.int64), spec.precision.output, "output type")


def _pairs(stride, padding, dilation):
    out = []
    for v in (stride, padding, dilation):
        a, b = (v, v) if np.ndim(v) == 0 else tuple(v)
        out.append((int(a), int(b)))
    return out


def _refuse_integer(*arrays: np.ndarray) -> None:
    for a in arrays:
        if a.dtype.kind in "iub":
            raise ValueError(f"training (backward) is float only, got integer {a.dtype}")


def conv2d_grad_input_reference(grad_out: np.ndarray, w: np.ndarray, input_shape,
                                stride=1, padding=0, dilation=1) -> np.ndarray:
    """Reference input gradient (float64): ``dIn[b,c,x,y] = sum_{k,r,s,h,w} dOut[b,k,h,w]
    w[k,c,r,s]`` over ``x = sh*h + dh*r - ph``, ``y = sw*w + dw*s - pw`` (padding
    positions dropped). Raises ``ValueError`` for integer operands."""
    _refuse_integer(grad_out, w)
    (sh, sw), (ph, pw), (dh, dw) = _pairs(stride, padding, dilation)
    B, C, Hin, Win = (int(v) for v in input_shape)
    _, _, H, W = grad_out.shape
    K, _, R, S = w.shape
    g = grad_out.astype(np.float64)
    wa = w.astype(np.float64)
    Hp = max(Hin + 2 * ph, sh * (H - 1) + dh * (R - 1) + 1)
    Wp = max(Win + 2 * pw, sw * (W - 1) + dw * (S - 1) + 1)
    dxp = np.zeros((B, C, Hp, Wp))
    for r in range(R):
        for s in range(S):
            dxp[:, :, r * dh: r * dh + sh * (H - 1) + 1: sh,
                s * dw: s * dw + sw * (W - 1) + 1: sw] += np.einsum(
                    "bkhw,kc->bchw", g, wa[:, :, r, s], optimize=True)
    return dxp[:, :, ph:ph + Hin, pw:pw + Win].copy()


def conv2d_grad_weight_reference(x: np.ndarray, grad_out: np.ndarray, kernel_size,
                                 stride=1, padding=0, dilation=1) -> np.ndarray:
    """Reference weight gradient (float64): ``dF[k,c,r,s] = sum_{b,h,w} x[b, c, sh*h +
    dh*r - ph, sw*w + dw*s - pw] dOut[b,k,h,w]`` (zero padding). Raises ``ValueError``
    for integer operands."""
    _refuse_integer(x, grad_out)
    (sh, sw), (ph, pw), (dh, dw) = _pairs(stride, padding, dilation)
    R, S = (kernel_size, kernel_size) if np.ndim(kernel_size) == 0 else tuple(kernel_size)[-2:]
    B, C, Hin, Win = x.shape
    _, K, H, W = grad_out.shape
    g = grad_out.astype(np.float64)
    Hp = max(Hin + 2 * ph, sh * (H - 1) + dh * (R - 1) + 1)
    Wp = max(Win + 2 * pw, sw * (W - 1) + dw * (S - 1) + 1)
    xp = np.zeros((B, C, Hp, Wp))
    xp[:, :, ph:ph + Hin, pw:pw + Win] = x.astype(np.float64)
    dw_ = np.zeros((K, C, R, S))
    for r in range(R):
        for s in range(S):
            patch = xp[:, :, r * dh: r * dh + sh * (H - 1) + 1: sh,
                       s * dw: s * dw + sw * (W - 1) + 1: sw]
            dw_[:, :, r, s] = np.einsum("bchw,bkhw->kc", patch, g, optimize=True)
    return dw_
