"""Training passes of a convolution layer and their precisions (THEORY.md §7; pure).

All three passes iterate the same 7-loop space ``(b, k, c, h, w, r, s)`` with
``x = σh·h + δh·r − padh``, ``y = σw·w + δw·s − padw``; every iteration touches one element
of each of the three *projections*:

* ``"input"``  -- indexed ``(b, c, x, y)``: ``In`` or its gradient ``dIn``;
* ``"filter"`` -- indexed ``(k, c, r, s)``: ``F`` or ``dF``;
* ``"output"`` -- indexed ``(b, k, h, w)``: ``Out`` or ``dOut``.

What differs is which two projections are read and which one is accumulated:

=========  =====================  ===============================  ======================
pass       reads                  accumulates                       summed over
=========  =====================  ===============================  ======================
forward    In (input), F (filter) Out (output)                      c, r, s
dgrad      dOut (output), F       dIn (input): dIn += dOut · F      k, r, s
wgrad      In (input), dOut       dF (filter): dF += In · dOut      b, h, w
=========  =====================  ===============================  ======================

Iterations whose input coordinate ``(x, y)`` is padding are not computed in any pass
(forward and wgrad multiply by a zero; dgrad would accumulate into a padding position of
``dIn``, which is not part of the result), so the *real* iteration set is the same.

A training precision is derived from the forward precision ``In/F/acc -> Out``: the
output gradient ``dOut`` travels in the activation (forward output) type, ``dIn`` is
delivered in the input type, ``dF`` in the accumulator type (the master-weight update
needs it wide), and every pass accumulates in the accumulator type. Named presets:
``fp32``, ``bf16``, ``fp16`` (activations, weights and gradients in 16 bits, fp32
accumulation, dF delivered in fp32), ``fp64``. Integer training is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dtypes import Precision, bits, canonical, is_integer, parse_precision

#: The three passes, in the order a training step runs them.
PASSES: tuple[str, ...] = ("forward", "dgrad", "wgrad")
#: The ``--pass`` value of a whole training step (forward + dgrad + wgrad).
STEP = "step"
#: The three projections of an iteration.
PROJECTIONS: tuple[str, ...] = ("input", "filter", "output")

#: pass -> (accumulated projection, {projection: array name}).
_ROLES: dict[str, tuple[str, dict[str, str]]] = {
    "forward": ("output", {"input": "In", "filter": "F", "output": "Out"}),
    "dgrad": ("input", {"input": "dIn", "filter": "F", "output": "dOut"}),
    "wgrad": ("filter", {"input": "In", "filter": "dF", "output": "dOut"}),
}


def check_pass(pass_: str, *, allow_step: bool = False) -> str:
    """Validate a pass name (``forward``, ``dgrad``, ``wgrad``; ``step`` if allowed).

    Raises
    ------
    ValueError
        Naming the valid choices.
    """
    name = str(pass_).strip().lower()
    valid = PASSES + ((STEP,) if allow_step else ())
    if name not in valid:
        raise ValueError(f"pass {pass_!r}: expected one of {', '.join(valid)}")
    return name


@dataclass(frozen=True)
class PassPrecision:
    """Element types of one pass, per projection.

    Attributes
    ----------
    pass_:
        ``"forward"``, ``"dgrad"`` or ``"wgrad"``.
    input, filter, output:
        dtype of the array of that projection: the type it is *read* in for the two
        read projections, the type it is *delivered* in for the accumulated one.
    accum:
        Accumulator type: a partial sum of the accumulated projection lives and travels
        in it.
    """

    pass_: str
    input: str
    filter: str
    output: str
    accum: str

    @property
    def accumulated(self) -> str:
        """The accumulated projection (``"output"``, ``"input"`` or ``"filter"``)."""
        return _ROLES[self.pass_][0]

    @property
    def read(self) -> tuple[str, str]:
        """The two read projections."""
        return tuple(p for p in PROJECTIONS if p != self.accumulated)  # type: ignore[return-value]

    def array(self, projection: str) -> str:
        """Array name of a projection in this pass (``In``, ``dIn``, ``F``, ``dF``, ...)."""
        return _ROLES[self.pass_][1][projection]

    def dtype(self, projection: str) -> str:
        """dtype of a projection (read type, or delivered type if accumulated)."""
        return getattr(self, projection)

    def weight(self, projection: str) -> int:
        """Bits charged per element of a projection in the bounds: the read type for a read
        projection; ``min(accumulator, delivered)`` for the accumulated one (a partial sum
        travels in the accumulator type, a finished element may be kept or stored in the
        delivered type, so the smaller is the conservative weight)."""
        b = bits(self.dtype(projection))
        return min(b, bits(self.accum)) if projection == self.accumulated else b

    @property
    def p_accum(self) -> int:
        """Bits of a partial sum."""
        return bits(self.accum)

    @property
    def p_delivered(self) -> int:
        """Bits of a finished element of the accumulated array."""
        return bits(self.dtype(self.accumulated))

    @property
    def p_max(self) -> int:
        """Widest single transfer of the pass (a read element, a partial sum, a finished
        element)."""
        return max(bits(self.input), bits(self.filter), bits(self.output), self.p_accum)

    def label(self) -> str:
        """E.g. ``dgrad: dOut bfloat16 x F bfloat16 -> dIn (acc float32) bfloat16``."""
        r1, r2 = self.read
        a = self.accumulated
        return (f"{self.pass_}: {self.array(r1)} {self.dtype(r1)} x {self.array(r2)} "
                f"{self.dtype(r2)} -> {self.array(a)} (acc {self.accum}) {self.dtype(a)}")

    def to_dict(self) -> dict:
        """JSON-friendly form: per projection its array, dtype, role and weight in bits."""
        return {
            "pass": self.pass_, "accum": self.accum, "accumulated": self.accumulated,
            "projections": {
                p: {"array": self.array(p), "dtype": self.dtype(p),
                    "role": "accumulated" if p == self.accumulated else "read",
                    "weight_bits": self.weight(p)} for p in PROJECTIONS},
            "p_max": self.p_max,
        }


def pass_precision(precision: Precision, pass_: str) -> PassPrecision:
    """Per-projection types of ``pass_`` for a layer whose forward precision is ``precision``.

    Raises
    ------
    ValueError
        For an unknown pass, or for ``dgrad``/``wgrad`` of an integer precision (integer
        training is not supported).
    """
    name = check_pass(pass_)
    p = precision
    if name == "forward":
        return PassPrecision("forward", p.input, p.filter, p.output, p.accum)
    _refuse_integer(p)
    if name == "dgrad":     # reads dOut (activation type) and F, delivers dIn (input type)
        return PassPrecision("dgrad", p.input, p.filter, p.output, p.accum)
    # wgrad: reads In and dOut, delivers dF in the accumulator type
    return PassPrecision("wgrad", p.input, p.accum, p.output, p.accum)


def _refuse_integer(p: Precision) -> None:
    if p.is_integer or is_integer(p.output):
        raise ValueError(
            f"integer training is not supported: dtype {p.label()} has no gradient type; "
            "use a training preset (fp32, bf16, fp16, fp64) for dgrad, wgrad and step")


@dataclass(frozen=True)
class TrainingPrecision:
    """The precisions of the three passes of a training step, derived from the forward one.

    Attributes
    ----------
    name:
        Preset name (``fp32``, ``bf16``, ``fp16``, ``fp64``) or the forward label.
    forward_precision:
        The forward :class:`~parconv.dtypes.Precision` (``In/F/acc -> Out``); put it in the
        layer's :class:`~parconv.spec.ConvSpec` to bound the passes.
    """

    name: str
    forward_precision: Precision

    def __post_init__(self) -> None:
        _refuse_integer(self.forward_precision)

    def pass_precision(self, pass_: str) -> PassPrecision:
        """Per-projection types of one pass."""
        return pass_precision(self.forward_precision, pass_)

    @property
    def passes(self) -> dict[str, PassPrecision]:
        """``{pass: PassPrecision}`` for forward, dgrad, wgrad."""
        return {p: self.pass_precision(p) for p in PASSES}

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {"name": self.name, "forward": self.forward_precision.label(),
                "passes": {p: pp.to_dict() for p, pp in self.passes.items()}}


#: Named training presets. bf16 and fp16: activations, weights and gradients in 16 bits,
#: accumulation in fp32, dF delivered in fp32. (The forward of the bf16 *training* preset
#: stores its output in bf16; the inference preset ``--dtype bf16`` keeps it in fp32.)
TRAINING_PRESETS: dict[str, TrainingPrecision] = {
    "fp32": TrainingPrecision("fp32", Precision("float32", "float32", "float32", "float32")),
    "bf16": TrainingPrecision("bf16", Precision("bfloat16", "bfloat16", "float32", "bfloat16")),
    "fp16": TrainingPrecision("fp16", Precision("float16", "float16", "float32", "float16")),
    "fp64": TrainingPrecision("fp64", Precision("float64", "float64", "float64", "float64")),
}


def training_precision(dtype: str | Precision | TrainingPrecision) -> TrainingPrecision:
    """A training precision from a preset name (``fp32``, ``bf16``, ``fp16``, ``fp64``, or
    the dtype names ``float32``, ``bfloat16``, ...), an ``IN/FILTER/ACC[/OUT]`` string, or a
    forward :class:`~parconv.dtypes.Precision`.

    Raises
    ------
    ValueError
        For integer dtypes (``integer training is not supported``) and unknown names.
    """
    if isinstance(dtype, TrainingPrecision):
        return dtype
    if isinstance(dtype, Precision):
        return TrainingPrecision(dtype.label(), dtype)
    key = str(dtype).strip().lower()
    if "/" not in key:
        try:
            key = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16",
                   "float64": "fp64"}.get(canonical(key), key)
        except ValueError:
            pass
        if key in TRAINING_PRESETS:
            return TRAINING_PRESETS[key]
    prec = parse_precision(key)      # raises for unknown names
    return TrainingPrecision(prec.label(), prec)
