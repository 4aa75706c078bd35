"""Weights of a layer graph: seeded, loaded from ``.npz``, and batch norms folded.

Naming convention (torchvision's ``state_dict`` names; ONNX import uses the same): a
``conv`` node ``N`` has ``N.weight`` ``(K, C, R, S)`` and, when it has a bias, ``N.bias``
``(K,)``; the batch norm ``M`` folded into it (``node.attrs["bn"] = M``) has
``M.weight``, ``M.bias``, ``M.running_mean``, ``M.running_var`` (each ``(K,)``); an ``fc``
node has ``N.weight`` ``(K, F)`` and ``N.bias`` ``(K,)``. ``*.num_batches_tracked``
entries of a torchvision checkpoint are accepted and ignored.

Inference folds each batch norm into its convolution::

    s = gamma / sqrt(running_var + eps)
    weight' = weight · s[k]            bias' = beta + (bias − running_mean) · s

(``eps`` = ``node.attrs["bn_eps"]`` when set, else PyTorch's 1e-5). Every value is
float32.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np

from .graph import Graph, Node

#: PyTorch's default batch-norm epsilon.
BN_EPS = 1e-5


def param_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Every parameter the graph needs, name -> shape (in graph order)."""
    out: dict[str, tuple[int, ...]] = {}
    for node in graph:
        if node.op == "conv":
            k, (r, s) = node.shape[0], node.attrs["kernel"]
            c = graph.in_shape(node.name)[0]
            out[f"{node.name}.weight"] = (k, c, r, s)
            if node.attrs.get("bias"):
                out[f"{node.name}.bias"] = (k,)
            bn = node.attrs.get("bn")
            if bn:
                for p in ("weight", "bias", "running_mean", "running_var"):
                    out[f"{bn}.{p}"] = (k,)
        elif node.op == "fc":
            k, f = node.shape[0], graph.in_shape(node.name)[0]
            out[f"{node.name}.weight"] = (k, f)
            if node.attrs.get("bias"):
                out[f"{node.name}.bias"] = (k,)
    return out


def _rng(seed: int, name: str) -> np.random.Generator:
    """A generator that depends only on (seed, parameter name)."""
    return np.random.default_rng([int(seed) & (2**63 - 1), zlib.crc32(name.encode())])


def seeded_param(name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """One parameter defined by ``(seed, name)`` (float32), scaled so activations stay
    O(1): convolution and fc weights uniform with He's variance ``2 / fan_in``; batch
    norm weights in [0.5, 1), biases and running means within ±0.1, running variances in
    [0.8, 1.2); a conv/fc bias within ±0.1."""
    rng = _rng(seed, name)
    kind = name.rsplit(".", 1)[-1]
    if kind == "weight" and len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        lim = math.sqrt(3.0 * 2.0 / fan_in)
        return rng.uniform(-lim, lim, shape).astype(np.float32)
    if kind == "weight":          # batch norm gamma
        return rng.uniform(0.5, 1.0, shape).astype(np.float32)
    if kind == "running_var":
        return rng.uniform(0.8, 1.2, shape).astype(np.float32)
    return rng.uniform(-0.1, 0.1, shape).astype(np.float32)     # bias, running_mean


def seeded_weights(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """All parameters of ``graph`` from ``seed`` (each a function of seed and name only)."""
    return {n: seeded_param(n, s, seed) for n, s in param_shapes(graph).items()}


def check_weights(graph: Graph, weights: dict[str, np.ndarray], source: str = "weights") -> None:
    """Every parameter present with its shape, finite, and no unknown name.

    Raises
    ------
    ValueError
        Naming the first missing, misshapen, non-finite or unknown parameter.
    """
    want = param_shapes(graph)
    for name, shape in want.items():
        if name not in weights:
            raise ValueError(f"{source}: parameter {name!r} {shape} is missing")
        a = weights[name]
        if tuple(np.shape(a)) != shape:
            raise ValueError(f"{source}: parameter {name!r} has shape {tuple(np.shape(a))}, "
                             f"expected {shape}")
        a = np.asarray(a)
        if a.dtype.kind not in "fiu" and a.dtype.name != "bfloat16":
            raise ValueError(f"{source}: parameter {name!r} has dtype {a.dtype}, expected a "
                             "number type")
        if not np.all(np.isfinite(a.astype(np.float64))):
            raise ValueError(f"{source}: parameter {name!r} has non-finite values")
    for name in weights:
        if name not in want and not name.endswith(".num_batches_tracked"):
            raise ValueError(f"{source}: unknown parameter {name!r} (the {graph.name or 'model'}"
                             f" graph has no such parameter)")


def load_weights(path: str | Path, graph: Graph) -> dict[str, np.ndarray]:
    """Parameters of ``graph`` from an ``.npz`` file (as float32), checked by
    :func:`check_weights`.

    Raises
    ------
    ValueError
        If the file cannot be read or a parameter is missing, misshapen or unknown.
    """
    from ..io import load_npz

    try:
        raw = load_npz(path)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"--weights {path}: cannot read it as .npz ({exc})") from None
    check_weights(graph, raw, f"--weights {path}")
    return {k: np.asarray(v, np.float32) for k, v in raw.items()
            if not k.endswith(".num_batches_tracked")}


def folded(node: Node, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(weight (K, C, R, S), bias (K,))`` of a conv or fc node as used at inference
    (batch norm folded; an fc weight reshaped to ``(K, F, 1, 1)``; a missing bias is 0);
    float32."""
    w = np.asarray(weights[f"{node.name}.weight"], np.float32)
    k = w.shape[0]
    if node.op == "fc":
        w = w.reshape(k, -1, 1, 1)
    b = weights.get(f"{node.name}.bias")
    b = np.zeros(k, np.float64) if b is None else np.asarray(b, np.float64)
    bn = node.attrs.get("bn")
    if not bn:
        return np.ascontiguousarray(w), b.astype(np.float32)
    eps = float(node.attrs.get("bn_eps", BN_EPS))
    g, beta, mean, var = (np.asarray(weights[f"{bn}.{p}"], np.float64)
                          for p in ("weight", "bias", "running_mean", "running_var"))
    s = g / np.sqrt(var + eps)
    wf = (w.astype(np.float64) * s[:, None, None, None]).astype(np.float32)
    return wf, (beta + (b - mean) * s).astype(np.float32)


def folded_weights(graph: Graph, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every conv/fc node's folded ``N.weight`` and ``N.bias`` (what ``--save`` writes:
    the parameters as used; an fc weight keeps its ``(K, F)`` shape)."""
    out = {}
    for node in graph.conv_nodes():
        w, b = folded(node, weights)
        out[f"{node.name}.weight"] = w.reshape(w.shape[0], -1) if node.op == "fc" else w
        out[f"{node.name}.bias"] = b
    return out


__all__ = ["BN_EPS", "param_shapes", "seeded_param", "seeded_weights", "check_weights",
           "load_weights", "folded", "folded_weights"]
