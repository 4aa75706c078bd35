"""The numpy reference against a literal loop nest (and PyTorch when installed)."""

import importlib.util

import numpy as np
import pytest

from parconv.dtypes import PRESETS
from parconv.layers import SUITES, layer, layer_names, suite
from parconv.reference import (
    AccumulatorOverflow,
    conv2d_reference,
    random_operands,
    reference_for_spec,
)
from parconv.spec import ConvSpec


def loop_nest(x, w, stride, padding, dilation):
    """THEORY.md §1 literally, in int64/float64."""
    B, C, Hin, Win = x.shape
    K, _, R, S = w.shape
    spec = ConvSpec(B, C, K, (Hin, Win), (R, S), stride, padding, dilation)
    (sh, sw), (ph, pw), (dh, dw) = spec.stride, spec.padding, spec.dilation
    acc = np.int64 if x.dtype.kind in "iu" else np.float64
    out = np.zeros(spec.output_shape, dtype=acc)
    for b in range(B):
        for k in range(K):
            for h in range(spec.H):
                for ww in range(spec.W):
                    tot = acc(0)
                    for c in range(C):
                        for r in range(R):
                            for s in range(S):
                                i, j = sh * h + dh * r - ph, sw * ww + dw * s - pw
                                if 0 <= i < Hin and 0 <= j < Win:
                                    tot += acc(x[b, c, i, j]) * acc(w[k, c, r, s])
                    out[b, k, h, ww] = tot
    return out


CASES = [((1, 2, 5, 6), (3, 2, 3, 3), 1, 1, 1), ((2, 3, 7, 5), (2, 3, 2, 3), 2, (1, 0), (2, 1)),
         ((1, 1, 9, 9), (2, 1, 1, 1), 2, 0, 1), ((1, 2, 11, 11), (1, 2, 7, 7), 2, 3, 1),
         ((2, 2, 6, 8), (2, 2, 4, 2), (1, 3), (2, 1), (1, 2))]


@pytest.mark.parametrize("xs,ws,st,pad,dil", CASES)
def test_reference_matches_loop_nest_int(xs, ws, st, pad, dil):
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, xs).astype(np.int8)
    w = rng.integers(-128, 128, ws).astype(np.int8)
    got = conv2d_reference(x, w, st, pad, dil)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, loop_nest(x, w, st, pad, dil))


@pytest.mark.parametrize("xs,ws,st,pad,dil", CASES)
def test_reference_matches_loop_nest_float(xs, ws, st, pad, dil):
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    np.testing.assert_allclose(conv2d_reference(x, w, st, pad, dil, "float64"),
                               loop_nest(x, w, st, pad, dil), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed")
def test_reference_matches_torch():
    import torch

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 10, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2,
                                      padding=1, dilation=(1, 2)).numpy()
    np.testing.assert_allclose(conv2d_reference(x, w, 2, 1, (1, 2)), want, rtol=1e-5, atol=1e-5)


def test_overflow_is_detected_not_wrapped():
    x = np.full((1, 16384, 3, 3), -128, np.int8)
    w = np.full((1, 16384, 3, 3), -128, np.int8)  # 16384*9*16384 > 2^31 - 1
    with pytest.raises(AccumulatorOverflow, match="int32"):
        conv2d_reference(x, w)
    assert conv2d_reference(x[:, :1024], w[:, :1024])[0, 0, 0, 0] == 1024 * 9 * 16384


def test_uint8_and_bf16():
    rng = np.random.default_rng(4)
    spec = ConvSpec(1, 2, 3, 6, 3, precision=PRESETS["uint8"])
    x, w = random_operands(spec, 0)
    assert x.dtype == np.uint8 and w.dtype == np.int8
    np.testing.assert_array_equal(reference_for_spec(spec, x, w), loop_nest(x, w, 1, 0, 1))
    spec = ConvSpec(1, 2, 3, 6, 3, precision=PRESETS["bf16"])
    x, w = random_operands(spec, 5)
    assert str(x.dtype) == "bfloat16"
    want = loop_nest(x.astype(np.float64), w.astype(np.float64), 1, 0, 1)
    np.testing.assert_allclose(reference_for_spec(spec, x, w), want, rtol=1e-5, atol=1e-5)
    del rng


def test_reference_rejects_bad_shapes():
    with pytest.raises(ValueError, match="channels"):
        conv2d_reference(np.zeros((1, 2, 4, 4)), np.zeros((1, 3, 1, 1)))
    with pytest.raises(ValueError, match="4-D"):
        conv2d_reference(np.zeros((2, 4, 4)), np.zeros((1, 2, 1, 1)))


def test_layer_suites():
    r50 = suite("resnet50", batch=2)
    assert len(r50) == 53 and all(s.B == 2 for s in r50)
    assert len(suite("resnet18")) == 20 and len(suite("vgg16")) == 13 and len(suite("alexnet")) == 5
    stem = layer("resnet50/conv1")
    assert (stem.C, stem.K, stem.kernel, stem.stride, stem.padding, stem.out_size) == \
        (3, 64, (7, 7), (2, 2), (3, 3), (112, 112))
    l3 = layer("resnet50/layer3.0.conv2")  # torchvision v1.5: stride on the 3x3
    assert l3.stride == (2, 2) and l3.in_size == (28, 28) and l3.out_size == (14, 14)
    ds = layer("resnet50/layer4.0.downsample.0")
    assert (ds.C, ds.K, ds.kernel, ds.stride) == (1024, 2048, (1, 1), (2, 2))
    assert layer("alexnet/features.0").out_size == (55, 55)
    assert layer("vgg16/features.28").in_size == (14, 14)
    for name in SUITES:
        names = layer_names(name)
        assert len(names) == len(set(names))
    with pytest.raises(ValueError, match="unknown layer"):
        layer("resnet50/layer9.0.conv1")
    with pytest.raises(ValueError, match="SUITE/MODULE"):
        layer("mobilenet/conv1")
