"""Layer graph and built-in models: shapes, PyTorch pooling arithmetic, parameter counts."""

from __future__ import annotations

import numpy as np
import pytest

from parconv.network.graph import Graph, adaptive_windows, pool_out_size, pool_windows
from parconv.network.models import MODELS, build

# torchvision's published parameter counts
PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
          "vgg16": 138_357_544, "alexnet": 61_100_840}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_match_torchvision(name):
    assert build(name).params() == PARAMS[name]


def test_shapes_at_224_match_torchvision():
    g = build("resnet50")
    assert g.shape("conv1") == (64, 112, 112)
    assert g.shape("maxpool") == (64, 56, 56)
    assert g.shape("layer1.2.relu:2") == (256, 56, 56)
    assert g.shape("layer2.0.downsample.0") == (512, 28, 28)
    assert g.shape("layer4.2.relu:2") == (2048, 7, 7)
    assert g.shape("avgpool") == (2048, 1, 1)
    assert g.shape("fc") == (1000, 1, 1)
    assert len(g.conv_nodes()) == 54                   # 53 convolutions + fc
    g = build("resnet18")
    assert g.shape("layer4.1.relu:1") == (512, 7, 7) and len(g.conv_nodes()) == 21
    g = build("vgg16")
    assert g.shape("features.30") == (512, 7, 7) and g.shape("flatten") == (25088, 1, 1)
    assert g.shape("classifier.6") == (1000, 1, 1)
    g = build("alexnet")
    assert g.shape("features.0") == (64, 55, 55)
    assert g.shape("features.12") == (256, 6, 6) and g.shape("flatten") == (9216, 1, 1)


def test_any_image_size_and_refusals():
    g = build("resnet50", (160, 200))
    assert g.shape("layer4.2.relu:2") == (2048, 5, 7)
    g = build("vgg16", (100, 90))                      # 3x2 features, adaptive to 7x7
    assert g.shape("features.30") == (512, 3, 2) and g.shape("avgpool") == (512, 7, 7)
    with pytest.raises(ValueError, match="features"):
        build("vgg16", 16)                             # the fifth maxpool has no input
    with pytest.raises(ValueError, match="unknown model"):
        build("resnet101")
    assert set(MODELS) == set(PARAMS)


def test_graph_nodes_and_errors():
    g = Graph("t")
    x = g.input("x", (3, 9, 9))
    y = g.conv("c", x, 4, 3, padding=1, bn="bn")
    with pytest.raises(ValueError, match="already used"):
        g.relu("c", y)
    with pytest.raises(ValueError, match="unknown input"):
        g.relu("r", "nope")
    with pytest.raises(ValueError, match="one shape"):
        g.add("a", y, x)
    z = g.concat("cat", y, g.conv("c2", x, 5, 1))
    assert g.shape(z) == (9, 9, 9)
    with pytest.raises(ValueError, match="flattened"):
        g.fc("fc", z, 3)
    spec = g.conv_spec("c", batch=2)
    assert (spec.B, spec.C, spec.K, spec.in_size, spec.out_size) == (2, 3, 4, (9, 9), (9, 9))
    g.fc("fc", g.flatten("f", g.global_avgpool("gap", z)), 7)
    fc = g.conv_spec("fc", 5)
    assert (fc.B, fc.C, fc.K, fc.in_size, fc.kernel) == (5, 9, 7, (1, 1), (1, 1))
    assert g.output() == "fc"
    assert g.params() == 4 * 27 + 2 * 4 + 5 * 3 + 9 * 7 + 7


def test_pool_arithmetic_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    cases = [(n, k, s, p, cm) for n in (5, 6, 7, 13, 14) for k in (1, 2, 3, 5) for s in (1, 2, 3)
             for p in range(k // 2 + 1) for cm in (False, True) if n + 2 * p >= k]
    for n, k, s, p, cm in cases:
        x = torch.tensor(rng.standard_normal((1, 1, n, 1)), dtype=torch.float64)
        ref = torch.nn.functional.max_pool2d(x, (k, 1), (s, 1), (p, 0), ceil_mode=cm)
        assert pool_out_size(n, k, s, p, cm) == ref.shape[2], (n, k, s, p, cm)
        win = pool_windows(n, k, s, p, cm)
        mine = [x[0, 0, a:b, 0].max().item() for a, b in win]
        assert np.allclose(mine, ref[0, 0, :, 0].numpy()), (n, k, s, p, cm)
    for n in (1, 5, 7, 8, 13):
        for o in (1, 2, 3, 5, 7):
            x = torch.tensor(rng.standard_normal((1, 1, n, 1)), dtype=torch.float64)
            ref = torch.nn.functional.adaptive_avg_pool2d(x, (o, 1))
            mine = [x[0, 0, a:b, 0].mean().item() for a, b in adaptive_windows(n, o)]
            assert np.allclose(mine, ref[0, 0, :, 0].numpy()), (n, o)
    with pytest.raises(ValueError, match="half the kernel"):
        pool_out_size(8, 3, 2, 2, False)
