"""The network plan: DP optimal over its candidates (brute force), exact charges, never
worse than the baselines, CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from parconv.bounds import parallel_memory_independent_bound
from parconv.cli import main
from parconv.dtypes import PRESETS
from parconv.network.graph import Graph
from parconv.network.layout import Placement
from parconv.network.models import build
from parconv.network.plan import _Planner, plan_fixed, plan_network
from parconv.planner.partition import Grid
from parconv.planner.plan import candidate_grids, plan_for_grid


def _tiny(concat: bool = False) -> Graph:
    g = Graph("tiny")
    x = g.input("x", (3, 12, 12))
    a = g.relu("relu1", g.conv("conv1", x, 8, 3, 2, 1, bn="bn1"))
    p = g.maxpool("pool", a, 3, 2, 1, ceil_mode=True)
    b = g.relu("relu2", g.conv("conv2", p, 8, 3, 1, 1))
    c = g.conv("conv3", b, 8, 1)
    d = g.relu("relu3", g.concat("cat", c, p) if concat else g.add("add", c, p))
    g.fc("fc", g.flatten("flatten", g.global_avgpool("avgpool", d)), 5)
    return g


def _brute(src, dst):
    a, b = src.owner_array().ravel(), dst.owner_array().ravel()
    moved = a != b
    return (np.bincount(a[moved], minlength=src.procs), np.bincount(b[moved],
                                                                    minlength=src.procs))


def _check_charges(plan, graph):
    """Every charge of a plan recomputed independently."""
    act = plan.precision.p_input // 8
    for lp in plan.layers:
        node = graph[lp.name]
        if node.is_conv:
            v = plan_for_grid(lp.spec, lp.placement.grid).rank_volumes()
            assert lp.layer_bytes == (v["recv_bytes"] + v["send_bytes"]).max()
            bd = parallel_memory_independent_bound(lp.spec, plan.procs)
            assert lp.bound_bytes == (0.0 if bd.vacuous else bd.bytes)
        else:
            assert lp.bound_bytes == 0
        total = 0
        for r in lp.redistributions.values():
            send, recv = _brute(r.src, r.dst)
            assert np.array_equal(r.send_elems, send) and np.array_equal(r.recv_elems, recv)
            assert r.elem_bytes == act
            total += int((send + recv).max()) * act
        assert lp.redistribution_bytes == total
        assert lp.layer_bytes == lp.step.max_rank_traffic_bytes
        for x, lay in zip(node.inputs, lp.in_layouts):
            if x not in lp.redistributions and graph[x].op != "input":
                prod = plan.layer(x).out_layout
                assert prod == lay                 # nothing charged: the layouts agree
    assert plan.total_bytes == sum(lp.layer_bytes + lp.redistribution_bytes
                                   for lp in plan.layers)


@pytest.mark.parametrize("procs", [3, 4])
def test_dp_is_optimal_over_its_candidates(procs):
    g = _tiny()
    pl = _Planner(g, 4, PRESETS["fp32"], procs)
    rng = np.random.default_rng(procs)
    cands = {}
    for n in pl.specs:
        grids = candidate_grids(pl.specs[n], procs)
        pick = rng.choice(len(grids), size=min(3, len(grids)), replace=False)
        cands[n] = [Placement(grids[int(i)]) for i in pick]
        cands[n].append(cands[n][0].transposed() if pl.specs[n].C >= cands[n][0].grid.k
                        and pl.specs[n].K >= cands[n][0].grid.c else cands[n][0])
        cands[n] = list(dict.fromkeys(p for p in cands[n]
                                      if p.grid.c <= pl.specs[n].C and p.grid.k <= pl.specs[n].K))
    cost, dec = pl.solve(cands)
    best = None
    names = list(cands)
    for combo in itertools.product(*(cands[n] for n in names)):
        for add in (0, 1):
            d = dict(zip(names, combo))
            d["add"] = add
            c = sum(lp.total_bytes for lp in pl.evaluate(d))
            best = c if best is None else min(best, c)
    assert cost == best
    assert sum(lp.total_bytes for lp in pl.evaluate(dec)) == cost


@pytest.mark.parametrize("concat", [False, True])
def test_plan_charges_are_exact(concat):
    g = _tiny(concat)
    for procs in (2, 3, 5):
        plan = plan_network(g, 4, procs)
        _check_charges(plan, g)
        conv_p = {lp.name: lp.placement for lp in plan.layers if lp.placement}
        fixed = plan_fixed(g, 4, procs, conv_p)
        assert fixed.total_bytes == plan.total_bytes


@pytest.mark.parametrize("procs", [2, 3, 4])
def test_never_worse_than_the_baselines(procs):
    g = build("resnet18", 32)
    for dtype in ("fp32", "int8"):
        plan = plan_network(g, 4, procs, PRESETS[dtype])
        b = plan.baselines
        assert b["data_parallel"] is not None
        for k in ("own_best", "one_grid", "data_parallel", "spatial_only"):
            assert plan.total_bytes <= b[k], k
        narrow = plan_network(g, 4, procs, PRESETS[dtype], own=1, neighbours=0, beam=1)
        for k in ("own_best", "one_grid", "data_parallel", "spatial_only"):
            assert narrow.total_bytes <= narrow.baselines[k], k
        assert plan.total_bytes >= plan.bound_bytes
    _check_charges(plan, g)


def test_data_parallel_moves_no_activations_and_baselines_match_fixed_plans():
    g = build("resnet18", 32)
    dp = plan_fixed(g, 4, 4, {n.name: Grid(4, 1, 1, 1, 1) for n in g.conv_nodes()})
    assert dp.redistribution_bytes == 0
    assert all(lp.layer_bytes == 0 for lp in dp.layers if not lp.placement)
    plan = plan_network(g, 4, 4)
    assert plan.baselines["data_parallel"] == dp.total_bytes
    one = Grid.parse(plan.baselines["one_grid_grid"])
    assert plan.baselines["one_grid"] == plan_fixed(
        g, 4, 4, {n.name: one for n in g.conv_nodes()}).total_bytes
    with pytest.raises(ValueError, match="no placement"):
        plan_fixed(g, 4, 4, {})


def test_refusals():
    g = build("resnet18", 32)
    with pytest.raises(ValueError, match="procs"):
        plan_network(g, 4, 0)
    with pytest.raises(ValueError, match="no grid"):
        plan_network(g, 1, 1009)                    # a prime above every dimension
    h = Graph("bad")
    h.fc("fc", h.flatten("f", h.relu("r", h.input("x", (3, 4, 4)))), 2)
    with pytest.raises(ValueError, match="network input"):
        plan_network(h, 2, 2)


def test_cli_net_plan(tmp_path, capsys):
    assert main(["net", "plan", "--model", "resnet18", "--batch", "4", "--image", "32,32",
                 "--procs", "3"]) == 0
    out = capsys.readouterr().out
    assert "layer4.1.conv2" in out and "sum of bounds" in out and "baseline one_grid" in out
    f = tmp_path / "p.json"
    assert main(["net", "plan", "--model", "alexnet", "--batch", "2", "--image", "96,96",
                 "--procs", "4", "--dtype", "int8", "--json", str(f)]) == 0
    d = json.loads(f.read_text())
    assert d["procs"] == 4 and d["precision"].startswith("int8")
    assert d["total_bytes"] == sum(x["layer_bytes"] + x["redistribution_bytes"]
                                   for x in d["layers"])
    assert {x["name"] for x in d["layers"]} >= {"features.0", "classifier.6", "avgpool"}
    assert main(["net", "plan", "--model", "resnet18", "--procs", "0"]) == 2
    assert "procs" in capsys.readouterr().err
