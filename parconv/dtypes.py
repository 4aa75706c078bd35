"""Element types and precision presets.

Every dtype parconv handles is named by a short string (``"int8"``, ``"bfloat16"``,
...). ``bfloat16`` comes from :mod:`ml_dtypes`, the maintained numpy extension used by
JAX and TensorFlow; nothing here hand-rolls bit tricks.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

#: name -> numpy dtype for every supported element type.
DTYPES: dict[str, np.dtype] = {
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}

_ALIASES = {
    "fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32",
    "float": "float32", "fp64": "float64", "double": "float64", "i8": "int8",
    "u8": "uint8", "i16": "int16", "i32": "int32", "i64": "int64",
}


def canonical(name: str) -> str:
    """Return the canonical dtype name for ``name`` (aliases such as ``bf16`` allowed).

    Raises
    ------
    ValueError
        If the name is not a supported dtype.
    """
    if isinstance(name, np.dtype) or isinstance(name, type):
        dt = np.dtype(name)
        for key, val in DTYPES.items():
            if val == dt:
                return key
        raise ValueError(f"unsupported dtype {dt!r}; supported: {', '.join(DTYPES)}")
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; supported: {', '.join(DTYPES)}")
    return key


def numpy_dtype(name: str) -> np.dtype:
    """numpy dtype for a dtype name."""
    return DTYPES[canonical(name)]


def bits(name: str) -> int:
    """Bits per element of a dtype."""
    return numpy_dtype(name).itemsize * 8


def is_integer(name: str) -> bool:
    """True for the integer dtypes."""
    return canonical(name) in ("int8", "uint8", "int16", "int32", "int64")


def value_range(name: str) -> tuple[float, float]:
    """Smallest and largest finite value representable by a dtype."""
    dt = numpy_dtype(name)
    if is_integer(name):
        info = np.iinfo(dt)
        return float(info.min), float(info.max)
    info = ml_dtypes.finfo(dt) if canonical(name) == "bfloat16" else np.finfo(dt)
    return float(info.min), float(info.max)


def _mantissa_bits(name: str) -> int:
    c = canonical(name)
    return {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}[c]


@dataclass(frozen=True)
class Precision:
    """Element types of one convolution.

    Parameters
    ----------
    input, filter:
        Storage types of the input activations and the weights.
    accum:
        The accumulator type: partial sums live and travel in it.
    output:
        Storage type of the final output (defaults to ``accum``).
    """

    input: str = "float32"
    filter: str = "float32"
    accum: str = "float32"
    output: str = ""

    def __post_init__(self) -> None:
        for field in ("input", "filter", "accum"):
            object.__setattr__(self, field, _checked(field, getattr(self, field)))
        out = self.output or self.accum
        object.__setattr__(self, "output", _checked("output", out))
        ints = [is_integer(t) for t in (self.input, self.filter)]
        if any(ints) and not all(ints):
            raise ValueError(
                f"precision: input {self.input!r} and filter {self.filter!r} must both be "
                "integer or both floating point"
            )
        if all(ints):
            if not is_integer(self.accum):
                raise ValueError(
                    f"precision.accum: integer inputs need an integer accumulator, got {self.accum!r}"
                )
            need = bits(self.input) + bits(self.filter)
            if bits(self.accum) < need:
                raise ValueError(
                    f"precision.accum: {self.accum!r} ({bits(self.accum)} bits) is narrower than the "
                    f"{need}-bit product of {self.input} x {self.filter}"
                )
        else:
            if is_integer(self.accum):
                raise ValueError(
                    f"precision.accum: floating-point inputs need a floating accumulator, got {self.accum!r}"
                )
            widest = max(_mantissa_bits(self.input), _mantissa_bits(self.filter))
            if _mantissa_bits(self.accum) < widest:
                raise ValueError(
                    f"precision.accum: {self.accum!r} is narrower than the inputs "
                    f"({self.input}, {self.filter})"
                )

    @property
    def p_input(self) -> int:
        """Bits per input element (p_I)."""
        return bits(self.input)

    @property
    def p_filter(self) -> int:
        """Bits per filter element (p_F)."""
        return bits(self.filter)

    @property
    def p_accum(self) -> int:
        """Bits per accumulator element (p_O)."""
        return bits(self.accum)

    @property
    def p_output(self) -> int:
        """Bits per final output element."""
        return bits(self.output)

    @property
    def is_integer(self) -> bool:
        """True for integer (quantised) convolutions."""
        return is_integer(self.input)

    def label(self) -> str:
        """Short human-readable form, e.g. ``int8/int8/int32``."""
        s = f"{self.input}/{self.filter}/{self.accum}"
        return s if self.output == self.accum else f"{s}->{self.output}"


def _checked(field: str, name: str) -> str:
    try:
        return canonical(name)
    except ValueError as exc:
        raise ValueError(f"precision.{field}: {exc}") from None


#: Named presets accepted by ``--dtype``.
PRESETS: dict[str, Precision] = {
    "int8": Precision("int8", "int8", "int32", "int32"),
    "uint8": Precision("uint8", "int8", "int32", "int32"),
    "fp16": Precision("float16", "float16", "float32", "float16"),
    "bf16": Precision("bfloat16", "bfloat16", "float32", "float32"),
    "fp32": Precision("float32", "float32", "float32", "float32"),
    "fp64": Precision("float64", "float64", "float64", "float64"),
}


def parse_precision(text: str) -> Precision:
    """Parse a preset name (``int8``, ``bf16``, ...) or ``IN/FILTER/ACC[/OUT]``.

    Raises
    ------
    ValueError
        Naming the offending part.
    """
    key = text.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    if key in ("float32", "float64", "bfloat16", "float16"):
        return PRESETS[{"float32": "fp32", "float64": "fp64", "bfloat16": "bf16", "float16": "fp16"}[key]]
    parts = [p for p in key.split("/") if p]
    if len(parts) not in (3, 4):
        raise ValueError(
            f"dtype {text!r}: expected a preset ({', '.join(PRESETS)}) or IN/FILTER/ACC[/OUT]"
        )
    return Precision(*parts)
