"""ONNX import: an ONNX model of the supported ops as a :class:`Graph` plus its weights.

The ``onnx`` package is an optional extra (``pip install parconv[onnx]``); it is imported
only when :func:`load_onnx` is called. Loading is pure (no MPI): every rank of a job that
calls it reaches the same verdict, so a refused model is refused on every rank before any
communication.

Supported ops (default domain) and what they become:

=====================  ==========================================================
``Conv``               ``conv`` (2-D, ``group`` 1, symmetric ``pads``, ``strides``,
                       ``dilations``, ``kernel_shape``, ``auto_pad`` NOTSET / VALID /
                       SAME_* when the padding comes out symmetric; optional bias)
``BatchNormalization`` folded into the convolution it follows (that convolution's only
                       consumer; inference mode); ``bn``/``bn_eps`` on the conv node
``Relu``               ``relu``
``MaxPool``            ``maxpool`` (kernel, strides, symmetric pads, ``ceil_mode``,
                       dilations 1, the ``Indices`` output unused)
``AveragePool``        ``avgpool`` (``count_include_pad`` as given; with ``ceil_mode``
                       only where ceil mode adds no window or the padding is 0 or not
                       counted)
``GlobalAveragePool``  ``global_avgpool`` (also ``ReduceMean`` over axes 2, 3)
``Add``                ``add`` of two activations of one shape (residual)
``Concat``             ``concat`` on the channel axis
``Flatten``            ``flatten`` (``axis`` 1)
``Reshape``            ``flatten``, only to a constant ``(N, C·H·W)`` shape
``Gemm``               ``fc`` (``alpha = beta = 1``, ``transA`` 0, ``transB`` 0 or 1)
``MatMul`` [+ ``Add``] ``fc`` (a constant right operand; a following constant ``Add``
                       is its bias)
``Identity``,          no-ops at inference (a Dropout's mask output unused)
``Dropout``
``Constant``           constants (a Reshape's shape, weights)
=====================  ==========================================================

Shapes come from ``onnx.shape_inference.infer_shapes``: every dimension but the batch must
be static, and every node's inferred shape must equal the one :class:`Graph` computes
(PyTorch's pooling arithmetic), otherwise the node is refused. The batch dimension is free:
the graph is per sample; ``batch`` fixes it for shape inference, so a constant reshape
that bakes in another batch is refused.

Weights (``float32``), by sanitised node name (``/layer1/conv/Conv`` ->
``layer1.conv.Conv``; an unnamed node takes its first output's name; repeated names get
``:1``, ``:2``):

* conv: ``<conv>.weight`` ``(K, C, R, S)``, ``<conv>.bias`` ``(K,)``;
* batch norm: ``<bn>.weight``, ``<bn>.bias``, ``<bn>.running_mean``, ``<bn>.running_var``
  (``(K,)`` each; its epsilon is ``Node.attrs["bn_eps"]`` of the conv it folds into);
* fully connected (Gemm, MatMul): ``<node>.weight`` ``(out, in)`` as ``torch.nn.Linear``,
  ``<node>.bias`` ``(out,)``.

Refusals are :class:`OnnxImportError` (a ``ValueError``) with the message
``node <name> (<op_type>): <reason>`` (``input <name>: ...`` and ``model: ...`` for the
model's input and outputs).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .graph import Graph, pool_out_size


class OnnxImportError(ValueError):
    """An ONNX model parconv cannot import (naming the node and the reason)."""


class OnnxUnavailableError(ImportError, ValueError):
    """The optional ``onnx`` package is not installed."""


#: ONNX ops :func:`load_onnx` accepts.
SUPPORTED_OPS = ("Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "ReduceMean", "Add", "Concat", "Flatten", "Reshape",
                 "Gemm", "MatMul", "Identity", "Dropout", "Constant")

# Attributes each op may carry (any other attribute is refused).
_ATTRS: dict[str, frozenset[str]] = {
    "Conv": frozenset({"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"}),
    "BatchNormalization": frozenset({"epsilon", "momentum", "spatial", "training_mode"}),
    "Relu": frozenset(),
    "MaxPool": frozenset({"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads",
                          "storage_order", "strides"}),
    "AveragePool": frozenset({"auto_pad", "ceil_mode", "count_include_pad", "dilations",
                              "kernel_shape", "pads", "strides"}),
    "GlobalAveragePool": frozenset(),
    "ReduceMean": frozenset({"axes", "keepdims", "noop_with_empty_axes"}),
    "Add": frozenset(),
    "Concat": frozenset({"axis"}),
    "Flatten": frozenset({"axis"}),
    "Reshape": frozenset({"allowzero"}),
    "Gemm": frozenset({"alpha", "beta", "transA", "transB"}),
    "MatMul": frozenset(),
    "Identity": frozenset(),
    "Dropout": frozenset({"ratio", "seed"}),
    "Constant": frozenset({"value", "value_float", "value_floats", "value_int", "value_ints"}),
}

_NAME_BAD = re.compile(r"[^A-Za-z0-9_.:\-]+")


def _require_onnx():
    try:
        import onnx
        import onnx.numpy_helper
        import onnx.shape_inference
    except ImportError as exc:
        raise OnnxUnavailableError(
            f"ONNX import needs the onnx package ({exc}); install it with "
            f"`pip install parconv[onnx]` (or `pip install onnx`)") from None
    return onnx


def sanitize_name(name: str) -> str:
    """A node name usable as a layer and weight name: ``/`` becomes ``.``, other characters
    outside ``[A-Za-z0-9_.:-]`` become ``_``, leading/trailing separators are dropped."""
    s = name.strip().replace("/", ".")
    return _NAME_BAD.sub("_", s).strip("._")


def load_onnx(model: str | os.PathLike | bytes | Any,
              batch: int | None = None) -> tuple[Graph, dict[str, np.ndarray]]:
    """Import an ONNX model as a layer graph and its weights.

    Parameters
    ----------
    model : path, bytes or ``onnx.ModelProto``
        The model (a ``.onnx`` file, its serialised bytes, or a loaded model; not modified).
    batch : int, optional
        The batch size used for shape inference (the model's own batch dimension is
        replaced by it). Default: the model's batch if static, else left symbolic.

    Returns
    -------
    graph : Graph
        Per-sample layer graph; layer names are the sanitised ONNX node names (see the
        module docstring), the input keeps its (sanitised) tensor name.
    weights : dict of str to ndarray
        ``<node>.weight`` / ``<node>.bias`` of every conv and fc, the ``weight``, ``bias``,
        ``running_mean``, ``running_var`` of every folded batch norm (float32).

    Raises
    ------
    OnnxUnavailableError
        If the ``onnx`` package is not installed (also a ``ValueError``).
    OnnxImportError
        If the model cannot be read, or uses an unsupported op, attribute, dynamic
        (non-batch) dimension or shape: ``node <name> (<op_type>): <reason>``.
    """
    onnx = _require_onnx()
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer))
                              or batch < 1):
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    proto, name = _read(onnx, model)
    return _Importer(onnx, proto, name, None if batch is None else int(batch)).run()


def _read(onnx, model) -> tuple[Any, str]:
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        return proto, model.graph.name or "onnx"
    try:
        if isinstance(model, (bytes, bytearray)):
            return onnx.load_from_string(bytes(model)), "onnx"
        path = Path(model)
        return onnx.load(str(path)), path.stem
    except (OSError, TypeError) as exc:
        raise OnnxImportError(f"cannot read ONNX model {model!r}: {exc}") from None
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OnnxImportError(f"cannot read ONNX model {model!r}: not a valid ONNX file "
                              f"({type(exc).__name__}: {exc})") from None


class _Importer:
    def __init__(self, onnx, proto, name: str, batch: int | None) -> None:
        self.onnx = onnx
        self.proto = proto
        self.gp = proto.graph
        self.graph = Graph(name)
        self.weights: dict[str, np.ndarray] = {}
        self.const: dict[str, np.ndarray] = {}          # tensor -> constant value
        self.act: dict[str, tuple[str, int]] = {}       # tensor -> (graph node, rank)
        self.batch = batch
        self.skip: set[int] = set()                     # nodes folded into a previous one

    # -- helpers ----------------------------------------------------------------
    def fail(self, i: int, reason: str) -> OnnxImportError:
        node = self.gp.node[i]
        return OnnxImportError(f"node {node.name or self.names[i]} ({node.op_type}): {reason}")

    def attrs(self, i: int) -> dict[str, Any]:
        get = self.onnx.helper.get_attribute_value
        out = {}
        for a in self.gp.node[i].attribute:
            v = get(a)
            out[a.name] = v.decode() if isinstance(v, bytes) else v
        return out

    def activation(self, i: int, tensor: str, what: str = "input") -> tuple[str, int]:
        if tensor in self.act:
            return self.act[tensor]
        if tensor in self.const:
            raise self.fail(i, f"{what} {tensor!r} is a constant, not an activation")
        raise self.fail(i, f"{what} {tensor!r} is not computed before this node (nodes must "
                           "be in topological order) or is not a supported tensor")

    def constant(self, i: int, tensor: str, what: str) -> np.ndarray:
        if tensor in self.const:
            return self.const[tensor]
        raise self.fail(i, f"{what} {tensor!r} is not a constant (an initializer or a "
                           "Constant); weights computed at run time are not supported")

    def weight(self, i: int, tensor: str, what: str) -> np.ndarray:
        w = self.constant(i, tensor, what)
        if not np.issubdtype(w.dtype, np.floating) and w.dtype.name != "bfloat16":
            raise self.fail(i, f"{what} {tensor!r} has type {w.dtype}; only floating-point "
                               "weights are supported")
        return np.ascontiguousarray(w, dtype=np.float32)

    def used(self, tensor: str) -> bool:
        return bool(tensor) and (tensor in self.outputs or bool(self.consumers.get(tensor)))

    def only_first_output(self, i: int, what: str) -> None:
        for k, t in enumerate(self.gp.node[i].output[1:], start=1):
            if self.used(t):
                raise self.fail(i, f"output {k} ({what}) is used; only inference outputs are "
                                   "supported")

    def build(self, i: int, fn: Callable[[], str]) -> str:
        try:
            return fn()
        except ValueError as exc:                      # the Graph's refusal, as this node's
            msg = str(exc)
            prefix = f"{self.names[i]}: "
            raise self.fail(i, msg[len(prefix):] if msg.startswith(prefix) else msg) from None

    # -- setup -------------------------------------------------------------------
    def _names(self) -> None:
        used: set[str] = set()

        def unique(base: str) -> str:
            name, k = base, 0
            while name in used:
                k += 1
                name = f"{base}:{k}"
            used.add(name)
            return name

        self.input_name = unique(sanitize_name(self.inp.name) or "input")
        self.names = []
        for i, node in enumerate(self.gp.node):
            base = sanitize_name(node.name) or next(
                (sanitize_name(t) for t in node.output if sanitize_name(t)), "")
            self.names.append(unique(base or f"{node.op_type}_{i}"))

    def _constants(self) -> None:
        to_array = self.onnx.numpy_helper.to_array
        for t in self.gp.initializer:
            try:
                self.const[t.name] = to_array(t)
            except Exception as exc:                   # external data not found, bad type
                raise OnnxImportError(f"model: cannot read initializer {t.name!r} "
                                      f"({type(exc).__name__}: {exc})") from None
        for t in self.gp.sparse_initializer:
            raise OnnxImportError(f"model: sparse initializer {t.values.name!r} is not "
                                  "supported")

    def _input(self) -> None:
        inputs = [v for v in self.gp.input if v.name not in self.const]
        if len(inputs) != 1:
            raise OnnxImportError(f"model: {len(inputs)} inputs "
                                  f"({', '.join(v.name for v in inputs)}); a parconv network "
                                  "has exactly one")
        self.inp = inputs[0]
        tt = self.inp.type.tensor_type
        if not self.inp.type.HasField("tensor_type") or not tt.HasField("shape"):
            raise OnnxImportError(f"input {self.inp.name}: not a tensor of known rank")
        T = self.onnx.TensorProto
        if tt.elem_type not in (T.FLOAT, T.FLOAT16, T.BFLOAT16, T.DOUBLE):
            raise OnnxImportError(f"input {self.inp.name}: element type "
                                  f"{T.DataType.Name(tt.elem_type)}; a floating-point input "
                                  "is required")
        dims = list(tt.shape.dim)
        if len(dims) not in (2, 4):
            raise OnnxImportError(f"input {self.inp.name}: rank {len(dims)}; only (N, C, H, W) "
                                  "images or (N, F) features are supported")
        for a, d in enumerate(dims[1:], start=1):
            if not d.HasField("dim_value") or d.dim_value < 1:
                what = f"symbolic ({d.dim_param!r})" if d.dim_param else "unknown"
                raise OnnxImportError(f"input {self.inp.name}: dimension {a} is {what}; only "
                                      "the batch dimension may be dynamic")
        self.sample = tuple(int(d.dim_value) for d in dims[1:])
        d0 = dims[0]
        if self.batch is None and d0.HasField("dim_value") and d0.dim_value > 0:
            self.batch = int(d0.dim_value)

    def _infer(self) -> None:
        """Shape inference on a copy with the batch fixed (value infos and declared output
        shapes dropped so a changed batch cannot conflict with them)."""
        onnx = self.onnx
        m = onnx.ModelProto()
        m.CopyFrom(self.proto)
        del m.graph.value_info[:]
        for o in m.graph.output:
            if o.type.HasField("tensor_type"):
                o.type.tensor_type.ClearField("shape")
        for v in m.graph.input:
            if v.name == self.inp.name:
                d0 = v.type.tensor_type.shape.dim[0]
                if self.batch is None:
                    if not d0.dim_param:
                        d0.dim_param = "N"
                else:
                    d0.dim_value = self.batch
        self._infer_model = m
        try:
            inferred = onnx.shape_inference.infer_shapes(m)
        except Exception:  # non-strict inference should not raise; refusal comes per node
            inferred = m
        self.shapes: dict[str, list[int | None]] = {}
        for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input):
            tt = v.type.tensor_type
            if v.type.HasField("tensor_type") and tt.HasField("shape"):
                self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None
                                       for d in tt.shape.dim]

    def _inference_error(self) -> str:
        try:
            self.onnx.shape_inference.infer_shapes(self._infer_model, strict_mode=True)
        except Exception as exc:
            return f" (onnx: {str(exc).strip().splitlines()[-1][:300]})"
        return ""

    # -- the walk ------------------------------------------------------------------
    def run(self) -> tuple[Graph, dict[str, np.ndarray]]:
        gp = self.gp
        self._constants()
        self._input()
        self._names()
        self.outputs = {o.name for o in gp.output}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(gp.node):
            for t in node.input:
                if t:
                    self.consumers.setdefault(t, []).append(i)
        # static checks first: an unsupported op is named before any shape question
        for i, node in enumerate(gp.node):
            if node.domain not in ("", "ai.onnx"):
                raise self.fail(i, f"op of domain {node.domain!r} is not supported")
            if node.op_type not in _ATTRS:
                raise self.fail(i, "unsupported op (supported: "
                                   f"{', '.join(SUPPORTED_OPS)})")
            extra = sorted({a.name for a in node.attribute} - _ATTRS[node.op_type])
            if extra:
                raise self.fail(i, f"unsupported attribute{'s' * (len(extra) > 1)} "
                                   f"{', '.join(extra)}")
        self._infer()
        rank = len(self.sample) + 1
        shape = (*self.sample, 1, 1) if rank == 2 else self.sample
        self.act[self.inp.name] = (self.graph.input(self.input_name, shape), rank)
        for i, node in enumerate(gp.node):
            if i not in self.skip:                      # folded: its output is mapped
                getattr(self, f"_op_{node.op_type}")(i, node)
            for t in node.output[:1]:
                if t in self.act:
                    self._check_shape(i, t)
        self._check_output()
        return self.graph, self.weights

    def _check_shape(self, i: int, tensor: str) -> None:
        gname, rank = self.act[tensor]
        want = self.graph.shape(gname) if rank == 4 else self.graph.shape(gname)[:1]
        got = self.shapes.get(tensor)
        if got is None or len(got) != rank or any(d is None for d in got[1:]):
            raise self.fail(i, f"output shape {got if got is not None else 'unknown'} not "
                               "determined by onnx shape inference (dynamic shapes are not "
                               f"supported){self._inference_error()}")
        if tuple(got[1:]) != tuple(want):
            node = self.gp.node[i]
            hint = ""
            if node.op_type in ("MaxPool", "AveragePool") and int(
                    self.attrs(i).get("ceil_mode", 0)):
                hint = ("; with ceil_mode PyTorch drops a last window that starts in the right "
                        "padding, ONNX shape inference keeps it")
            raise self.fail(i, f"onnx shape inference gives {got}, parconv computes "
                               f"{[self.batch or 'N', *want]}{hint}")
        if got[0] is not None and got[0] != self.batch:
            raise self.fail(i, f"batch dimension {got[0]} of output {got} differs from the "
                               f"batch {self.batch if self.batch else '(symbolic)'}")

    def _check_output(self) -> None:
        outs = list(self.gp.output)
        if len(outs) != 1:
            raise OnnxImportError(f"model: {len(outs)} outputs "
                                  f"({', '.join(o.name for o in outs)}); a parconv network "
                                  "has exactly one")
        name = outs[0].name
        if name not in self.act:
            raise OnnxImportError(f"model: output {name!r} is not an activation computed by "
                                  "the graph")
        try:
            sink = self.graph.output()
        except ValueError:
            sinks = [n for n, c in self.graph.consumers().items() if not c]
            raise OnnxImportError(f"model: layers {', '.join(sinks)} are computed but only "
                                  f"{self.act[name][0]} is the output (unused branches are "
                                  "not supported)") from None
        if sink != self.act[name][0]:
            raise OnnxImportError(f"model: output {name!r} is not the last layer ({sink})")

    # -- geometry ------------------------------------------------------------------
    def _window(self, i: int, a: dict, kernel: tuple[int, int],
                in_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int],
                                                 tuple[int, int]]:
        """(strides, dilations, symmetric padding) of a Conv/pool node."""
        st = self._ints2(i, a, "strides", 1)
        dl = self._ints2(i, a, "dilations", 1)
        auto = a.get("auto_pad", "NOTSET")
        if auto == "NOTSET":
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if len(pads) != 4:
                raise self.fail(i, f"pads {pads}: expected 4 values for a 2-D op")
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0, 0, 0, 0]
            for ax in range(2):
                n, k = in_hw[ax], (kernel[ax] - 1) * dl[ax] + 1
                total = max((-(-n // st[ax]) - 1) * st[ax] + k - n, 0)
                small = total // 2
                lo, hi = (small, total - small) if auto == "SAME_UPPER" else (total - small,
                                                                              small)
                pads[ax], pads[ax + 2] = lo, hi
        else:
            raise self.fail(i, f"auto_pad {auto!r} is not supported")
        if min(pads) < 0:
            raise self.fail(i, f"negative pads {pads}")
        if pads[:2] != pads[2:]:
            why = f"auto_pad {auto} gives " if auto != "NOTSET" else ""
            raise self.fail(i, f"{why}asymmetric pads {pads} (begin {pads[:2]} != end "
                               f"{pads[2:]}); only symmetric padding is supported")
        return st, dl, (int(pads[0]), int(pads[1]))

    def _ints2(self, i: int, a: dict, key: str, default: int) -> tuple[int, int]:
        v = list(a.get(key, [default, default]))
        if len(v) != 2 or min(v) < 1:
            raise self.fail(i, f"{key} {v}: expected two positive values (2-D ops only)")
        return int(v[0]), int(v[1])

    def _rank4(self, i: int, tensor: str) -> str:
        x, rank = self.activation(i, tensor)
        if rank != 4:
            raise self.fail(i, "input has rank 2; a (N, C, H, W) input is required")
        return x

    # -- ops ------------------------------------------------------------------------
    def _op_Constant(self, i: int, node) -> None:
        a = self.attrs(i)
        if "value" in a:
            v = self.onnx.numpy_helper.to_array(a["value"])
        else:
            (key, val), = a.items()
            v = np.asarray(val, dtype=np.float32 if "float" in key else np.int64)
        self.const[node.output[0]] = v

    def _op_Identity(self, i: int, node) -> None:
        src = node.input[0]
        if src in self.const:
            self.const[node.output[0]] = self.const[src]
        else:
            self.act[node.output[0]] = self.activation(i, src)

    def _op_Dropout(self, i: int, node) -> None:
        self.only_first_output(i, "mask")
        if len(node.input) > 2 and node.input[2]:
            mode = self.constant(i, node.input[2], "training_mode")
            if bool(np.asarray(mode).any()):
                raise self.fail(i, "training_mode is true (inference only)")
        self.act[node.output[0]] = self.activation(i, node.input[0])

    def _op_Relu(self, i: int, node) -> None:
        x, rank = self.activation(i, node.input[0])
        self.act[node.output[0]] = (self.build(i, lambda: self.graph.relu(self.names[i], x)),
                                    rank)

    def _op_Conv(self, i: int, node) -> None:
        a = self.attrs(i)
        if int(a.get("group", 1)) != 1:
            raise self.fail(i, f"grouped convolution (group={a['group']}) is not supported")
        x = self._rank4(i, node.input[0])
        w = self.weight(i, node.input[1], "weight")
        if w.ndim != 4:
            raise self.fail(i, f"weight of shape {w.shape}: only 2-D convolutions are supported")
        c, h, wd = self.graph.shape(x)
        if w.shape[1] != c:
            raise self.fail(i, f"weight {w.shape} expects {w.shape[1]} input channels, the "
                               f"input has {c}")
        kernel = (int(w.shape[2]), int(w.shape[3]))
        if "kernel_shape" in a and tuple(a["kernel_shape"]) != kernel:
            raise self.fail(i, f"kernel_shape {list(a['kernel_shape'])} differs from the "
                               f"weight's {list(kernel)}")
        st, dl, pd = self._window(i, a, kernel, (h, wd))
        bias = len(node.input) > 2 and bool(node.input[2])
        name = self.names[i]
        self.weights[f"{name}.weight"] = w
        if bias:
            b = self.weight(i, node.input[2], "bias")
            if b.shape != (w.shape[0],):
                raise self.fail(i, f"bias of shape {b.shape}, expected ({w.shape[0]},)")
            self.weights[f"{name}.bias"] = b
        out = node.output[0]
        bn = self._foldable_bn(i, out, w.shape[0])
        bn_name, eps = (None, 1e-5) if bn is None else bn
        y = self.build(i, lambda: self.graph.conv(name, x, int(w.shape[0]), kernel, st, pd, dl,
                                                  bias=bias, bn=bn_name, bn_eps=eps))
        self.act[out] = (y, 4)

    def _foldable_bn(self, i: int, tensor: str, k: int) -> tuple[str, float] | None:
        cons = self.consumers.get(tensor, [])
        if tensor in self.outputs or len(cons) != 1:
            return None
        j = cons[0]
        node = self.gp.node[j]
        if node.op_type != "BatchNormalization" or node.input[0] != tensor:
            return None
        a = self.attrs(j)
        if int(a.get("training_mode", 0)) != 0:
            raise self.fail(j, "training_mode=1 (inference only)")
        if int(a.get("spatial", 1)) != 1:
            raise self.fail(j, "spatial=0 (per-activation statistics) is not supported")
        self.only_first_output(j, "training statistics")
        if len(node.input) != 5:
            raise self.fail(j, f"{len(node.input)} inputs, expected 5")
        name = self.names[j]
        for key, t in zip(("weight", "bias", "running_mean", "running_var"), node.input[1:]):
            v = self.weight(j, t, key)
            if v.shape != (k,):
                raise self.fail(j, f"{key} of shape {v.shape}, expected ({k},)")
            self.weights[f"{name}.{key}"] = v
        eps = float(a.get("epsilon", 1e-5))
        if not eps >= 0:
            raise self.fail(j, f"epsilon {eps} must be non-negative")
        self.skip.add(j)
        self.act[node.output[0]] = (self.names[i], 4)    # the conv's node, folded
        return name, eps

    def _op_BatchNormalization(self, i: int, node) -> None:
        raise self.fail(i, "batch normalisation is supported only folded into the convolution "
                           "it directly follows (the convolution's only consumer)")

    def _pool_common(self, i: int, node):
        a = self.attrs(i)
        x = self._rank4(i, node.input[0])
        if "kernel_shape" not in a:
            raise self.fail(i, "kernel_shape is required")
        kernel = self._ints2(i, a, "kernel_shape", 1)
        st, dl, pd = self._window(i, a, kernel, self.graph.shape(x)[1:])
        if dl != (1, 1):
            raise self.fail(i, f"dilations {list(dl)} (only 1 is supported for pooling)")
        return a, x, kernel, st, pd, bool(int(a.get("ceil_mode", 0)))

    def _op_MaxPool(self, i: int, node) -> None:
        self.only_first_output(i, "Indices")
        a, x, k, st, pd, ceil = self._pool_common(i, node)
        self.act[node.output[0]] = (self.build(i, lambda: self.graph.maxpool(
            self.names[i], x, k, st, pd, ceil)), 4)

    def _op_AveragePool(self, i: int, node) -> None:
        a, x, k, st, pd, ceil = self._pool_common(i, node)
        include = bool(int(a.get("count_include_pad", 0)))
        if ceil and include and pd != (0, 0):
            hw = self.graph.shape(x)[1:]
            try:
                grows = any(pool_out_size(hw[ax], k[ax], st[ax], pd[ax], True)
                            != pool_out_size(hw[ax], k[ax], st[ax], pd[ax], False)
                            for ax in range(2))
            except ValueError as exc:
                raise self.fail(i, str(exc)) from None
            if grows:
                raise self.fail(i, "ceil_mode=1 with count_include_pad=1 and padding: the "
                                   "divisor of the extra window past the padded input is not "
                                   "defined alike by ONNX and PyTorch; not supported")
            ceil = False
        self.act[node.output[0]] = (self.build(i, lambda: self.graph.avgpool(
            self.names[i], x, k, st, pd, ceil, count_include_pad=include)), 4)

    def _op_GlobalAveragePool(self, i: int, node) -> None:
        x = self._rank4(i, node.input[0])
        self.act[node.output[0]] = (self.build(i, lambda: self.graph.global_avgpool(
            self.names[i], x)), 4)

    def _op_ReduceMean(self, i: int, node) -> None:
        a = self.attrs(i)
        x = self._rank4(i, node.input[0])
        axes = a.get("axes")
        if len(node.input) > 1 and node.input[1]:
            axes = self.constant(i, node.input[1], "axes").tolist()
        if axes is None or sorted(int(v) % 4 for v in axes) != [2, 3]:
            raise self.fail(i, f"axes {axes}: only the mean over the spatial axes [2, 3] (a "
                               "global average pool) is supported")
        y = self.build(i, lambda: self.graph.global_avgpool(self.names[i], x))
        self.act[node.output[0]] = (y, 4 if int(a.get("keepdims", 1)) else 2)

    def _op_Add(self, i: int, node) -> None:
        if len(node.input) != 2:
            raise self.fail(i, f"{len(node.input)} inputs, expected 2")
        for t in node.input:
            if t in self.const:
                raise self.fail(i, f"adds the constant {t!r}; only a residual add of two "
                                   "activations (or a MatMul's bias) is supported")
        (x, rx), (y, ry) = (self.activation(i, t) for t in node.input)
        sx, sy = self.graph.shape(x), self.graph.shape(y)
        if rx != ry or sx != sy:
            raise self.fail(i, f"inputs of shapes {sx[:rx - 1]} and {sy[:ry - 1]} per sample "
                               "(broadcasting adds are not supported)")
        self.act[node.output[0]] = (self.build(i, lambda: self.graph.add(self.names[i], x, y)),
                                    rx)

    def _op_Concat(self, i: int, node) -> None:
        xs = [self.activation(i, t) for t in node.input]
        ranks = {r for _, r in xs}
        if len(ranks) != 1:
            raise self.fail(i, "inputs of different ranks")
        rank = ranks.pop()
        axis = int(self.attrs(i).get("axis", 1))
        if axis % rank != 1:
            raise self.fail(i, f"axis {axis}: only channel concatenation (axis 1) is supported")
        names = [x for x, _ in xs]
        if len(names) == 1:
            self.act[node.output[0]] = xs[0]
            return
        self.act[node.output[0]] = (self.build(i, lambda: self.graph.concat(
            self.names[i], *names)), rank)

    def _flatten(self, i: int, node, x: str, rank: int) -> None:
        if rank == 2:
            self.act[node.output[0]] = (x, 2)
            return
        self.act[node.output[0]] = (self.build(i, lambda: self.graph.flatten(self.names[i], x)),
                                    2)

    def _op_Flatten(self, i: int, node) -> None:
        x, rank = self.activation(i, node.input[0])
        axis = int(self.attrs(i).get("axis", 1))
        if axis < 0:
            axis += rank
        if axis != 1:
            raise self.fail(i, f"axis {axis}: only Flatten(axis=1) (N, C·H·W) is supported")
        self._flatten(i, node, x, rank)

    def _op_Reshape(self, i: int, node) -> None:
        x, rank = self.activation(i, node.input[0])
        if node.input[1] not in self.const:
            raise self.fail(i, f"shape {node.input[1]!r} is computed at run time; only a "
                               "constant flatten to (N, C·H·W) is supported (export with "
                               "torch.flatten or static shapes)")
        target = [int(v) for v in np.asarray(self.const[node.input[1]]).reshape(-1)]
        zero = bool(int(self.attrs(i).get("allowzero", 0)))
        feat = math.prod(self.graph.shape(x))
        ok = (len(target) == 2 and not (zero and 0 in target)
              and ((target[1] == feat and target[0] in (0, -1, self.batch))
                   or (target[1] == -1 and target[0] in (0, self.batch))))
        if not ok:
            extra = ""
            if (len(target) == 2 and target[0] > 0 and target[1] in (-1, feat)
                    and target[0] != self.batch):
                extra = (f"; it fixes the batch at {target[0]} (batch "
                         f"{self.batch or 'symbolic'}): re-export with a dynamic batch axis "
                         "or use torch.flatten")
            raise self.fail(i, f"reshape to {target} is not a flatten of the "
                               f"{list(self.graph.shape(x)[:rank - 1])} sample to (N, {feat})"
                               f"{extra}")
        self._flatten(i, node, x, rank)

    def _fc(self, i: int, x: str, w: np.ndarray, b: np.ndarray | None) -> str:
        name = self.names[i]
        f = self.graph.shape(x)[0]
        if w.shape[1] != f:
            raise self.fail(i, f"weight of shape (out, in) = {w.shape} for {f} input features")
        self.weights[f"{name}.weight"] = np.ascontiguousarray(w)
        if b is not None:
            b = b.reshape(-1)
            if b.size == 1:
                b = np.full(w.shape[0], b[0], dtype=np.float32)
            if b.shape != (w.shape[0],):
                raise self.fail(i, f"bias of shape {b.shape} for {w.shape[0]} outputs")
            self.weights[f"{name}.bias"] = np.ascontiguousarray(b)
        return self.build(i, lambda: self.graph.fc(name, x, int(w.shape[0]), bias=b is not None))

    def _fc_input(self, i: int, tensor: str) -> str:
        x, rank = self.activation(i, tensor)
        if rank != 2:
            raise self.fail(i, "input has rank 4; a flattened (N, F) input is required")
        return x

    def _op_Gemm(self, i: int, node) -> None:
        a = self.attrs(i)
        if int(a.get("transA", 0)):
            raise self.fail(i, "transA=1 is not supported")
        has_c = len(node.input) > 2 and bool(node.input[2])
        if float(a.get("alpha", 1.0)) != 1.0 or (has_c and float(a.get("beta", 1.0)) != 1.0):
            raise self.fail(i, f"alpha={a.get('alpha', 1.0)}, beta={a.get('beta', 1.0)}: only "
                               "alpha = beta = 1 is supported")
        x = self._fc_input(i, node.input[0])
        w = self.weight(i, node.input[1], "weight")
        if w.ndim != 2:
            raise self.fail(i, f"weight of shape {w.shape}, expected 2-D")
        if not int(a.get("transB", 0)):
            w = w.T
        b = self.weight(i, node.input[2], "bias") if has_c else None
        self.act[node.output[0]] = (self._fc(i, x, w, b), 2)

    def _op_MatMul(self, i: int, node) -> None:
        x = self._fc_input(i, node.input[0])
        w = self.weight(i, node.input[1], "weight (right operand)")
        if w.ndim != 2:
            raise self.fail(i, f"right operand of shape {w.shape}, expected 2-D")
        out = node.output[0]
        b = None
        cons = self.consumers.get(out, [])
        if out not in self.outputs and len(cons) == 1:
            j = cons[0]
            add = self.gp.node[j]
            other = [t for t in add.input if t != out]
            if (add.op_type == "Add" and len(add.input) == 2 and len(other) == 1
                    and other[0] in self.const):
                b = self.weight(j, other[0], "bias")
                if b.size not in (1, w.shape[1]) or b.ndim > 2 or (b.ndim == 2
                                                                    and b.shape[0] != 1):
                    raise self.fail(j, f"bias of shape {b.shape} for {w.shape[1]} outputs")
                self.skip.add(j)
        y = self._fc(i, x, np.ascontiguousarray(w.T), b)
        self.act[out] = (y, 2)
        if b is not None:
            self.act[self.gp.node[j].output[0]] = (y, 2)     # the bias Add, folded
