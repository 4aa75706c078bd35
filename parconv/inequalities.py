"""The inequalities that bound how many iterations a set of iterations can perform with
given data footprints (THEORY.md §2; proofs in ``docs/theory.md``).

For a finite set V of iterations of the convolution loop nest, let V' be the iterations
of V that read a *real* input element (padding taps multiply by zero: a schedule may skip
them, so bounds are stated for the real iterations only), and let I, F, O be the numbers
of distinct input, filter and output elements V' touches. Then

* (I1)  |V'| <= sqrt(rho * I * F * O)            Loomis-Whitney on the im2col form
* (I2)  |V'| <= O*C*R*S,  F*B*H*W,  I*K*rho,  G_real
* (I3)  |V'| <= O*F,  O*I,  F*I                  two elements fix the iteration

where rho is the exact multiplicity (``ConvSpec.rho``) and G_real the number of real
iterations. A refinement of (I1) for strided layers splits V' by *stride class*
kappa = (x mod σh, y mod σw) of the input it reads (classes touch disjoint inputs and
disjoint filter taps):

* (I1w) sum_kappa |V'_kappa| / sqrt(rho_kappa) <= sqrt(I * F * O)

with rho_kappa the multiplicity within the class (max over kappa is rho); see
:func:`stride_classes` and :func:`weighted_work`. The tempting |V'| <= sqrt(I*F*O) is FALSE (THEORY.md §2 pitfall) and is not
used anywhere.

The counts an analysis needs (bits per element, used array sizes, G_real) are gathered in
:class:`Counts` (see :func:`counts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .spec import Axis, ConvSpec

#: Names of the inequalities, as reported in ``Bound.binding`` / ``details["tight"]``.
I1 = "I1 (Loomis-Whitney, rho)"
I2_OUT = "I2: |V|<=O*C*R*S"
I2_FILTER = "I2: |V|<=F*B*H*W"
I2_INPUT = "I2: |V|<=I*K*rho"
I2_G = "I2: |V|<=G"
I3_OF = "I3: |V|<=O*F"
I3_OI = "I3: |V|<=O*I"
I3_FI = "I3: |V|<=F*I"
NAMES: tuple[str, ...] = (I1, I2_OUT, I2_FILTER, I2_INPUT, I2_G, I3_OF, I3_OI, I3_FI)
#: The stride-class refinement of (I1) (a bound on weighted work, not on |V'|).
I1W = "I1w (Loomis-Whitney per stride class)"


def _axis_usage(ax: Axis) -> tuple[int, int, int]:
    """(number of real (h, r) pairs, taps r used by some real pair, outputs h with a real tap)
    (closed form, :attr:`parconv.spec.Axis.usage`)."""
    return ax.usage


@dataclass(frozen=True)
class Counts:
    """Everything the bounds need about a layer, in plain numbers.

    Attributes
    ----------
    p_in, p_filter, p_out:
        Bits per input, filter and output element. ``p_out`` is
        ``min(p_accum, p_output)``: a partial sum lives in the accumulator type, but a
        finished output may be kept or stored in the (narrower) output type, so the
        smaller of the two is the conservative weight of an output element.
    rho:
        Exact multiplicity ρ = ρ_h·ρ_w.
    B, K, C, H, W, R, S:
        Loop bounds.
    g_real:
        Iterations that read a real (non-padding) input element.
    in_used, filter_used, out_used:
        Elements touched by some real iteration (the box limits of the footprints).
    in_total, filter_total, out_total:
        Full array sizes (used for the owned share in the parallel bounds).
    p_accum, p_output:
        Bits of a partial sum and of a finished element of the *accumulated* array (its
        weight is their minimum); only :attr:`p_max` and the network-only test use them.
    accumulated:
        Which projection the pass accumulates: ``"output"`` (forward, the default),
        ``"input"`` (dgrad: dIn) or ``"filter"`` (wgrad: dF). The weights ``p_in``,
        ``p_filter``, ``p_out`` are always per *projection* ((b,c,x,y), (k,c,r,s),
        (b,k,h,w)); only the compulsory term and the data-size test depend on the roles.
    p_transfer:
        Extra lower limit on :attr:`p_max` (the widest transfer of a whole training step,
        when a bound covers several passes); 0 for one pass.
    """

    p_in: float
    p_filter: float
    p_out: float
    rho: int
    B: int  # noqa: N815
    K: int  # noqa: N815
    C: int  # noqa: N815
    H: int  # noqa: N815
    W: int  # noqa: N815
    R: int  # noqa: N815
    S: int  # noqa: N815
    g_real: int
    in_used: int
    filter_used: int
    out_used: int
    in_total: int
    filter_total: int
    out_total: int
    p_accum: float = 0.0
    p_output: float = 0.0
    accumulated: str = "output"
    p_transfer: float = 0.0

    @property
    def crs(self) -> int:
        return self.C * self.R * self.S

    @property
    def bhw(self) -> int:
        return self.B * self.H * self.W

    @property
    def p_max(self) -> float:
        """Largest single transfer in bits: an input, a filter element, a partial sum
        (``p_accum``) or a finished output (``p_output``). Not ``p_out``: with a narrower
        output type (fp16 with fp32 accumulation) a spilled partial sum is wider."""
        return max(self.p_in, self.p_filter, self.p_out, self.p_accum, self.p_output,
                   self.p_transfer)

    def used(self, projection: str) -> int:
        """Elements of a projection touched by some real iteration."""
        return {"input": self.in_used, "filter": self.filter_used,
                "output": self.out_used}[projection]

    def total(self, projection: str) -> int:
        """Full size of a projection's array."""
        return {"input": self.in_total, "filter": self.filter_total,
                "output": self.out_total}[projection]

    def weight(self, projection: str) -> float:
        """Bits charged per element of a projection."""
        return {"input": self.p_in, "filter": self.p_filter, "output": self.p_out}[projection]


@lru_cache(maxsize=4096)
def counts(spec: ConvSpec, pass_: str = "forward") -> Counts:
    """The numbers of :class:`Counts` for ``spec`` and one training pass (exact; cached).

    ``spec.precision`` is the forward precision; the per-projection types of ``dgrad``
    and ``wgrad`` follow from it (:func:`parconv.passes.pass_precision`; integer
    precisions are refused for them).
    """
    from .passes import pass_precision

    (nh, rh, hh), (nw, rw, hw) = (_axis_usage(a) for a in spec.axes)
    pp = pass_precision(spec.precision, pass_)
    return Counts(
        p_in=float(pp.weight("input")), p_filter=float(pp.weight("filter")),
        p_out=float(pp.weight("output")), rho=int(spec.rho),
        B=spec.B, K=spec.K, C=spec.C, H=spec.H, W=spec.W, R=spec.R, S=spec.S,
        g_real=spec.B * spec.K * spec.C * nh * nw,
        in_used=int(spec.input_used_elems), filter_used=spec.K * spec.C * rh * rw,
        out_used=spec.B * spec.K * hh * hw,
        in_total=spec.input_elems, filter_total=spec.filter_elems, out_total=spec.output_elems,
        p_accum=float(pp.p_accum), p_output=float(pp.p_delivered),
        accumulated=pp.accumulated,
    )


def stride_classes(ax: Axis) -> dict[int, tuple[int, int]]:
    """Stride classes of one axis: ``{x mod σ: (real (h, r) pairs reading such x,
    multiplicity within the class = max count of one such x)}`` (non-empty classes only).

    A tap r reads only rows x ≡ δ·r − pad (mod σ), so classes partition both the real
    input rows and the taps. Closed form (:attr:`parconv.spec.Axis.class_stats`), in time
    independent of the extents."""
    return dict(ax.class_stats)


@lru_cache(maxsize=4096)
def weighted_work(spec: ConvSpec) -> float:
    """G_w = sum over stride classes kappa of G_kappa / sqrt(rho_kappa): the total of the
    weighted work that (I1w) bounds by sqrt(I·F·O). Equals G_real/sqrt(rho) when every
    stride is 1; larger for strided layers whose classes have unequal multiplicity."""
    per_axis = [sum(n / np.sqrt(m) for n, m in stride_classes(ax).values()) for ax in spec.axes]
    return float(spec.B * spec.K * spec.C * per_axis[0] * per_axis[1])


def real_iterations(spec: ConvSpec) -> int:
    """G_real: iterations whose input read is a real element (padding taps excluded)."""
    return counts(spec).g_real


def inequalities(spec: ConvSpec, i, f, o) -> dict[str, float | np.ndarray]:
    """Each inequality's upper bound on |V'| for footprints ``i, f, o`` (elements).

    Footprints larger than what the layer has (e.g. ``i > |In_used|``) are clipped to
    the used array sizes first (a set of real iterations cannot touch more). Works
    elementwise on numpy arrays.

    Returns
    -------
    dict
        Inequality name (:data:`NAMES`) -> bound.
    """
    c = counts(spec)
    i = np.minimum(np.asarray(i, dtype=float), c.in_used)
    f = np.minimum(np.asarray(f, dtype=float), c.filter_used)
    o = np.minimum(np.asarray(o, dtype=float), c.out_used)
    vals = {
        I1: np.sqrt(c.rho * i * f * o),
        I2_OUT: o * c.crs,
        I2_FILTER: f * c.bhw,
        I2_INPUT: i * (c.K * c.rho),
        I2_G: np.full(np.broadcast(i, f, o).shape, float(c.g_real)),
        I3_OF: o * f,
        I3_OI: o * i,
        I3_FI: f * i,
    }
    return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in vals.items()}


def max_iterations(spec: ConvSpec, i: float, f: float, o: float) -> float:
    """Upper bound on the number of real iterations of any set of iterations whose
    footprints are at most ``i`` input, ``f`` filter and ``o`` output elements: the
    minimum over (I1), (I2), (I3) and G_real.

    Examples
    --------
    The THEORY.md pitfall (1-D, W = R = 2, σ = 1): all 4 iterations touch I=3, F=2, O=2,
    and ``max_iterations`` allows them (``sqrt(I*F*O) = 3.46`` would not).
    """
    vals = inequalities(spec, i, f, o)
    return float(min(float(np.min(v)) for v in vals.values()))
