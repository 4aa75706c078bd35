"""The Im2Col baseline's exact traffic through a fast memory of ``M`` bytes.

Im2Col lowers the convolution to one GEMM ``Out (K × BHW) = F (K × CRS) · Col (CRS × BHW)``
over the materialised matrix ``Col[(c,r,s), (b,h,w)] = In[b, c, σh·h+δh·r−padh, σw·w+δw·s−padw]``
(zero where that is padding). Its traffic, in bits, is counted as

* **build**: every used input element read once (``p_I·|In_used|``) and every entry of
  ``Col`` written once (``p_I·CRS·BHW``; padding entries are real zeros in ``Col``). This
  is the least any build can move, so the baseline is charged optimistically;
* **GEMM**: the exact traffic of the best box tiling (:func:`parconv.tiling.best_tiling`,
  same schedule semantics and orders) of the 1×1 convolution with ``C' = CRS`` input
  channels on a ``H × W`` image: reads of ``Col`` (``p_I``) and ``F`` (``p_F``), partial
  and final output stores and reloads (``p_O``).

A 1×1, stride-1, unpadded layer already is a GEMM on its input (no frame builds the
matrix then): its Im2Col traffic is the GEMM's alone and equals the direct tiling's.
"""

from __future__ import annotations

from .spec import ConvSpec
from .tiling import Tiling, best_tiling


def is_plain_gemm(spec: ConvSpec) -> bool:
    """True when the im2col matrix is the input itself (1×1, stride 1, no padding)."""
    return spec.kernel == (1, 1) and spec.stride == (1, 1) and spec.padding == (0, 0)


def gemm_spec(spec: ConvSpec) -> ConvSpec:
    """The GEMM of Im2Col as a 1×1 convolution over ``Col`` (CRS channels, H × W image)."""
    return ConvSpec(spec.B, spec.C * spec.R * spec.S, spec.K, (spec.H, spec.W), (1, 1),
                    precision=spec.precision, name=f"{spec.name or 'layer'}:im2col-gemm")


def im2col_breakdown(spec: ConvSpec, memory_bytes: int) -> dict:
    """Bits of each Im2Col phase: ``build_read``, ``matrix_write``, ``gemm``, ``total``,
    and the GEMM's :class:`~parconv.tiling.Tiling` under ``gemm_tiling``.

    Raises
    ------
    ValueError
        When the memory cannot hold the GEMM's smallest tile.
    """
    p = spec.precision
    if is_plain_gemm(spec):
        build, write = 0, 0
        gemm: Tiling = best_tiling(spec, memory_bytes)
    else:
        build = p.p_input * spec.input_used_elems
        write = p.p_input * spec.C * spec.R * spec.S * spec.B * spec.H * spec.W
        gemm = best_tiling(gemm_spec(spec), memory_bytes)
    return {"build_read": build, "matrix_write": write, "gemm": gemm.traffic_bits,
            "total": build + write + gemm.traffic_bits, "gemm_tiling": gemm}


def im2col_traffic_bits(spec: ConvSpec, memory_bytes: int) -> int:
    """Exact traffic in bits of the Im2Col baseline (module docstring).

    Raises
    ------
    ValueError
        When the memory cannot hold the GEMM's smallest tile.
    """
    return im2col_breakdown(spec, memory_bytes)["total"]
