"""C export: a call of the Gemmini library's ``tiled_conv`` with chosen tile factors.

Argument order assumed (``gemmini.h`` of gemmini-rocc-tests, the version whose
``tiled_conv_auto`` takes a square ``in_dim``)::

    tiled_conv(batch_size, in_dim, in_channels, out_channels, out_dim,
               stride, input_dilation, kernel_dilation, padding, kernel_dim,
               wrot180, trans_output_1203, trans_input_3120,
               trans_weight_1203, trans_weight_0132,
               batches, porows, pocols, pochs, krows, kcols, kchs,
               input, weights, bias, output,
               act, scale, relu6_shift,
               pool_size, pool_stride, pool_padding,
               tiled_conv_type)

Later library versions split ``in_dim``/``out_dim`` into row and column sizes and drop
``relu6_shift``; adapt the call there. The library runs the tile with its own loop
order and reuse rules: the factors are portable, parconv's loop-order reuse is not.
"""

from __future__ import annotations

from typing import Any

from ..spec import ConvSpec
from .vendor import TILE_FIELDS

_LAYER_FIELDS = ("batch_size", "in_dim", "in_channels", "out_channels", "out_dim", "stride",
                 "padding", "kernel_dim")


def _layer_args(spec_or_args: ConvSpec | dict[str, Any]) -> dict[str, Any]:
    if isinstance(spec_or_args, ConvSpec):
        s = spec_or_args
        square = (s.in_size[0] == s.in_size[1] and s.kernel[0] == s.kernel[1]
                  and s.stride[0] == s.stride[1] and s.padding[0] == s.padding[1]
                  and s.dilation[0] == s.dilation[1])
        if not square:
            raise ValueError(f"tiled_conv takes square layers only, got {s.describe()}")
        return {"batch_size": s.B, "in_dim": s.in_size[0], "in_channels": s.C,
                "out_channels": s.K, "out_dim": s.H, "stride": s.stride[0],
                "padding": s.padding[0], "kernel_dim": s.R, "kernel_dilation": s.dilation[0],
                "name": s.name}
    args = dict(spec_or_args)
    missing = [f for f in _LAYER_FIELDS if f not in args]
    if missing:
        raise ValueError(f"c_snippet: missing layer argument(s) {', '.join(missing)}")
    return args


def c_snippet(spec_or_args: ConvSpec | dict[str, Any], tile, relu: bool = False,
              arrays: tuple[str, str, str, str] = ("input", "weights", "bias", "output")) -> str:
    """A C statement calling ``tiled_conv`` with ``tile`` for the layer.

    Parameters
    ----------
    spec_or_args : a square :class:`~parconv.spec.ConvSpec`, or a dict with ``batch_size,
        in_dim, in_channels, out_channels, out_dim, stride, padding, kernel_dim`` (and
        optionally ``kernel_dilation``, ``name``).
    tile : ``[batches, porows, pocols, pochs, krows, kcols, kchs]``.
    relu : activation RELU instead of NO_ACTIVATION.
    arrays : C names of the input, weight, bias and output arrays (bias may be ``NULL``).

    Raises
    ------
    ValueError
        For a non-square layer, a missing argument or a malformed tile.
    """
    a = _layer_args(spec_or_args)
    tile = [int(t) for t in tile]
    if len(tile) != 7 or min(tile) <= 0:
        raise ValueError(f"tile must be 7 positive ints {TILE_FIELDS}, got {tile}")
    inp, wts, bias, out = arrays
    head = f"/* parconv Gemmini tile for {a['name']} */\n" if a.get("name") else ""
    factors = ", ".join(f"/*{n}=*/{v}" for n, v in zip(TILE_FIELDS, tile))
    return (
        f"{head}tiled_conv(\n"
        f"    /*batch_size=*/{a['batch_size']}, /*in_dim=*/{a['in_dim']}, "
        f"/*in_channels=*/{a['in_channels']},\n"
        f"    /*out_channels=*/{a['out_channels']}, /*out_dim=*/{a['out_dim']},\n"
        f"    /*stride=*/{a['stride']}, /*input_dilation=*/1, "
        f"/*kernel_dilation=*/{a.get('kernel_dilation', 1)}, /*padding=*/{a['padding']}, "
        f"/*kernel_dim=*/{a['kernel_dim']},\n"
        f"    /*wrot180=*/false, /*trans_output_1203=*/false, /*trans_input_3120=*/false,\n"
        f"    /*trans_weight_1203=*/false, /*trans_weight_0132=*/false,\n"
        f"    {factors},\n"
        f"    {inp}, {wts}, {bias}, {out},\n"
        f"    {'RELU' if relu else 'NO_ACTIVATION'}, ACC_SCALE_IDENTITY, /*relu6_shift=*/0,\n"
        f"    /*pool_size=*/1, /*pool_stride=*/0, /*pool_padding=*/0,\n"
        f"    WS);\n"
    )
