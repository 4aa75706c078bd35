"""Single-process forward pass of a layer graph (the ``--verify`` reference), and the
local kernels of the non-convolution layers that the MPI runtime shares.

Convolutions run through :func:`parconv.conv2d` (accumulation in float32) plus the
folded bias; pooling follows PyTorch exactly (padding, ``ceil_mode``, ``count_include_pad``,
adaptive bins); ReLU, residual add, channel concatenation, global average pooling,
flatten and the fully connected layer complete the set.

Precision (as the runtime and the network planner assume): activations live in the
precision's input type (float32, or bfloat16 on the wire); a convolution accumulates in
float32, adds its bias in float32 and is rounded once to the activation type; pooling
averages, residual sums and the global pool are computed in float32 and rounded once;
the network output (the logits) stays float32.
"""

from __future__ import annotations

import numpy as np

from .. import dtypes
from ..dtypes import PRESETS, Precision
from .graph import Graph, Node
from .weights import folded


def activation_dtype(precision: Precision) -> np.dtype:
    """The type activations are stored and sent in (the precision's input type)."""
    return dtypes.numpy_dtype(precision.input)


def check_network_precision(precision: Precision) -> None:
    """Refuse precisions the network runtime does not run.

    Raises
    ------
    ValueError
        For an integer precision (int8 inference needs a requantisation scheme between
        layers, not implemented) or a float precision the local kernel cannot accumulate.
    """
    if precision.is_integer:
        raise ValueError(f"precision {precision.label()}: integer network inference is not "
                         "supported (it needs a requantisation scheme between layers, not "
                         "implemented; use --dtype fp32 or bf16; 'parconv net plan --dtype "
                         "int8' plans it)")
    from ..runtime.errors import check_precision
    from ..spec import ConvSpec

    check_precision(ConvSpec(1, 1, 1, (1, 1), 1, precision=precision))


# -- local kernels ---------------------------------------------------------------------
def _axis_geometry(node: Node, n: int, axis: int, o0: int, o1: int):
    """(window starts, padded window sizes, clipped sizes) of outputs ``o0..o1`` of a
    max/avg pool along one spatial axis, as PyTorch computes them."""
    k, s, p = node.attrs["kernel"][axis], node.attrs["stride"][axis], node.attrs["padding"][axis]
    start = np.arange(o0, o1, dtype=np.int64) * s - p
    end = np.minimum(start + k, n + p)
    clipped = np.minimum(end, n) - np.maximum(start, 0)
    return start, end - start, clipped


def window_block(node: Node, in_hw: tuple[int, int], x: np.ndarray, origin: tuple[int, int],
                 out_rows: tuple[int, int], out_cols: tuple[int, int]) -> np.ndarray:
    """Output rows ``out_rows`` × columns ``out_cols`` (half-open) of a max, average or
    adaptive average pool, in float32.

    ``x`` ``(b, c, nr, nc)`` holds the input at global rows ``origin[0] ...`` and columns
    ``origin[1] ...``; every real input the requested outputs read must lie inside it
    (other entries are never read).
    """
    b, c = x.shape[:2]
    (o0, o1), (p0, p1) = out_rows, out_cols
    out = np.zeros((b, c, o1 - o0, p1 - p0), np.float32)
    if out.size == 0:
        return out
    r0, c0 = origin
    if node.op == "adaptive_avgpool":
        wr, wc = node.windows((c, *in_hw))
        for i in range(o0, o1):
            for j in range(p0, p1):
                blk = x[:, :, wr[i, 0] - r0:wr[i, 1] - r0, wc[j, 0] - c0:wc[j, 1] - c0]
                out[:, :, i - o0, j - p0] = (blk.astype(np.float32).sum(axis=(2, 3))
                                             / np.float32(blk.shape[2] * blk.shape[3]))
        return out
    (H, W), k, s = in_hw, node.attrs["kernel"], node.attrs["stride"]
    (sr, szr, clr), (sc, szc, clc) = (_axis_geometry(node, H, 0, o0, o1),
                                      _axis_geometry(node, W, 1, p0, p1))
    # padded input over the windows of these outputs, filled outside the real input
    g_r0, g_c0 = int(sr[0]), int(sc[0])
    g_r1, g_c1 = int(sr[-1]) + k[0], int(sc[-1]) + k[1]
    fill = -np.inf if node.op == "maxpool" else 0.0
    pad = np.full((b, c, g_r1 - g_r0, g_c1 - g_c0), fill, np.float32)
    vr0, vr1 = max(g_r0, 0), min(g_r1, H)
    vc0, vc1 = max(g_c0, 0), min(g_c1, W)
    pad[:, :, vr0 - g_r0:vr1 - g_r0, vc0 - g_c0:vc1 - g_c0] = \
        x[:, :, vr0 - r0:vr1 - r0, vc0 - c0:vc1 - c0]
    nr, nc = o1 - o0, p1 - p0
    first = True
    for i in range(k[0]):
        for j in range(k[1]):
            v = pad[:, :, i:i + (nr - 1) * s[0] + 1:s[0], j:j + (nc - 1) * s[1] + 1:s[1]]
            if first:
                out[...] = v
                first = False
            elif node.op == "maxpool":
                np.maximum(out, v, out=out)
            else:
                out += v
    if node.op == "avgpool":
        if node.attrs.get("count_include_pad", True):
            div = szr[:, None] * szc[None, :]
        else:
            div = clr[:, None] * clc[None, :]
        out /= div.astype(np.float32)
    return out


def finish(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` rounded once to ``dtype`` (a contiguous new array)."""
    out = np.empty(values.shape, dtype)
    np.copyto(out, values, casting="unsafe")
    return out


def add_arrays(arrays: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """Elementwise sum in float32 (inputs in order), rounded once to ``dtype``."""
    acc = arrays[0].astype(np.float32)
    for a in arrays[1:]:
        acc += a.astype(np.float32)
    return finish(acc, dtype)


def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0) in the type of ``x`` (exact)."""
    return finish(np.maximum(x.astype(np.float32), np.float32(0)), x.dtype)


# -- the reference forward ---------------------------------------------------------------
def forward(graph: Graph, weights: dict[str, np.ndarray], x: np.ndarray,
            precision: Precision | None = None,
            keep: bool = False) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """The network output of ``graph`` on input ``x`` ``(B, C, H, W)``, single process.

    Parameters
    ----------
    graph, weights : the layer graph and its parameters (torchvision names; batch norms
        are folded here, :func:`parconv.network.weights.folded`).
    x : the input (any float type; rounded to the activation type first).
    precision : float32 (default) or bfloat16/float16 activations (see the module docs).
    keep : also return every node's output.

    Returns
    -------
    The output as float32 ``(B, K)`` for a final fc (``(B, C, H, W)`` otherwise), or
    ``(output, {node: output})`` with ``keep``.
    """
    from ..conv import conv2d

    precision = precision or PRESETS["fp32"]
    check_network_precision(precision)
    act = activation_dtype(precision)
    fdt = dtypes.numpy_dtype(precision.filter)
    cons = graph.consumers()
    vals: dict[str, np.ndarray] = {}
    for node in graph:
        ins = [vals[i] for i in node.inputs]
        if node.op == "input":
            if tuple(x.shape[1:]) != node.shape:
                raise ValueError(f"input has per-sample shape {tuple(x.shape[1:])}, the graph "
                                 f"expects {node.shape}")
            y = finish(np.asarray(x), act)
        elif node.is_conv:
            w, b = folded(node, weights)
            a = node.attrs
            geo = ((1, 1), (0, 0), (1, 1)) if node.op == "fc" else (
                a["stride"], a["padding"], a["dilation"])
            z = conv2d(ins[0], w.astype(fdt), *geo, out_dtype=np.float32)
            z += b[None, :, None, None]
            y = finish(z, act) if cons[node.name] else z
        elif node.op == "relu":
            y = relu(ins[0])
        elif node.op in ("maxpool", "avgpool", "adaptive_avgpool"):
            _, h, w_ = graph.in_shape(node.name)
            y = finish(window_block(node, (h, w_), ins[0], (0, 0), (0, node.shape[1]),
                                    (0, node.shape[2])), act)
        elif node.op == "global_avgpool":
            s = ins[0].astype(np.float32).sum(axis=(2, 3), keepdims=True)
            hw = ins[0].shape[2] * ins[0].shape[3]
            y = finish(s / np.float32(hw), act)
        elif node.op == "add":
            y = add_arrays(ins, act)
        elif node.op == "concat":
            y = np.concatenate(ins, axis=1)
        elif node.op == "flatten":
            y = ins[0].reshape(ins[0].shape[0], -1, 1, 1)
        else:
            raise ValueError(f"{node.name}: unsupported op {node.op!r}")
        vals[node.name] = y
    out = vals[graph.output()]
    if out.shape[2:] == (1, 1):
        out = out.reshape(out.shape[:2])
    out = out.astype(np.float32)
    return (out, vals) if keep else out


def seeded_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The network input defined by ``seed``: standard normal float32 of ``shape``."""
    import zlib

    rng = np.random.default_rng([int(seed) & (2**63 - 1), zlib.crc32(b"input")])
    return rng.standard_normal(shape, dtype=np.float32)


__all__ = ["forward", "window_block", "add_arrays", "relu", "finish", "activation_dtype",
           "check_network_precision", "seeded_input"]
