"""A CNN as a layer graph (a DAG) with per-sample shape inference (pure; no MPI).

Nodes are added in topological order (every input must exist already), each under its
torchvision module name. Shapes are per sample, ``(C, H, W)``; the batch and the element
types enter only when a convolution is turned into a :class:`parconv.spec.ConvSpec`
(:meth:`Graph.conv_spec`).

Operations (``Node.op``):

``input``            the network input, ``(C, H, W)``.
``conv``             2-D convolution (``out_channels``, ``kernel``, ``stride``, ``padding``,
                     ``dilation``, ``bias``); ``bn`` names a batch norm folded into it at
                     inference (its weight and bias count as parameters), ``bn_eps`` its
                     epsilon.
``relu``             elementwise.
``maxpool``          window max (``kernel``, ``stride``, ``padding``, ``ceil_mode`` as in
                     PyTorch, dilation 1).
``avgpool``          window average (same attributes, ``count_include_pad``).
``adaptive_avgpool`` PyTorch ``AdaptiveAvgPool2d(output_size)``: output bin ``i`` of an axis
                     of ``n`` inputs averages ``[floor(i·n/o), ceil((i+1)·n/o))``.
``global_avgpool``   mean over ``H, W`` (``AdaptiveAvgPool2d(1)``): output ``(C, 1, 1)``.
``add``              residual add of inputs of one shape.
``concat``           channel concatenation (equal ``H, W``).
``flatten``          ``(C, H, W) -> (C·H·W, 1, 1)``.
``fc``               fully connected ``features -> out_features`` on a ``(F, 1, 1)`` input: a
                     1×1 convolution on a 1×1 image (``in_size (1, 1)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dtypes import PRESETS, Precision
from ..spec import ConvSpec

Shape = tuple[int, int, int]

#: Operations that carry weights and run as a convolution.
CONV_OPS = ("conv", "fc")
#: Window operations (a depthwise conv-like window per channel).
WINDOW_OPS = ("maxpool", "avgpool", "adaptive_avgpool")
OPS = ("input", "conv", "relu", "maxpool", "avgpool", "adaptive_avgpool", "global_avgpool",
       "add", "concat", "flatten", "fc")


def _pair(name: str, v: Any) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v), int(v)
    try:
        a, b = v
        return int(a), int(b)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected an int or a pair of ints, got {v!r}") from None


def pool_out_size(n: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output extent of PyTorch ``MaxPool2d``/``AvgPool2d`` along one axis (dilation 1).

    ``floor`` (or ``ceil``) of ``(n + 2·pad − kernel)/stride`` plus one; in ceil mode the
    last window must start inside the input or the left padding (PyTorch's rule).

    Raises
    ------
    ValueError
        If ``padding > kernel // 2`` (PyTorch refuses it) or the output is empty.
    """
    if kernel < 1 or stride < 1 or padding < 0:
        raise ValueError(f"pool: kernel {kernel} and stride {stride} must be positive and "
                         f"padding {padding} non-negative")
    if padding > kernel // 2:
        raise ValueError(f"pool: padding {padding} must be at most half the kernel {kernel}")
    num = n + 2 * padding - kernel
    if num < 0:
        raise ValueError(f"pool: input {n} + 2*padding {padding} smaller than kernel {kernel}")
    out = (num + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1
    return out


def pool_windows(n: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> np.ndarray:
    """``[start, end)`` of the real (unpadded) inputs read by each output index, shape (out, 2)."""
    out = pool_out_size(n, kernel, stride, padding, ceil_mode)
    start = np.arange(out, dtype=np.int64) * stride - padding
    return np.stack([np.clip(start, 0, n), np.clip(start + kernel, 0, n)], axis=1)


def adaptive_windows(n: int, out: int) -> np.ndarray:
    """``[floor(i·n/out), ceil((i+1)·n/out))`` per output bin (PyTorch ``AdaptiveAvgPool2d``)."""
    if out < 1:
        raise ValueError(f"adaptive pool: output size must be positive, got {out}")
    i = np.arange(out, dtype=np.int64)
    return np.stack([(i * n) // out, -((-(i + 1) * n) // out)], axis=1)


@dataclass(frozen=True)
class Node:
    """One layer: ``name`` (torchvision module name), ``op``, ``inputs`` (node names),
    per-sample output ``shape`` (C, H, W) and op attributes ``attrs``."""

    name: str
    op: str
    inputs: tuple[str, ...]
    shape: Shape
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_conv(self) -> bool:
        """True for ``conv`` and ``fc`` (weights, run by the convolution machinery)."""
        return self.op in CONV_OPS

    def windows(self, in_shape: Shape) -> tuple[np.ndarray, np.ndarray]:
        """Per-axis ``[start, end)`` input windows of a window op (rows, cols)."""
        a = self.attrs
        if self.op == "adaptive_avgpool":
            return (adaptive_windows(in_shape[1], self.shape[1]),
                    adaptive_windows(in_shape[2], self.shape[2]))
        if self.op in ("maxpool", "avgpool"):
            return tuple(pool_windows(in_shape[1 + i], a["kernel"][i], a["stride"][i],
                                      a["padding"][i], a["ceil_mode"]) for i in range(2))
        raise ValueError(f"{self.name}: {self.op} is not a window operation")

    def params(self, in_shape: Shape) -> int:
        """Number of trainable parameters as torchvision counts them (conv weight and
        bias, folded batch norm's weight and bias, fc weight and bias)."""
        if self.op == "conv":
            k, (r, s) = self.shape[0], self.attrs["kernel"]
            n = k * in_shape[0] * r * s + (k if self.attrs["bias"] else 0)
            return n + (2 * k if self.attrs.get("bn") else 0)
        if self.op == "fc":
            return self.shape[0] * in_shape[0] + (self.shape[0] if self.attrs["bias"] else 0)
        return 0


class Graph:
    """A layer DAG built in topological order, with shape inference.

    Example::

        g = Graph("tiny")
        x = g.input("x", (3, 32, 32))
        y = g.relu("relu", g.conv("conv1", x, 16, 3, padding=1, bn="bn1"))
        g.fc("fc", g.flatten("flatten", g.global_avgpool("avgpool", y)), 10)
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.nodes: dict[str, Node] = {}

    # -- construction --------------------------------------------------------------
    def _add(self, name: str, op: str, inputs: tuple[str, ...], shape: Shape, **attrs) -> str:
        if not name or name in self.nodes:
            raise ValueError(f"node name {name!r} is empty or already used")
        for i in inputs:
            if i not in self.nodes:
                raise ValueError(f"{name}: unknown input {i!r} (add nodes in topological order)")
        if any(int(d) < 1 for d in shape):
            raise ValueError(f"{name}: empty output shape {shape}")
        self.nodes[name] = Node(name, op, tuple(inputs), tuple(int(d) for d in shape), attrs)
        return name

    def shape(self, name: str) -> Shape:
        """Per-sample output shape (C, H, W) of a node.

        Raises
        ------
        ValueError
            For an unknown node (nodes are added in topological order).
        """
        node = self.nodes.get(name)
        if node is None:
            raise ValueError(f"unknown input {name!r} (add nodes in topological order)")
        return node.shape

    def input(self, name: str, shape: Shape) -> str:
        """The network input of per-sample shape (C, H, W)."""
        return self._add(name, "input", (), tuple(shape))

    def conv(self, name: str, x: str, out_channels: int, kernel, stride=1, padding=0,
             dilation=1, bias: bool = False, bn: str | None = None,
             bn_eps: float = 1e-5) -> str:
        """A convolution (``bn``: the batch norm folded into it, by module name; ``bn_eps``:
        its epsilon, PyTorch's default ``1e-5`` unless an imported model says otherwise)."""
        c, h, w = self.shape(x)
        k, st, pd, dl = (_pair(n, v) for n, v in (("kernel", kernel), ("stride", stride),
                                                   ("padding", padding), ("dilation", dilation)))
        spec = ConvSpec(1, c, int(out_channels), (h, w), k, st, pd, dl, name=name)
        return self._add(name, "conv", (x,), (int(out_channels), *spec.out_size), kernel=k,
                         stride=st, padding=pd, dilation=dl, bias=bool(bias), bn=bn,
                         bn_eps=float(bn_eps))

    def relu(self, name: str, x: str) -> str:
        return self._add(name, "relu", (x,), self.shape(x))

    def _pool(self, op: str, name: str, x: str, kernel, stride, padding, ceil_mode, **kw) -> str:
        c, h, w = self.shape(x)
        k = _pair("kernel", kernel)
        st = k if stride is None else _pair("stride", stride)
        pd = _pair("padding", padding)
        try:
            out = [pool_out_size(n, k[i], st[i], pd[i], ceil_mode) for i, n in enumerate((h, w))]
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        return self._add(name, op, (x,), (c, *out), kernel=k, stride=st, padding=pd,
                         ceil_mode=bool(ceil_mode), **kw)

    def maxpool(self, name: str, x: str, kernel, stride=None, padding=0,
                ceil_mode: bool = False) -> str:
        """``MaxPool2d`` (stride defaults to the kernel, as in PyTorch)."""
        return self._pool("maxpool", name, x, kernel, stride, padding, ceil_mode)

    def avgpool(self, name: str, x: str, kernel, stride=None, padding=0,
                ceil_mode: bool = False, count_include_pad: bool = True) -> str:
        """``AvgPool2d``."""
        return self._pool("avgpool", name, x, kernel, stride, padding, ceil_mode,
                          count_include_pad=bool(count_include_pad))

    def adaptive_avgpool(self, name: str, x: str, output_size) -> str:
        """``AdaptiveAvgPool2d(output_size)``; ``(1, 1)`` is a global average pool."""
        o = _pair("output_size", output_size)
        if min(o) < 1:
            raise ValueError(f"{name}: output size must be positive, got {o}")
        if o == (1, 1):
            return self.global_avgpool(name, x)
        return self._add(name, "adaptive_avgpool", (x,), (self.shape(x)[0], *o), output_size=o)

    def global_avgpool(self, name: str, x: str) -> str:
        return self._add(name, "global_avgpool", (x,), (self.shape(x)[0], 1, 1))

    def add(self, name: str, *xs: str) -> str:
        """Residual add of tensors of one shape."""
        shapes = {self.shape(x) for x in xs}
        if len(xs) < 2 or len(shapes) != 1:
            raise ValueError(f"{name}: add needs two or more inputs of one shape, got "
                             f"{[self.shape(x) for x in xs]}")
        return self._add(name, "add", tuple(xs), self.shape(xs[0]))

    def concat(self, name: str, *xs: str) -> str:
        """Channel concatenation."""
        if len(xs) < 2 or len({self.shape(x)[1:] for x in xs}) != 1:
            raise ValueError(f"{name}: concat needs two or more inputs of equal H, W, got "
                             f"{[self.shape(x) for x in xs]}")
        _, h, w = self.shape(xs[0])
        return self._add(name, "concat", tuple(xs), (sum(self.shape(x)[0] for x in xs), h, w))

    def flatten(self, name: str, x: str) -> str:
        return self._add(name, "flatten", (x,), (math.prod(self.shape(x)), 1, 1))

    def fc(self, name: str, x: str, out_features: int, bias: bool = True) -> str:
        """Fully connected layer on a flattened ``(F, 1, 1)`` input."""
        c, h, w = self.shape(x)
        if (h, w) != (1, 1):
            raise ValueError(f"{name}: fc needs a flattened (F, 1, 1) input, got {(c, h, w)}")
        return self._add(name, "fc", (x,), (int(out_features), 1, 1), bias=bool(bias))

    # -- queries ------------------------------------------------------------------
    def __iter__(self):
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def consumers(self) -> dict[str, list[str]]:
        """Node name -> names of the nodes reading its output (in topological order)."""
        out: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in self.nodes.values():
            for i in node.inputs:
                out[i].append(node.name)
        return out

    def output(self) -> str:
        """The single node no other node reads (the network output)."""
        sinks = [n for n, c in self.consumers().items() if not c]
        if len(sinks) != 1:
            raise ValueError(f"graph {self.name!r} has {len(sinks)} outputs: {sinks}")
        return sinks[0]

    def in_shape(self, name: str) -> Shape:
        """Per-sample shape of a node's first input."""
        return self.shape(self.nodes[name].inputs[0])

    def conv_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.is_conv]

    def conv_spec(self, name: str, batch: int, precision: Precision | None = None) -> ConvSpec:
        """The :class:`ConvSpec` of a ``conv`` or ``fc`` node (``fc``: a 1×1 convolution with
        ``C`` = features, ``K`` = out_features on a 1×1 image)."""
        node = self.nodes[name]
        precision = precision or PRESETS["fp32"]
        c, h, w = self.in_shape(name)
        label = f"{self.name}/{name}" if self.name else name
        if node.op == "fc":
            return ConvSpec(batch, c, node.shape[0], (1, 1), (1, 1), precision=precision,
                            name=label)
        if node.op != "conv":
            raise ValueError(f"{name}: {node.op} is not a convolution")
        a = node.attrs
        return ConvSpec(batch, c, node.shape[0], (h, w), a["kernel"], a["stride"], a["padding"],
                        a["dilation"], precision, label)

    def params(self) -> int:
        """Total trainable parameters (torchvision's count)."""
        return sum(n.params(self.in_shape(n.name)) for n in self.nodes.values() if n.inputs)

    def summary(self) -> list[dict[str, Any]]:
        """One dict per node: name, op, inputs, shape."""
        return [{"name": n.name, "op": n.op, "inputs": list(n.inputs), "shape": list(n.shape)}
                for n in self.nodes.values()]
