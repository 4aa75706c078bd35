"""The single-process network reference, weights and the pure network simulation.

The reference is checked against PyTorch (optional: ``pytest.importorskip("torch")``)
on ResNet-18 built by hand from ``torch.nn`` with torchvision's module names, and on
small graphs of every pooling variant; the simulation of every rank's schedules against
the plan's figures, with a tampered plan caught.
"""

from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from parconv.dtypes import PRESETS
from parconv.io import save_npz
from parconv.network.graph import Graph
from parconv.network.layout import Placement
from parconv.network.models import build
from parconv.network.plan import plan_fixed, plan_network
from parconv.network.reference import check_network_precision, forward, seeded_input
from parconv.network.runtime import simulate_network
from parconv.network.weights import (
    check_weights,
    folded,
    folded_weights,
    load_weights,
    param_shapes,
    seeded_weights,
)
from parconv.planner.plan import candidate_grids

sys.path.insert(0, str(Path(__file__).parent))
from torch_resnet import load_numpy_weights, torch_resnet18  # noqa: E402


# -- weights ---------------------------------------------------------------------------------
def test_seeded_weights_names_shapes_and_determinism():
    g = build("resnet18", 64)
    w = seeded_weights(g, 3)
    shapes = param_shapes(g)
    assert set(w) == set(shapes)
    assert sum(int(np.prod(s)) for n, s in shapes.items()
               if not n.endswith(("running_mean", "running_var"))) == 11_689_512
    assert w["conv1.weight"].shape == (64, 3, 7, 7) and w["fc.weight"].shape == (1000, 512)
    assert w["layer2.0.downsample.1.running_var"].shape == (128,)
    assert all(a.dtype == np.float32 for a in w.values())
    # a function of (seed, name) only: same in another graph, different with another seed
    g34 = build("resnet34", 32)
    w34 = seeded_weights(g34, 3)
    assert np.array_equal(w34["layer1.0.conv1.weight"], w["layer1.0.conv1.weight"])
    assert not np.array_equal(seeded_weights(g, 4)["conv1.weight"], w["conv1.weight"])
    # activations stay O(1)
    out = forward(g, w, seeded_input((2, 3, 64, 64), 0))
    assert 0.05 < float(out.std()) < 20


def test_check_and_load_weights_refuse_clearly(tmp_path):
    g = build("resnet18", 32)
    w = seeded_weights(g, 0)
    save_npz(tmp_path / "ok.npz", **w, **{"bn1.num_batches_tracked": np.array(5)})
    back = load_weights(tmp_path / "ok.npz", g)
    assert all(np.array_equal(back[k], w[k]) for k in w)
    bad = dict(w)
    del bad["layer3.1.bn2.running_mean"]
    with pytest.raises(ValueError, match=r"layer3.1.bn2.running_mean.*missing"):
        check_weights(g, bad)
    bad = dict(w, **{"fc.weight": np.zeros((10, 512), np.float32)})
    with pytest.raises(ValueError, match=r"fc.weight.*shape \(10, 512\).*\(1000, 512\)"):
        check_weights(g, bad)
    bad = dict(w, **{"layer9.conv.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="unknown parameter 'layer9.conv.weight'"):
        check_weights(g, bad)
    bad = dict(w, **{"conv1.weight": np.full((64, 3, 7, 7), np.nan, np.float32)})
    with pytest.raises(ValueError, match="conv1.weight.*non-finite"):
        check_weights(g, bad)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read it as .npz"):
        load_weights(tmp_path / "junk.npz", g)


def test_bn_folding_matches_conv_then_batch_norm():
    torch = pytest.importorskip("torch")
    g = Graph("t")
    g.conv("c", g.input("x", (4, 6, 6)), 5, 3, padding=1, bias=True, bn="b")
    w = seeded_weights(g, 1)
    wf, bf = folded(g["c"], w)
    x = torch.from_numpy(seeded_input((2, 4, 6, 6), 1))
    conv = torch.nn.Conv2d(4, 5, 3, padding=1)
    bn = torch.nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w["c.weight"]))
        conv.bias.copy_(torch.from_numpy(w["c.bias"]))
        for p in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, p).copy_(torch.from_numpy(w[f"b.{p}"]))
        want = bn(conv(x)).numpy()
        got = torch.nn.functional.conv2d(x, torch.from_numpy(wf), torch.from_numpy(bf),
                                         padding=1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert set(folded_weights(g, w)) == {"c.weight", "c.bias"}


def test_integer_precision_is_refused_for_networks():
    with pytest.raises(ValueError, match="requantisation"):
        check_network_precision(PRESETS["int8"])
    check_network_precision(PRESETS["bf16"])


# -- the reference against PyTorch ------------------------------------------------------------
def test_reference_resnet18_matches_torch():
    torch = pytest.importorskip("torch")
    g = build("resnet18", 64)
    w = seeded_weights(g, 0)
    net = torch_resnet18(torch).eval()
    sd = net.state_dict()
    assert {k for k in sd if not k.endswith("num_batches_tracked")} == set(w)
    load_numpy_weights(torch, net, w)
    x = seeded_input((2, 3, 64, 64), 0)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = forward(g, w, x)
    assert got.shape == (2, 1000)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # bf16 activations: close to float32 at bf16's precision
    got16 = forward(g, w, x, PRESETS["bf16"])
    assert np.abs(got16 - want).max() < 0.1 * np.abs(want).max()


@pytest.mark.parametrize("hw", [(9, 7), (10, 13)])
def test_reference_pooling_concat_and_global_pool_match_torch(hw):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    cases = [
        ("maxpool", dict(kernel=3, stride=2, padding=1, ceil_mode=True),
         lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True)),
        ("maxpool", dict(kernel=(2, 3), stride=(2, 1), padding=(1, 0), ceil_mode=False),
         lambda t: F.max_pool2d(t, (2, 3), (2, 1), (1, 0))),
        ("avgpool", dict(kernel=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
         lambda t: F.avg_pool2d(t, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
        ("avgpool", dict(kernel=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True),
         lambda t: F.avg_pool2d(t, 3, 2, 1, ceil_mode=True, count_include_pad=True)),
        ("avgpool", dict(kernel=2, stride=3), lambda t: F.avg_pool2d(t, 2, 3)),
        ("adaptive_avgpool", dict(output_size=(4, 3)),
         lambda t: F.adaptive_avg_pool2d(t, (4, 3))),
        ("global_avgpool", {}, lambda t: F.adaptive_avg_pool2d(t, 1)),
    ]
    x = seeded_input((2, 3, *hw), 5)
    for op, kw, fn in cases:
        g = Graph("p")
        i = g.input("x", (3, *hw))
        getattr(g, op)("pool", i, **kw)
        got = forward(g, {}, x)
        want = fn(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-6, atol=1e-6,
                                   err_msg=f"{op} {kw}")
    # concat of a conv and its input, then add and relu
    g = Graph("c")
    i = g.input("x", (3, *hw))
    c = g.conv("c", i, 4, 3, padding=1, bias=True)
    cat = g.concat("cat", c, g.conv("d", i, 2, 1))
    g.relu("r", g.add("a", cat, g.conv("e", cat, 6, 1)))
    w = seeded_weights(g, 2)
    t = torch.from_numpy(x)
    tc = F.conv2d(t, torch.from_numpy(w["c.weight"]), torch.from_numpy(w["c.bias"]), padding=1)
    td = F.conv2d(t, torch.from_numpy(w["d.weight"]))
    cat_t = torch.cat([tc, td], 1)
    want = F.relu(cat_t + F.conv2d(cat_t, torch.from_numpy(w["e.weight"]))).numpy()
    np.testing.assert_allclose(forward(g, w, x), want, rtol=1e-5, atol=1e-5)


# -- the pure simulation of every rank ----------------------------------------------------------
def _random_plan(g, batch, P, seed):
    rng = random.Random(seed)
    orders = list(itertools.permutations("bkchw"))
    pls = {n.name: Placement(rng.choice(candidate_grids(g.conv_spec(n.name, batch), P)),
                             rng.choice(orders)) for n in g.conv_nodes()}
    return plan_fixed(g, batch, P, pls)


@pytest.mark.parametrize("P", [3, 5, 7])
def test_simulation_matches_plan_rank_by_rank(P):
    g = build("resnet18", 32)
    for plan in (plan_network(g, 2, P), _random_plan(g, 2, P, P)):
        sim = simulate_network(g, plan)
        assert sim.mismatches == []
        assert sim.messages > 0
    moved = [lp for lp in plan.layers if lp.redistributions]
    assert moved, "the random plan should redistribute somewhere"
    # a tampered plan is caught
    lp = moved[0]
    r = next(iter(lp.redistributions.values()))
    r.__dict__["recv_elems"] = r.recv_elems + 1
    assert any("redistribution" in m for m in simulate_network(g, plan).mismatches)


def test_net_simulate_cli(capsys):
    from parconv.cli import main

    assert main(["net", "simulate", "--model", "resnet18", "--image", "32,32", "--procs", "5",
                 "--all-layers"]) == 0
    out = capsys.readouterr().out
    assert "every rank's bytes equal the plan's: yes" in out
    assert "maxpool" in out and "layer4.1.conv2" in out
    assert main(["net", "simulate", "--procs", "3", "--dtype", "int8"]) == 2
    assert "requantisation" in capsys.readouterr().err
