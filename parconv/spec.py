"""The convolution problem: shapes, per-axis index math and derived sizes.

Loop nest (THEORY.md §1, PyTorch ``conv2d`` convention, NCHW input, OIHW filter)::

    for b<B, k<K, c<C, h<H, w<W, r<R, s<S:
        Out[b,k,h,w] += In[b, c, σh·h + δh·r − padh, σw·w + δw·s − padw] · F[k,c,r,s]

``H, W`` are *output* sizes. Padding reads are zeros and move no data. Nothing is
assumed square: every spatial quantity is per axis.
"""

from __future__ import annotations

import math
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


#: Largest filter extent (taps) per axis accepted. The per-axis index math costs
#: O(R log R) per query, independent of the spatial extent; beyond this it is refused.
MAX_KERNEL = 1 << 20
#: Largest padded input extent, stride and dilation per axis accepted (so that every
#: index σ·h + δ·r − pad is exact in int64 with room to spare).
MAX_EXTENT = 1 << 60
#: Elements per temporary (queries × taps) block of the vectorised closed forms.
_CHUNK = 1 << 18


def _ceil_div(a, b):
    return -((-a) // b)


@dataclass(frozen=True)
class Axis:
    """One spatial axis of a convolution: the pure index math of halos and reuse.

    Every quantity is computed in closed form from the filter taps, in time and memory
    independent of the extents: tap ``r`` reads the inputs ``x = σ·(h + q_r) + ρ_r`` with
    ``δ·r − pad = σ·q_r + ρ_r`` (``0 ≤ ρ_r < σ``), an interval of the quotient line
    ``t = h + q_r`` within the residue class ``ρ_r``; the taps of one class, sorted by
    ``q_r``, give intervals whose both ends are non-decreasing, so the size of their
    union is a sum over taps (see :meth:`read_counts`). Only :meth:`used_mask` and
    :meth:`used_indices` allocate arrays over the extent (of the block asked for).

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

    # -- the taps, by residue class -----------------------------------------------------
    @cached_property
    def _taps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(ρ, q, top, same)`` per tap, sorted by (ρ, q): tap reads ``σ·t + ρ`` for
        ``t = h + q``; real inputs of class ρ are ``0 ≤ t < top``; ``same[i]``: tap ``i``
        is in the class of tap ``i − 1``."""
        if self.kernel > MAX_KERNEL:
            raise ValueError(f"kernel extent {self.kernel} exceeds the supported {MAX_KERNEL}")
        r = np.arange(self.kernel, dtype=np.int64)
        c = self.dilation * r - self.padding
        res, quo = c % self.stride, c // self.stride
        order = np.lexsort((quo, res))
        res, quo = res[order], quo[order]
        top = _ceil_div(self.in_size - res, self.stride)
        same = np.zeros(res.size, dtype=bool)
        same[1:] = res[1:] == res[:-1]
        for a in (res, quo, top, same):
            a.flags.writeable = False
        return res, quo, top, same

    def _spans(self, out_lo, out_hi, in_lo, in_hi):
        """Per query row and tap: the quotient-line interval ``[a, b)`` read (clipped to
        real inputs in ``[in_lo, in_hi)``) and the part ``[lo_eff, b)`` of it not read by
        an earlier tap of the same class (disjoint; empty when ``lo_eff ≥ b``)."""
        res, quo, top, same = self._taps
        s = self.stride
        a = np.maximum(np.maximum(quo + out_lo[:, None], 0), _ceil_div(in_lo[:, None] - res, s))
        b = np.minimum(np.minimum(quo + out_hi[:, None], top), _ceil_div(in_hi[:, None] - res, s))
        prev = np.empty_like(b)
        prev[:, 0] = a[:, 0]
        prev[:, 1:] = np.where(same[1:], np.maximum(a[:, 1:], b[:, :-1]), a[:, 1:])
        return a, b, prev

    def _queries(self, *cols):
        cols = np.broadcast_arrays(*(np.atleast_1d(np.asarray(c, dtype=np.int64)) for c in cols))
        step = max(1, _CHUNK // max(self.kernel, 1))
        return cols, step

    def read_counts(self, out_lo, out_hi, in_lo=0, in_hi=None) -> np.ndarray:
        """Number of distinct real input indices in ``[in_lo, in_hi)`` read by outputs
        ``[out_lo, out_hi)`` (arrays broadcast; exact; O(R) per query).

        Within a residue class the intervals ``[a_i, b_i)`` of the taps have
        non-decreasing ``a`` and ``b``, so tap ``i`` adds exactly
        ``max(0, b_i − max(a_i, b_{i−1}))`` new indices.
        """
        in_hi = self.in_size if in_hi is None else in_hi
        (ol, oh, il, ih), step = self._queries(out_lo, out_hi, in_lo, in_hi)
        out = np.empty(ol.shape, dtype=np.int64)
        for i in range(0, ol.size, step):
            sl = slice(i, i + step)
            _, b, lo = self._spans(ol[sl], oh[sl], il[sl], ih[sl])
            out[sl] = np.maximum(b - lo, 0).sum(axis=1)
        return out

    def read_windows(self, out_lo, out_hi) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised :meth:`window`: arrays ``(lo, hi)``, ``(0, 0)`` where nothing is read."""
        res, _, _, _ = self._taps
        (ol, oh), step = self._queries(out_lo, out_hi)
        lo, hi = np.zeros(ol.shape, dtype=np.int64), np.zeros(ol.shape, dtype=np.int64)
        zero, full = np.zeros_like(ol[:step]), np.full_like(ol[:step], self.in_size)
        for i in range(0, ol.size, step):
            sl = slice(i, i + step)
            n = ol[sl].size
            a, b, _ = self._spans(ol[sl], oh[sl], zero[:n], full[:n])
            ok = a < b
            any_ = ok.any(axis=1)
            first = np.where(ok, self.stride * a + res, self.in_size).min(axis=1)
            last = np.where(ok, self.stride * (b - 1) + res, -1).max(axis=1)
            lo[sl], hi[sl] = np.where(any_, first, 0), np.where(any_, last + 1, 0)
        return lo, hi

    def overlaps(self, out_bounds, in_bounds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(reader, owner, count)``, sorted, for every non-empty overlap between what the
        output blocks ``[out_bounds[j], out_bounds[j+1])`` read and the input blocks
        ``[in_bounds[i], in_bounds[i+1])`` (``in_bounds`` non-decreasing, from 0 to
        ``in_size``).

        Each tap adds a disjoint run ``{σ·t + ρ : lo ≤ t < b}`` (see :meth:`read_counts`);
        only the input blocks meeting a run's first-to-last span are visited, so the cost
        is O(blocks × R × input blocks per run), independent of the extents.
        """
        res = self._taps[0]
        ob = np.asarray(out_bounds, dtype=np.int64)
        ib = np.asarray(in_bounds, dtype=np.int64)
        n_rd, n_ow, s = ob.size - 1, ib.size - 1, self.stride
        step = max(1, _CHUNK // max(self.kernel, 1))
        parts = []
        for i in range(0, n_rd, step):
            j = np.arange(i, min(i + step, n_rd), dtype=np.int64)
            zero = np.zeros_like(j)
            _, b, lo = self._spans(ob[j], ob[j + 1], zero, zero + self.in_size)
            ok = lo < b
            rd = np.broadcast_to(j[:, None], b.shape)[ok]
            rr = np.broadcast_to(res, b.shape)[ok]
            lo, b = lo[ok], b[ok]
            first = np.searchsorted(ib, s * lo + rr, side="right") - 1
            last = np.searchsorted(ib, s * (b - 1) + rr, side="right") - 1
            span = last - first + 1
            k = np.repeat(np.arange(span.size), span)
            ow = np.arange(k.size, dtype=np.int64) - np.repeat(np.cumsum(span) - span, span) \
                + np.repeat(first, span)
            r_k = rr[k]
            cnt = (np.minimum(b[k], _ceil_div(ib[ow + 1] - r_k, s))
                   - np.maximum(lo[k], _ceil_div(ib[ow] - r_k, s)))
            key = rd[k] * n_ow + ow
            order = np.argsort(key, kind="stable")
            key, cnt = key[order], np.maximum(cnt[order], 0)
            if key.size == 0:
                continue
            heads = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
            tot = np.add.reduceat(cnt, heads)
            nz = tot > 0
            parts.append((key[heads][nz], tot[nz]))
        if not parts:
            e = np.zeros(0, dtype=np.int64)
            return e, e.copy(), e.copy()
        key = np.concatenate([k for k, _ in parts])
        cnt = np.concatenate([c for _, c in parts])
        return key // n_ow, key % n_ow, cnt

    def window(self, out_lo: int, out_hi: int) -> tuple[int, int]:
        """Smallest half-open input range [lo, hi) holding every real input index read by
        outputs [out_lo, out_hi) (padding excluded). Empty reads give (0, 0)."""
        lo, hi = self.read_windows(out_lo, out_hi)
        return int(lo[0]), int(hi[0])

    def used_indices(self, out_lo: int = 0, out_hi: int | None = None, in_lo: int = 0,
                     in_hi: int | None = None) -> np.ndarray:
        """Sorted real input indices in ``[in_lo, in_hi)`` read by outputs
        ``[out_lo, out_hi)`` (allocates only the result)."""
        out_hi = self.out_size if out_hi is None else out_hi
        in_hi = self.in_size if in_hi is None else in_hi
        res, _, _, _ = self._taps
        (ol, oh, il, ih), _ = self._queries(out_lo, out_hi, in_lo, in_hi)
        _, b, lo = self._spans(ol[:1], oh[:1], il[:1], ih[:1])
        b, lo = b[0], lo[0]
        n = np.maximum(b - lo, 0)
        total = int(n.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        start = np.repeat(np.cumsum(n) - n, n)
        t = np.arange(total, dtype=np.int64) - start + np.repeat(lo, n)
        return np.sort(self.stride * t + np.repeat(res, n))

    def used_mask(self, out_lo: int = 0, out_hi: int | None = None) -> np.ndarray:
        """Boolean mask over the input axis: True where some output in [out_lo, out_hi)
        reads the input index with some filter tap (exact; handles stride > extent).
        Allocates ``in_size`` booleans: for small axes and tests only."""
        mask = np.zeros(self.in_size, dtype=bool)
        mask[self.used_indices(out_lo, out_hi)] = True
        return mask

    def used_count(self, out_lo: int = 0, out_hi: int | None = None) -> int:
        """Number of distinct real input indices read by outputs [out_lo, out_hi)."""
        out_hi = self.out_size if out_hi is None else out_hi
        return int(self.read_counts(out_lo, out_hi)[0])

    @cached_property
    def class_stats(self) -> dict[int, tuple[int, int]]:
        """``{ρ: (real (h, r) pairs reading inputs x ≡ ρ (mod σ), multiplicity within the
        class = max over such x of #{(h, r)})}`` for the non-empty classes (exact; an
        endpoint sweep over the taps, O(R log R))."""
        res, quo, top, _ = self._taps
        a = np.maximum(quo, 0)
        b = np.minimum(quo + self.out_size, top)
        keep = a < b
        if not keep.any():
            return {}
        res, quo, a, b = res[keep], quo[keep], a[keep], b[keep]
        # coverage of t by [q, q + H): +1 at max(q, 0), -1 at q + H (ends before starts)
        cls = np.concatenate([res, res])
        pos = np.concatenate([a, quo + self.out_size])
        delta = np.concatenate([np.ones_like(a), -np.ones_like(a)])
        order = np.lexsort((delta, pos, cls))
        cover = np.cumsum(delta[order])
        cls = cls[order]
        heads = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
        mult = np.maximum.reduceat(cover, heads)
        pheads = np.flatnonzero(np.r_[True, res[1:] != res[:-1]])
        pairs = np.add.reduceat(b - a, pheads)
        return {int(k): (int(n), int(m)) for k, n, m in zip(res[pheads], pairs, mult)}

    @cached_property
    def usage(self) -> tuple[int, int, int]:
        """(real (h, r) pairs, taps r used by some real pair, outputs h with a real tap)."""
        res, quo, top, _ = self._taps
        a, b = np.maximum(quo, 0), np.minimum(quo + self.out_size, top)
        keep = a < b
        pairs, taps = int((b - a)[keep].sum()), int(keep.sum())
        hs, he = (a - quo)[keep], (b - quo)[keep]      # outputs h of each tap: [hs, he)
        if hs.size == 0:
            return pairs, taps, 0
        order = np.argsort(hs, kind="stable")
        hs, he = hs[order], he[order]
        reach = np.maximum.accumulate(he)
        prev = np.r_[hs[0], reach[:-1]]
        outs = int(np.maximum(he - np.maximum(hs, prev), 0).sum())
        return pairs, taps, outs

    @property
    def multiplicity(self) -> int:
        """ρ for this axis: max over input indices x of #{(h, r) : σh + δr − pad = x}
        (exact count; padding positions excluded)."""
        return max((m for _, m in self.class_stats.values()), default=0)

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
        for i, ax in enumerate("hw"):
            if self.kernel[i] > MAX_KERNEL:
                raise ValueError(f"kernel[{ax}]={self.kernel[i]} taps: at most {MAX_KERNEL} "
                                 "supported")
            padded = self.in_size[i] + 2 * self.padding[i]
            for f, v in (("in_size + 2*padding", padded), ("stride", self.stride[i]),
                         ("dilation", self.dilation[i])):
                if v > MAX_EXTENT:
                    raise ValueError(f"{f} along {ax} is {v}: at most 2**60 supported")
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
        return math.prod(self.input_shape)

    @property
    def filter_elems(self) -> int:
        return math.prod(self.filter_shape)

    @property
    def output_elems(self) -> int:
        return math.prod(self.output_shape)

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
