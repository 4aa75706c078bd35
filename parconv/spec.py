"""The convolution problem: shapes, per-axis index math and derived sizes.

Loop nest (THEORY.md §1, PyTorch ``conv2d`` convention, NCHW input, OIHW filter)::

    for b<B, k<K, c<C, h<H, w<W, r<R, s<S:
        Out[b,k,h,w] += In[b, c, σh·h + δh·r − padh, σw·w + δw·s − padw] · F[k,c,r,s]

``H, W`` are *output* sizes. Padding reads are zeros and move no data. Nothing is
assumed square: every spatial quantity is per axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .dtypes import PRESETS, Precision, parse_precision


def _pair(name: str, value) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected an int or a pair of ints, got {value!r}") from None
    return int(a), int(b)


@dataclass(frozen=True)
class Axis:
    """One spatial axis of a convolution: the pure index math of halos and reuse.

    Parameters
    ----------
    in_size: input extent (unpadded).
    kernel: filter extent R.
    stride, padding, dilation: σ, pad, δ (padding symmetric).
    """

    in_size: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1

    @property
    def out_size(self) -> int:
        """Output extent: ⌊(in + 2·pad − δ(R−1) − 1)/σ⌋ + 1."""
        return (self.in_size + 2 * self.padding - self.dilation * (self.kernel - 1) - 1) // self.stride + 1

    def input_index(self, out_idx, k_idx):
        """Input coordinate σ·h + δ·r − pad (may be padding: < 0 or ≥ in_size)."""
        return self.stride * out_idx + self.dilation * k_idx - self.padding

    def window(self, out_lo: int, out_hi: int) -> tuple[int, int]:
        """Smallest half-open input range [lo, hi) holding every real input index read by
        outputs [out_lo, out_hi) (padding excluded). Empty reads give (0, 0)."""
        idx = np.flatnonzero(self.used_mask(out_lo, out_hi))
        return (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 0)

    def used_mask(self, out_lo: int = 0, out_hi: int | None = None) -> np.ndarray:
        """Boolean mask over the input axis: True where some output in [out_lo, out_hi)
        reads the input index with some filter tap (exact; handles stride > extent)."""
        out_hi = self.out_size if out_hi is None else out_hi
        mask = np.zeros(self.in_size, dtype=bool)
        if out_hi <= out_lo:
            return mask
        h = np.arange(out_lo, out_hi)[:, None]
        r = np.arange(self.kernel)[None, :]
        x = self.input_index(h, r).ravel()
        x = x[(x >= 0) & (x < self.in_size)]
        mask[x] = True
        return mask

    def used_count(self, out_lo: int = 0, out_hi: int | None = None) -> int:
        """Number of distinct real input indices read by outputs [out_lo, out_hi)."""
        return int(self.used_mask(out_lo, out_hi).sum())

    @property
    def multiplicity(self) -> int:
        """ρ for this axis: max over input indices x of #{(h, r) : σh + δr − pad = x}
        (exact count; padding positions excluded)."""
        h = np.arange(self.out_size)[:, None]
        r = np.arange(self.kernel)[None, :]
        x = self.input_index(h, r).ravel()
        x = x[(x >= 0) & (x < self.in_size)]
        if x.size == 0:
            return 0
        return int(np.bincount(x, minlength=self.in_size).max())

    @property
    def mean_multiplicity(self) -> float:
        """Average interior multiplicity R/σ (for σ ≤ the dilated filter extent)."""
        return self.kernel / self.stride


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution layer with its precisions.

    Parameters
    ----------
    batch, in_channels, out_channels:
        B, C, K.
    in_size:
        Input (height, width), unpadded. An int means both.
    kernel, stride, padding, dilation:
        Per-axis (R, S), (σh, σw), (padh, padw), (δh, δw); an int means both axes.
    precision:
        Element types (default fp32): a :class:`~parconv.dtypes.Precision` or any string
        ``--dtype`` accepts (:func:`~parconv.dtypes.parse_precision`): a preset name of
        :data:`~parconv.dtypes.PRESETS` (``"int8"``, ``"fp16"``, ...) or
        ``"IN/FILTER/ACC[/OUT]"`` (e.g. ``"int8/int8/int32/int8"``).
    name:
        Optional label (e.g. ``resnet50/layer3.0.conv2``).

    Raises
    ------
    ValueError
        Naming the offending field and value.
    """

    batch: int
    in_channels: int
    out_channels: int
    in_size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    precision: Precision | str = field(default_factory=lambda: PRESETS["fp32"])
    name: str = ""

    def __post_init__(self) -> None:
        for f in ("in_size", "kernel", "stride", "padding", "dilation"):
            object.__setattr__(self, f, _pair(f, getattr(self, f)))
        for f in ("batch", "in_channels", "out_channels"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise ValueError(f"{f}: expected an int, got {v!r}")
            object.__setattr__(self, f, int(v))
            if v <= 0:
                raise ValueError(f"{f} must be positive, got {v}")
        for f in ("in_size", "kernel", "stride", "dilation"):
            for ax, v in zip("hw", getattr(self, f)):
                if v <= 0:
                    raise ValueError(f"{f} must be positive, got {f}[{ax}]={v}")
        for ax, v in zip("hw", self.padding):
            if v < 0:
                raise ValueError(f"padding must be non-negative, got padding[{ax}]={v}")
        if isinstance(self.precision, str):
            try:
                object.__setattr__(self, "precision", parse_precision(self.precision))
            except ValueError as exc:
                raise ValueError(f"precision: {exc}") from None
        if not isinstance(self.precision, Precision):
            raise ValueError(f"precision: expected a Precision or a preset name "
                             f"({', '.join(PRESETS)}), got {self.precision!r}")
        for ax, a in zip("hw", self.axes):
            if a.out_size <= 0:
                raise ValueError(
                    f"empty output along {ax}: input {a.in_size} + 2*padding {a.padding} is smaller "
                    f"than the dilated kernel extent {a.dilation * (a.kernel - 1) + 1}"
                )

    # -- axes and sizes -------------------------------------------------------------
    @cached_property
    def axes(self) -> tuple[Axis, Axis]:
        """The (height, width) axes."""
        return tuple(
            Axis(self.in_size[i], self.kernel[i], self.stride[i], self.padding[i], self.dilation[i])
            for i in range(2)
        )

    @property
    def out_size(self) -> tuple[int, int]:
        """Output (H, W)."""
        return self.axes[0].out_size, self.axes[1].out_size

    @property
    def B(self) -> int:  # noqa: N802 - loop-bound names follow the paper
        return self.batch

    @property
    def K(self) -> int:  # noqa: N802
        return self.out_channels

    @property
    def C(self) -> int:  # noqa: N802
        return self.in_channels

    @property
    def H(self) -> int:  # noqa: N802
        return self.out_size[0]

    @property
    def W(self) -> int:  # noqa: N802
        return self.out_size[1]

    @property
    def R(self) -> int:  # noqa: N802
        return self.kernel[0]

    @property
    def S(self) -> int:  # noqa: N802
        return self.kernel[1]

    @property
    def macs(self) -> int:
        """G = B·K·C·H·W·R·S multiply-adds (padding taps included, as in the loop nest)."""
        return self.B * self.K * self.C * self.H * self.W * self.R * self.S

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.B, self.C, self.in_size[0], self.in_size[1])

    @property
    def filter_shape(self) -> tuple[int, int, int, int]:
        return (self.K, self.C, self.R, self.S)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.B, self.K, self.H, self.W)

    @property
    def input_elems(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def filter_elems(self) -> int:
        return int(np.prod(self.filter_shape))

    @property
    def output_elems(self) -> int:
        return int(np.prod(self.output_shape))

    @cached_property
    def input_used_elems(self) -> int:
        """|In_used|: input elements read by some iteration (padding and skipped pixels excluded)."""
        return self.B * self.C * self.axes[0].used_count() * self.axes[1].used_count()

    @cached_property
    def multiplicity(self) -> tuple[int, int]:
        """Exact (ρ_h, ρ_w)."""
        return self.axes[0].multiplicity, self.axes[1].multiplicity

    @property
    def rho(self) -> int:
        """ρ = ρ_h·ρ_w (exact)."""
        return self.multiplicity[0] * self.multiplicity[1]

    # -- conveniences ---------------------------------------------------------------
    def with_batch(self, batch: int) -> ConvSpec:
        """Same layer, another batch size."""
        return _replace(self, batch=batch)

    def with_precision(self, precision: Precision | str) -> ConvSpec:
        """Same layer, other element types (a Precision or a preset name / dtype string)."""
        return _replace(self, precision=precision)

    def describe(self) -> str:
        """One-line description."""
        (ih, iw), (h, w) = self.in_size, self.out_size
        s = (f"B={self.B} C={self.C} K={self.K} in={ih}x{iw} out={h}x{w} kernel={self.R}x{self.S} "
             f"stride={self.stride[0]},{self.stride[1]} pad={self.padding[0]},{self.padding[1]} "
             f"dil={self.dilation[0]},{self.dilation[1]} {self.precision.label()}")
        return f"{self.name}: {s}" if self.name else s

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {
            "name": self.name, "batch": self.B, "in_channels": self.C, "out_channels": self.K,
            "in_size": list(self.in_size), "out_size": list(self.out_size),
            "kernel": list(self.kernel), "stride": list(self.stride),
            "padding": list(self.padding), "dilation": list(self.dilation),
            "precision": {"input": self.precision.input, "filter": self.precision.filter,
                          "accum": self.precision.accum, "output": self.precision.output},
            "macs": self.macs,
        }


def _replace(spec: ConvSpec, **kw) -> ConvSpec:
    import dataclasses

    return dataclasses.replace(spec, **kw)
