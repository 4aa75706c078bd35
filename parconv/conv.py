"""Public single-process convolution :func:`conv2d` (PyTorch ``conv2d`` semantics) and its
gradients :func:`conv2d_grad_input`, :func:`conv2d_grad_weight`.

Validates its arguments, checks the int32 accumulator bound of integer convolutions and
runs :func:`parconv.kernels.conv2d_window` with ``offset = (-pad_h, -pad_w)``.
"""

from __future__ import annotations

import numpy as np

from . import dtypes
from .kernels import accumulator_dtype, conv2d_window, int32_safe_reduction
from .kernels.backward import _arrays4, dgrad_window, training_accumulator, wgrad_window
from .kernels.window import _pair


def conv2d(input: np.ndarray, weight: np.ndarray, stride=1, padding=0, dilation=1,
           out_dtype: str | np.dtype | None = None, *, allow_overflow: bool = False,
           threads: int | None = None, int_kernel: str | None = None) -> np.ndarray:
    """2-D convolution (cross-correlation) of an NCHW input with an OIHW weight.

    Parameters
    ----------
    input : ndarray (B, C, Hin, Win)
        float16, bfloat16 (``ml_dtypes``), float32, float64, int8 or uint8.
    weight : ndarray (K, C, R, S)
        A float dtype for float inputs (float16/bfloat16/float32/float64; mixing is
        allowed), int8 for integer inputs.
    stride, dilation : int or pair of ints, >= 1
    padding : int or pair of ints, >= 0 (zero padding on both sides)
    out_dtype : dtype or name, optional
        Default: int32 for integer inputs, float64 if either operand is float64, else
        float32. The convolution always accumulates in the accumulator dtype (int32,
        float32 or float64, see :func:`parconv.kernels.accumulator_dtype`) and is cast
        once at the end.
    allow_overflow : bool
        Integer mode only. By default a layer whose reduction ``C*R*S`` is longer than
        :func:`parconv.kernels.int32_safe_reduction` (131071 for int8 x int8, 65793 for
        uint8 x int8) is refused, because some inputs would overflow the int32
        accumulator. ``True`` runs it anyway; results that overflow wrap modulo 2**32.
    threads : int, optional
        Worker threads (default ``$PARCONV_THREADS`` or 1).
    int_kernel : {'auto', 'simd', 'float'}, optional
        Integer inputs: the exact 16-bit SIMD multiply-add kernel or the exact float32
        chunk path (default ``$PARCONV_INT_KERNEL`` or ``auto``, see
        :func:`parconv.kernels.resolve_int_kernel`).

    Returns
    -------
    ndarray (B, K, H, W)

    Raises
    ------
    ValueError
        Naming the problem: wrong rank, channel mismatch, unsupported dtype or dtype mix,
        bad stride/padding/dilation, an empty output.
    OverflowError
        Integer layer longer than the int32-safe reduction (see ``allow_overflow``).
    """
    for name, arr in (("input", input), ("weight", weight)):
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(arr).__name__}")
        if arr.ndim != 4:
            raise ValueError(f"{name} must be 4-D ({'NCHW' if name == 'input' else 'OIHW'}), "
                             f"got shape {arr.shape}")
    B, C, Hin, Win = input.shape
    K, Cw, R, S = weight.shape
    if Cw != C:
        raise ValueError(f"input has {C} channels but weight expects {Cw}")
    for name, size in (("batch", B), ("channels", C), ("filters", K), ("kernel height", R),
                       ("kernel width", S)):
        if size < 1:
            raise ValueError(f"{name} must be >= 1, got {size}")
    acc = accumulator_dtype(input.dtype, weight.dtype)
    (sh, sw), (ph, pw), (dh, dw) = geometry = _geometry(stride, padding, dilation)
    H, W = _output_size(Hin, Win, R, S, *geometry)
    if out_dtype is None:
        out_dt = acc
    else:
        out_dt = dtypes.numpy_dtype(dtypes.canonical(out_dtype))
    if acc.kind == "i":
        if out_dt.kind not in "if" or out_dt.itemsize < 4:
            raise ValueError(f"integer convolution: out_dtype must be int32, int64, float32 "
                             f"or float64, got {out_dt}")
        bound = int32_safe_reduction(input.dtype, weight.dtype)
        if C * R * S > bound and not allow_overflow:
            raise OverflowError(
                f"int32 accumulator can overflow: reduction C*R*S = {C * R * S} exceeds the "
                f"int32-safe bound {bound} for {input.dtype} x {weight.dtype}; pass "
                "allow_overflow=True to accept wrap-around modulo 2**32")
    elif out_dt.kind != "f" and out_dt != np.dtype(dtypes.numpy_dtype("bfloat16")):
        raise ValueError(f"float convolution: out_dtype must be a float dtype, got {out_dt}")
    out = np.empty((B, K, H, W), dtype=acc)
    conv2d_window(input, weight, out, (sh, sw), (dh, dw), (-ph, -pw), False, threads,
                  int_kernel=int_kernel)
    return out if out_dt == acc else out.astype(out_dt)


def _geometry(stride, padding, dilation):
    """``((sh, sw), (ph, pw), (dh, dw))`` of the public arguments, validated."""
    sh, sw = _pair("stride", stride)
    ph, pw = _pair("padding", padding)
    dh, dw = _pair("dilation", dilation)
    if min(sh, sw) < 1:
        raise ValueError(f"stride must be >= 1, got {(sh, sw)}")
    if min(dh, dw) < 1:
        raise ValueError(f"dilation must be >= 1, got {(dh, dw)}")
    if min(ph, pw) < 0:
        raise ValueError(f"padding must be >= 0, got {(ph, pw)}")
    return (sh, sw), (ph, pw), (dh, dw)


def _output_size(Hin: int, Win: int, R: int, S: int, stride, padding,
                 dilation) -> tuple[int, int]:
    """``(H, W)`` of the forward output; refuses an empty one."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    H = (Hin + 2 * ph - dh * (R - 1) - 1) // sh + 1
    W = (Win + 2 * pw - dw * (S - 1) - 1) // sw + 1
    if H < 1 or W < 1:
        raise ValueError(f"empty output {H}x{W}: input {Hin}x{Win} with padding {(ph, pw)} is "
                         f"smaller than the dilated kernel {dh * (R - 1) + 1}x{dw * (S - 1) + 1}")
    return H, W


def _check_grad_out(grad_output: np.ndarray, B: int, K: int, Hin: int, Win: int, R: int,
                    S: int, stride, padding, dilation) -> None:
    H, W = _output_size(Hin, Win, R, S, stride, padding, dilation)
    if grad_output.shape != (B, K, H, W):
        raise ValueError(f"grad_output has shape {grad_output.shape}; the forward output of "
                         f"this layer is {(B, K, H, W)}")


def conv2d_grad_input(grad_output: np.ndarray, weight: np.ndarray, input_shape,
                      stride=1, padding=0, dilation=1, *,
                      threads: int | None = None) -> np.ndarray:
    """Gradient of :func:`conv2d` with respect to its input (``torch.nn.grad.conv2d_input``).

    Parameters
    ----------
    grad_output : ndarray (B, K, H, W)
        float16, bfloat16, float32 or float64.
    weight : ndarray (K, C, R, S)
        Float filter of the forward call.
    input_shape : sequence of 4 ints
        ``(B, C, Hin, Win)`` of the forward input.
    stride, padding, dilation : int or pair of ints
        As for :func:`conv2d`.
    threads : int, optional
        Worker threads (default ``$PARCONV_THREADS`` or 1).

    Returns
    -------
    ndarray (B, C, Hin, Win)
        In the accumulator dtype: float64 if either operand is float64, else float32
        (16-bit operands accumulate and return float32; cast to the activation dtype if
        wanted).

    Raises
    ------
    ValueError
        Integer operands (training is float only), shape mismatches (``grad_output`` not
        the forward output shape), bad stride/padding/dilation.
    """
    _arrays4(grad_output=grad_output, weight=weight)
    try:
        B, C, Hin, Win = (int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be 4 ints (B, C, H, W), got {input_shape!r}") \
            from None
    K, Cw, R, S = weight.shape
    if Cw != C:
        raise ValueError(f"input_shape has {C} channels but weight expects {Cw}")
    acc = training_accumulator(grad_output.dtype, weight.dtype, "conv2d_grad_input")
    if min(B, C, K, R, S, Hin, Win) < 1:
        raise ValueError(f"empty operand: input_shape {(B, C, Hin, Win)}, weight {weight.shape}")
    st, pad, dil = _geometry(stride, padding, dilation)
    _check_grad_out(grad_output, B, K, Hin, Win, R, S, st, pad, dil)
    out = np.empty((B, C, Hin, Win), dtype=acc)
    dgrad_window(grad_output, weight, out, st, dil, (-pad[0], -pad[1]), False, threads)
    return out


def conv2d_grad_weight(input: np.ndarray, grad_output: np.ndarray, kernel_size,
                       stride=1, padding=0, dilation=1, *,
                       threads: int | None = None) -> np.ndarray:
    """Gradient of :func:`conv2d` with respect to its weight (``torch.nn.grad.conv2d_weight``).

    Parameters
    ----------
    input : ndarray (B, C, Hin, Win)
        float16, bfloat16, float32 or float64 forward input.
    grad_output : ndarray (B, K, H, W)
        Float gradient of the forward output.
    kernel_size : int, pair ``(R, S)`` or the full weight shape ``(K, C, R, S)``
    stride, padding, dilation : int or pair of ints
        As for :func:`conv2d`.
    threads : int, optional
        Worker threads (default ``$PARCONV_THREADS`` or 1).

    Returns
    -------
    ndarray (K, C, R, S)
        float64 if either operand is float64, else float32.

    Raises
    ------
    ValueError
        Integer operands (training is float only), shape mismatches, bad parameters.
    """
    _arrays4(input=input, grad_output=grad_output)
    B, C, Hin, Win = input.shape
    K = grad_output.shape[1]
    ks = (kernel_size, kernel_size) if np.ndim(kernel_size) == 0 else tuple(kernel_size)
    if len(ks) == 4:
        if (int(ks[0]), int(ks[1])) != (K, C):
            raise ValueError(f"weight size {tuple(ks)} does not match {K} output and {C} "
                             "input channels")
        ks = ks[2:]
    R, S = _pair("kernel_size", ks)
    acc = training_accumulator(input.dtype, grad_output.dtype, "conv2d_grad_weight")
    if min(B, C, K, R, S, Hin, Win) < 1:
        raise ValueError(f"empty operand: input {input.shape}, grad_output "
                         f"{grad_output.shape}, kernel {(R, S)}")
    st, pad, dil = _geometry(stride, padding, dilation)
    _check_grad_out(grad_output, B, K, Hin, Win, R, S, st, pad, dil)
    out = np.empty((K, C, R, S), dtype=acc)
    wgrad_window(input, grad_output, out, st, dil, (-pad[0], -pad[1]), False, threads)
    return out
