"""ONNX import: graph shapes against onnx shape inference, weight names, a forward pass against
onnx's reference evaluator (and PyTorch when installed), refusals naming the node, the CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, numpy_helper  # noqa: E402
from onnx import helper as oh  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from parconv.cli import main as cli_main  # noqa: E402
from parconv.network.graph import Graph  # noqa: E402
from parconv.network.onnx_import import (  # noqa: E402
    OnnxImportError,
    OnnxUnavailableError,
    load_onnx,
    sanitize_name,
)
from parconv.reference import conv2d_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def _r(*shape, positive=False):
    a = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(a) + 0.5 if positive else a


def _model(nodes, inits, x=("N", 3, 9, 9), outputs=("y",), opset=17, extra_inputs=()):
    inputs = [oh.make_tensor_value_info("x", TensorProto.FLOAT, list(x)), *extra_inputs]
    g = oh.make_graph(nodes, "t", inputs,
                      [oh.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                      [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _bn(name, x, y, k, inits, eps=1e-5):
    inits.update({f"{name}_s": _r(k, positive=True), f"{name}_b": _r(k),
                  f"{name}_m": _r(k), f"{name}_v": _r(k, positive=True)})
    return oh.make_node("BatchNormalization", [x, f"{name}_s", f"{name}_b", f"{name}_m",
                                              f"{name}_v"], [y], name, epsilon=eps)


def net_model():
    """conv-bn-relu, ceil-mode maxpool, residual block, 1x1 branch + concat, avgpool,
    global pool, flatten, gemm, relu, matmul + add; one unnamed node, Identity, Dropout."""
    inits = {"w1": _r(8, 3, 3, 3), "b1": _r(8), "w2": _r(8, 8, 3, 3), "w3": _r(8, 8, 3, 3),
         "w4": _r(4, 8, 1, 1), "b4": _r(4), "wg": _r(10, 12), "bg": _r(10), "wm": _r(10, 6),
         "bm": _r(6)}
    n = [
        oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], "/stem/conv", pads=[1, 1, 1, 1],
                     kernel_shape=[3, 3]),
        _bn("/stem/bn", "c1", "n1", 8, inits, eps=1e-3),
        oh.make_node("Relu", ["n1"], ["r1"], "/stem/relu"),
        oh.make_node("MaxPool", ["r1"], ["p1"], "/pool", kernel_shape=[2, 2], strides=[2, 2],
                     ceil_mode=1),                                          # 9 -> 5
        oh.make_node("Conv", ["p1", "w2"], ["c2"], "/b/conv1", pads=[1, 1, 1, 1]),
        _bn("/b/bn1", "c2", "n2", 8, inits),
        oh.make_node("Relu", ["n2"], ["r2"], ""),                           # unnamed
        oh.make_node("Conv", ["r2", "w3"], ["c3"], "/b/conv2", auto_pad="SAME_UPPER"),
        _bn("/b/bn2", "c3", "n3", 8, inits),
        oh.make_node("Add", ["n3", "p1"], ["a"], "/b/add"),
        oh.make_node("Relu", ["a"], ["r3"], "/b/relu"),
        oh.make_node("Conv", ["r3", "w4", "b4"], ["c4"], "/side/conv"),
        oh.make_node("Concat", ["r3", "c4"], ["cat"], "/cat", axis=1),
        oh.make_node("AveragePool", ["cat"], ["ap"], "/avg", kernel_shape=[3, 3],
                     pads=[1, 1, 1, 1], count_include_pad=1),
        oh.make_node("Identity", ["ap"], ["ap2"], "/id"),
        oh.make_node("GlobalAveragePool", ["ap2"], ["gap"], "/gap"),
        oh.make_node("Flatten", ["gap"], ["flat"], "/flatten", axis=1),
        oh.make_node("Dropout", ["flat"], ["drop"], "/drop"),
        oh.make_node("Gemm", ["drop", "wg", "bg"], ["g"], "/fc1/Gemm", transB=1),
        oh.make_node("Relu", ["g"], ["gr"], "/fc1/relu"),
        oh.make_node("MatMul", ["gr", "wm"], ["mm"], "/fc2/MatMul"),
        oh.make_node("Add", ["mm", "bm"], ["y"], "/fc2/Add"),
    ]
    return _model(n, inits)


# -- a private numpy evaluator of a Graph (PyTorch semantics) ---------------------------
def _pool(node, x, in_shape):
    a = node.attrs
    rows, cols = node.windows(in_shape)
    out = np.empty((x.shape[0], x.shape[1], len(rows), len(cols)), dtype=np.float64)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            win = x[:, :, r0:r1, c0:c1]
            if node.op == "maxpool":
                out[:, :, i, j] = win.max(axis=(2, 3))
            elif a["count_include_pad"]:       # PyTorch: padding counted, not the ceil overhang
                area = 1
                for t, n, ax in ((i, in_shape[1], 0), (j, in_shape[2], 1)):
                    s = t * a["stride"][ax] - a["padding"][ax]
                    area *= min(s + a["kernel"][ax], n + a["padding"][ax]) - s
                out[:, :, i, j] = win.sum(axis=(2, 3)) / area
            else:
                out[:, :, i, j] = win.mean(axis=(2, 3))
    return out


def evaluate(g: Graph, weights: dict, x: np.ndarray) -> np.ndarray:
    """Forward pass of ``g`` (batch norms folded into their convolutions)."""
    val = {}
    for node in g:
        ins = [val[i] for i in node.inputs]
        a = node.attrs
        if node.op == "input":
            y = x.astype(np.float64).reshape(x.shape[0], *node.shape)
        elif node.op == "conv":
            w = weights[f"{node.name}.weight"].astype(np.float64)
            b = weights.get(f"{node.name}.bias", np.zeros(w.shape[0])).astype(np.float64)
            if a["bn"]:
                p = {k: weights[f"{a['bn']}.{k}"].astype(np.float64)
                     for k in ("weight", "bias", "running_mean", "running_var")}
                scale = p["weight"] / np.sqrt(p["running_var"] + a["bn_eps"])
                w, b = w * scale[:, None, None, None], (b - p["running_mean"]) * scale + p["bias"]
            y = conv2d_reference(ins[0], w, a["stride"], a["padding"], a["dilation"],
                                 out_dtype="float64") + b[None, :, None, None]
        elif node.op == "fc":
            w = weights[f"{node.name}.weight"].astype(np.float64)
            y = ins[0].reshape(len(x), -1) @ w.T
            if a["bias"]:
                y = y + weights[f"{node.name}.bias"]
            y = y.reshape(len(x), -1, 1, 1)
        elif node.op == "relu":
            y = np.maximum(ins[0], 0)
        elif node.op in ("maxpool", "avgpool"):
            y = _pool(node, ins[0], g.in_shape(node.name))
        elif node.op == "global_avgpool":
            y = ins[0].mean(axis=(2, 3), keepdims=True)
        elif node.op == "add":
            y = sum(ins)
        elif node.op == "concat":
            y = np.concatenate(ins, axis=1)
        elif node.op == "flatten":
            y = ins[0].reshape(len(x), -1, 1, 1)
        else:
            raise AssertionError(node.op)
        assert y.shape[1:] == node.shape, (node.name, y.shape, node.shape)
        val[node.name] = y
    return val[g.output()]


# -- the network ------------------------------------------------------------------------
def test_network_shapes_weights_and_forward_match_onnx():
    m = net_model()
    g, w = load_onnx(m, batch=2)
    assert [(n.name, n.op) for n in g] == [
        ("x", "input"), ("stem.conv", "conv"), ("stem.relu", "relu"), ("pool", "maxpool"),
        ("b.conv1", "conv"), ("r2", "relu"), ("b.conv2", "conv"), ("b.add", "add"),
        ("b.relu", "relu"), ("side.conv", "conv"), ("cat", "concat"), ("avg", "avgpool"),
        ("gap", "global_avgpool"), ("flatten", "flatten"), ("fc1.Gemm", "fc"),
        ("fc1.relu", "relu"), ("fc2.MatMul", "fc")]
    assert g["stem.conv"].attrs["bn"] == "stem.bn" and g["stem.conv"].attrs["bn_eps"] == float(np.float32(1e-3))
    assert g["b.conv2"].attrs["bn"] == "b.bn2" and g["b.conv2"].attrs["padding"] == (1, 1)
    assert g["pool"].attrs["ceil_mode"] and g["avg"].attrs["count_include_pad"]
    assert g["b.add"].inputs == ("b.conv2", "pool") and g["cat"].inputs == ("b.relu",
                                                                            "side.conv")
    # every node's shape equals onnx shape inference at this batch
    inferred = onnx.shape_inference.infer_shapes(m)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.output)}
    onnx_of = {"stem.conv": "n1", "stem.relu": "r1", "pool": "p1", "b.conv1": "n2", "r2": "r2",
               "b.conv2": "n3", "b.add": "a", "b.relu": "r3", "side.conv": "c4", "cat": "cat",
               "avg": "ap", "gap": "gap", "flatten": "flat", "fc1.Gemm": "g", "fc1.relu": "gr",
               "fc2.MatMul": "y"}
    for name, t in onnx_of.items():
        s = shapes[t][1:]
        assert g.shape(name) == (tuple(s) + (1, 1))[:3], (name, s)
    assert g.shape("pool") == (8, 5, 5) and g.shape("cat") == (12, 5, 5)
    # weights: names and shapes; fc weights as torch.nn.Linear (out, in)
    assert {k: v.shape for k, v in w.items()} == {
        "stem.conv.weight": (8, 3, 3, 3), "stem.conv.bias": (8,),
        **{f"{bn}.{p}": (8,) for bn in ("stem.bn", "b.bn1", "b.bn2")
           for p in ("weight", "bias", "running_mean", "running_var")},
        "b.conv1.weight": (8, 8, 3, 3), "b.conv2.weight": (8, 8, 3, 3),
        "side.conv.weight": (4, 8, 1, 1), "side.conv.bias": (4,),
        "fc1.Gemm.weight": (10, 12), "fc1.Gemm.bias": (10,),
        "fc2.MatMul.weight": (6, 10), "fc2.MatMul.bias": (6,)}
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    np.testing.assert_array_equal(w["fc2.MatMul.weight"], inits["wm"].T)
    np.testing.assert_array_equal(w["b.bn1.running_var"], inits["/b/bn1_v"])
    assert all(v.dtype == np.float32 for v in w.values())
    assert g.params() == sum(v.size for k, v in w.items() if "running" not in k)
    # forward pass against onnx's reference evaluator
    x = _r(2, 3, 9, 9)
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    got = evaluate(g, w, x)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-4)


def test_batch_handling_path_and_bytes(tmp_path):
    m = net_model()
    path = tmp_path / "net.onnx"
    onnx.save(m, str(path))
    g1, w1 = load_onnx(path)                          # symbolic batch left symbolic
    g2, _ = load_onnx(str(path), batch=7)
    g3, _ = load_onnx(m.SerializeToString())
    assert g1.summary() == g2.summary() == g3.summary() and g1.name == "net"
    assert m.graph.node[0].name == "/stem/conv"       # the caller's model is not modified
    # a model with a static batch of 1 loads at another batch (the graph is per sample)
    fixed = net_model()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    assert load_onnx(fixed, batch=4)[0].summary() == g1.summary()
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        load_onnx(m, batch=0)
    with pytest.raises(OnnxImportError, match="cannot read ONNX model"):
        load_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00\xffnot onnx")
    with pytest.raises(OnnxImportError, match="cannot read ONNX model"):
        load_onnx(tmp_path / "junk.onnx")


def test_sanitized_names_are_unique():
    assert sanitize_name("/layer1/layer1.0/conv1/Conv") == "layer1.layer1.0.conv1.Conv"
    assert sanitize_name(" a b/c?d ") == "a_b.c_d"
    inits = {"w": _r(3, 3, 1, 1)}
    n = [oh.make_node("Conv", ["x", "w"], ["t1"], "same"),
         oh.make_node("Relu", ["t1"], ["t2"], "same"),                 # duplicate name
         oh.make_node("Relu", ["t2"], ["y"], "")]                      # from its output
    g, w = load_onnx(_model(n, inits))
    assert list(g.nodes) == ["x", "same", "same:1", "y"] and list(w) == ["same.weight"]


def test_reshape_flatten_and_reducemean_forms():
    def net(shape, reduce_keep=1):
        inits = {"w": _r(4, 3, 3, 3), "shape": np.array(shape, dtype=np.int64), "fw": _r(5, 4)}
        n = [oh.make_node("Conv", ["x", "w"], ["c"], "conv"),
             oh.make_node("ReduceMean", ["c"], ["m"], "mean", axes=[-1, -2],
                          keepdims=reduce_keep),
             oh.make_node("Reshape", ["m", "shape"], ["f"], "reshape"),
             oh.make_node("Gemm", ["f", "fw"], ["y"], "fc", transB=1)]
        return _model(n, inits, x=(2, 3, 6, 6), opset=13)
    for shape in ([2, -1], [0, -1], [-1, 4], [2, 4]):
        g, _ = load_onnx(net(shape))
        assert [n.op for n in g] == ["input", "conv", "global_avgpool", "flatten", "fc"]
    g, _ = load_onnx(net([0, -1], reduce_keep=0))     # rank 2 already: reshape is a no-op
    assert [n.op for n in g] == ["input", "conv", "global_avgpool", "fc"]
    with pytest.raises(OnnxImportError, match=r"node reshape \(Reshape\): .*fixes the batch at 2"):
        load_onnx(net([2, -1]), batch=3)


# -- refusals ---------------------------------------------------------------------------
W = {"w": _r(4, 3, 3, 3)}


def _conv(**kw):
    return oh.make_node("Conv", ["x", "w"], ["y"], "bad", **kw)


def _with_bn(nodes):
    inits = dict(W)
    return _model(nodes(inits), inits)


def _after_conv(node, inits=None):
    return _model([oh.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]), node],
                  {**W, **(inits or {})})


REFUSALS = [
    ("lstm", lambda: _model([oh.make_node("LSTM", ["x", "w"], ["y"], "bad", hidden_size=2)], W),
     r"node bad \(LSTM\): unsupported op"),
    ("softmax", lambda: _model([oh.make_node("Softmax", ["x"], ["s"], "bad"),
                                oh.make_node("Conv", ["s", "w"], ["y"], "conv")], W),
     r"node bad \(Softmax\): unsupported op"),
    ("domain", lambda: _model([oh.make_node("Relu", ["x"], ["y"], "bad", domain="com.x")], W),
     r"node bad \(Relu\): op of domain 'com.x'"),
    ("grouped", lambda: _model([oh.make_node("Conv", ["x", "wg"], ["y"], "bad", group=3)],
                               {"wg": _r(3, 1, 3, 3)}),
     r"node bad \(Conv\): grouped convolution \(group=3\)"),
    ("asymmetric", lambda: _model([_conv(pads=[0, 0, 1, 1])], W),
     r"node bad \(Conv\): asymmetric pads \[0, 0, 1, 1\]"),
    ("same_even", lambda: _model([oh.make_node("Conv", ["x", "w2"], ["y"], "bad",
                                               auto_pad="SAME_UPPER")], {"w2": _r(4, 3, 2, 2)}),
     r"node bad \(Conv\): auto_pad SAME_UPPER gives asymmetric pads"),
    ("attribute", lambda: _model([_conv(foo=1)], W),
     r"node bad \(Conv\): unsupported attribute foo"),
    ("weight_not_constant", lambda: _model(
        [oh.make_node("Relu", ["x"], ["r"], "relu"), oh.make_node("Conv", ["x", "r"], ["y"],
                                                                  "bad")], W),
     r"node bad \(Conv\): weight 'r' is not a constant"),
    ("3d_conv", lambda: _model([oh.make_node("Conv", ["x", "w3"], ["y"], "bad")],
                               {"w3": _r(4, 3, 1, 1, 1)}),
     r"node bad \(Conv\): weight of shape \(4, 3, 1, 1, 1\): only 2-D"),
    ("pool_dilation", lambda: _model([oh.make_node("MaxPool", ["x"], ["y"], "bad",
                                                   kernel_shape=[2, 2], dilations=[2, 2])], {}),
     r"node bad \(MaxPool\): dilations \[2, 2\]"),
    ("pool_ceil_onnx_rule", lambda: _model([oh.make_node(
        "MaxPool", ["x"], ["y"], "bad", kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1],
        ceil_mode=1)], {}, x=("N", 3, 5, 5)),
     r"node bad \(MaxPool\): onnx shape inference gives \[1, 3, 4, 4\], parconv computes "
     r"\[1, 3, 3, 3\]; with ceil_mode"),
    ("pool_big_padding", lambda: _model([oh.make_node(
        "MaxPool", ["x"], ["y"], "bad", kernel_shape=[2, 2], pads=[2, 2, 2, 2])], {}),
     r"node bad \(MaxPool\): pool: padding 2 must be at most half the kernel"),
    ("avg_ceil_include_pad", lambda: _model([oh.make_node(
        "AveragePool", ["x"], ["y"], "bad", kernel_shape=[3, 3], strides=[2, 2],
        pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)], {}, x=("N", 3, 6, 6)),
     r"node bad \(AveragePool\): ceil_mode=1 with count_include_pad=1"),
    ("bn_not_after_conv", lambda: _with_bn(
        lambda i: [oh.make_node("Relu", ["x"], ["r"], "relu"), _bn("bad", "r", "y", 3, i)]),
     r"node bad \(BatchNormalization\): batch normalisation is supported only folded"),
    ("bn_conv_shared", lambda: _with_bn(
        lambda i: [oh.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
                   _bn("bad", "c", "n", 4, i), oh.make_node("Add", ["n", "c"], ["y"], "add")]),
     r"node bad \(BatchNormalization\): batch normalisation is supported only folded"),
    ("bn_training", lambda: _model(
        [oh.make_node("Conv", ["x", "w"], ["c"], "conv"),
         oh.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], "bad",
                      training_mode=1)],
        {**W, **{k: _r(4, positive=True) for k in "sbmv"}}),
     r"node bad \(BatchNormalization\): training_mode=1"),
    ("add_constant", lambda: _after_conv(oh.make_node("Add", ["c", "k"], ["y"], "bad"),
                                         {"k": _r(4, 1, 1)}),
     r"node bad \(Add\): adds the constant 'k'"),
    ("add_broadcast", lambda: _model(
        [oh.make_node("Conv", ["x", "w"], ["c"], "conv"),
         oh.make_node("GlobalAveragePool", ["c"], ["p"], "gap"),
         oh.make_node("Add", ["c", "p"], ["y"], "bad")], W),
     r"node bad \(Add\): inputs of shapes \(4, 7, 7\) and \(4, 1, 1\)"),
    ("concat_axis", lambda: _after_conv(oh.make_node("Concat", ["c", "c"], ["y"], "bad",
                                                     axis=2)),
     r"node bad \(Concat\): axis 2"),
    ("flatten_axis", lambda: _after_conv(oh.make_node("Flatten", ["c"], ["y"], "bad", axis=2)),
     r"node bad \(Flatten\): axis 2"),
    ("reshape_not_flatten", lambda: _after_conv(
        oh.make_node("Reshape", ["c", "s"], ["y"], "bad"), {"s": np.array([0, 4, -1])}),
     r"node bad \(Reshape\): reshape to \[0, 4, -1\] is not a flatten"),
    ("reshape_dynamic", lambda: _model(
        [oh.make_node("Shape", ["x"], ["s"], "bad"),
         oh.make_node("Reshape", ["x", "s"], ["y"], "reshape")], {}),
     r"node bad \(Shape\): unsupported op"),
    ("gemm_alpha", lambda: _model(
        [oh.make_node("Flatten", ["x"], ["f"], "flat"),
         oh.make_node("Gemm", ["f", "fw"], ["y"], "bad", alpha=2.0, transB=1)],
        {"fw": _r(5, 243)}),
     r"node bad \(Gemm\): alpha=2.0"),
    ("gemm_on_image", lambda: _model(
        [oh.make_node("Gemm", ["x", "fw"], ["y"], "bad")], {"fw": _r(9, 5)}),
     r"node bad \(Gemm\): input has rank 4"),
    ("reducemean_channels", lambda: _model(
        [oh.make_node("ReduceMean", ["x"], ["y"], "bad", axes=[1])], {}),
     r"node bad \(ReduceMean\): axes \[1\]"),
    ("dropout_mask", lambda: _model(
        [oh.make_node("Dropout", ["x"], ["d", "mask"], "bad"),
         oh.make_node("Add", ["d", "mask"], ["y"], "add")], {}),
     r"node bad \(Dropout\): output 1 \(mask\) is used"),
]


@pytest.mark.parametrize("case,make,match", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_refusals_name_the_node_and_reason(case, make, match):
    with pytest.raises(OnnxImportError, match=match) as info:
        load_onnx(make(), batch=1)
    assert isinstance(info.value, ValueError)


def test_model_level_refusals():
    with pytest.raises(OnnxImportError, match=r"input x: dimension 2 is symbolic \('H'\)"):
        load_onnx(_model([_conv()], W, x=("N", 3, "H", 9)))
    with pytest.raises(OnnxImportError, match=r"input x: rank 3"):
        load_onnx(_model([oh.make_node("Relu", ["x"], ["y"], "r")], {}, x=("N", 3, 9)))
    m = _model([oh.make_node("Relu", ["x"], ["y"], "r")], {})
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    with pytest.raises(OnnxImportError, match=r"input x: element type UINT8"):
        load_onnx(m)
    two = [oh.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 9, 9])]
    with pytest.raises(OnnxImportError, match=r"model: 2 inputs \(x, z\)"):
        load_onnx(_model([oh.make_node("Add", ["x", "z"], ["y"], "a")], {}, extra_inputs=two))
    with pytest.raises(OnnxImportError, match=r"model: 2 outputs"):
        load_onnx(_model([oh.make_node("Relu", ["x"], ["y"], "r"),
                          oh.make_node("Relu", ["x"], ["z"], "s")], {}, outputs=("y", "z")))
    with pytest.raises(OnnxImportError, match=r"layers .* computed but only"):
        load_onnx(_model([oh.make_node("Relu", ["x"], ["y"], "r"),
                          oh.make_node("Relu", ["x"], ["z"], "s")], {}))


def test_missing_onnx_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(OnnxUnavailableError, match=r"parconv\[onnx\]"):
        load_onnx("model.onnx")


# -- CLI ----------------------------------------------------------------------------------
def test_cli_net_plan_accepts_an_onnx_file(tmp_path, capsys):
    path = tmp_path / "net.onnx"
    onnx.save(net_model(), str(path))
    out = tmp_path / "plan.json"
    assert cli_main(["net", "plan", "--model", str(path), "--batch", "4", "--procs", "3",
                     "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["command"]["model"] == str(path) and d["command"]["image"] == [9, 9]
    names = [lp["name"] for lp in d["layers"]]
    assert "stem.conv" in names and "fc2.MatMul" in names
    assert cli_main(["net", "plan", "--model", str(path), "--batch", "2", "--procs", "2"]) == 0
    assert "model   net  batch 2  image 9x9" in capsys.readouterr().out
    # --image must match the model's input if given
    assert cli_main(["net", "plan", "--model", str(path), "--image", "8,8"]) == 2
    assert "input is 9x9" in capsys.readouterr().err


def test_cli_refusal_printed_once_exit_2(tmp_path):
    bad = tmp_path / "bad.onnx"
    onnx.save(_model([_conv(group=3)], {"w": _r(3, 1, 3, 3)}), str(bad))
    proc = subprocess.run([sys.executable, "-m", "parconv", "net", "plan", "--model", str(bad),
                           "--procs", "2"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("node bad (Conv): grouped convolution") == 1, proc.stderr
    # without the onnx package: the same exit status and an install hint, no traceback
    code = ("import sys; sys.modules['onnx'] = None; from parconv.cli import main; "
            f"sys.exit(main(['net', 'plan', '--model', {str(bad)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "parconv[onnx]" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "parconv", "net", "plan", "--model", "vgg"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "built-in" in proc.stderr and ".onnx" in proc.stderr


# -- PyTorch export (optional cross-check) -------------------------------------------------
def test_torch_export_matches_torch_forward():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn = nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
            self.block, self.side = Block(), nn.Conv2d(8, 4, 1)
            self.avg = nn.AvgPool2d(3, 1, 1)
            self.fc = nn.Linear(12, 5)

        def forward(self, x):
            x = self.pool(torch.relu(self.bn(self.stem(x))))
            x = self.block(x)
            x = self.avg(torch.cat([x, self.side(x)], 1))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    torch.manual_seed(0)
    net = Net()
    for mod in net.modules():                          # non-trivial batch-norm statistics
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 2)
            mod.bias.data.uniform_(-1, 1)
    net.eval()
    x = torch.randn(2, 3, 19, 17)
    f = io.BytesIO()
    for training in (torch.onnx.TrainingMode.EVAL, torch.onnx.TrainingMode.PRESERVE):
        try:
            with warnings.catch_warnings():            # the legacy exporter's deprecation
                warnings.simplefilter("ignore")
                torch.onnx.export(net, (x,), f, dynamo=False, input_names=["x"],
                                  opset_version=17, dynamic_axes={"x": {0: "N"}},
                                  training=training,
                                  do_constant_folding=training == torch.onnx.TrainingMode.EVAL)
        except Exception as exc:  # exporter unavailable offline / in this build
            pytest.skip(f"torch.onnx.export failed: {exc}")
        m = onnx.load_from_string(f.getvalue())
        f.seek(0)
        f.truncate()
        g, w = load_onnx(m, batch=2)
        ops = [n.op for n in g]
        assert ops.count("conv") == 4 and ops.count("fc") == 1 and "maxpool" in ops
        if training == torch.onnx.TrainingMode.PRESERVE:   # batch norms kept, then folded
            assert sum(1 for n in g if n.op == "conv" and n.attrs["bn"]) == 3
        with torch.no_grad():
            want = net(x).numpy()
        got = evaluate(g, w, x.numpy())
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-4)


def test_net_run_of_an_onnx_model_under_mpi(tmp_path, warm_numba):
    """`parconv net run --model FILE.onnx` on 3 ranks: the initializers are the weights,
    the logits verify against the single-process reference and every rank's measured
    bytes equal the plan's."""
    import json
    import sys

    from test_runtime_mpi import mpiexec

    path, out = tmp_path / "net.onnx", tmp_path / "run.json"
    onnx.save(net_model(), str(path))
    proc, _ = mpiexec(3, [sys.executable, "-m", "parconv", "net", "run", "--model", str(path),
                          "--batch", "2", "--verify", "--quiet", "--json", str(out)],
                      timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = json.loads(out.read_text())
    assert rep["verify"]["ok"] and rep["measured_equals_planned"], rep["verify"]
