"""Fixed strategies: family restrictions, optimality within the family, infeasibility,
and the im2col + 3-D matmul accounting (ownership partitions, exact class maximum)."""

import itertools

import numpy as np
import pytest

from parconv.dtypes import PRESETS
from parconv.layers import layer
from parconv.planner.partition import GRID_AXES
from parconv.planner.plan import candidate_grids, max_rank_recv_bytes, max_rank_traffic_bytes, plan
from parconv.planner.strategies import (
    FAMILIES,
    _matmul_classes,
    all_strategies,
    best_fixed,
    fixed_strategy,
    matmul_shape,
    matmul_total_recv_bytes,
    matmul_volumes,
)
from parconv.spec import ConvSpec

SPEC = ConvSpec(6, 5, 8, (10, 9), (3, 3), 1, 1, precision=PRESETS["int8"])
L31 = layer("resnet50/layer3.1.conv2", 8, PRESETS["fp32"])


@pytest.mark.parametrize("name", [n for n, a in FAMILIES.items() if a is not None])
@pytest.mark.parametrize("spec,procs", [(SPEC, 6), (SPEC, 12), (L31, 16), (L31, 3)])
def test_grid_families_are_exhaustive_optimum(name, spec, procs):
    res = fixed_strategy(name, spec, procs)
    axes = FAMILIES[name]
    fam = [g for g in candidate_grids(spec, procs)
           if all(getattr(g, a) == 1 for a in GRID_AXES if a not in axes)]
    if not fam:
        assert res is None
        return
    assert all(v == 1 for a, v in res.grid.items() if a not in axes)
    # the planner's objective: the busiest rank's received + sent bytes
    assert res.max_rank_traffic_bytes == min(max_rank_traffic_bytes(spec, g) for g in fam)
    g = next(g for g in fam if g.as_dict() == res.grid)
    assert res.max_rank_recv_bytes == max_rank_recv_bytes(spec, g)


def test_infeasible_families_are_none():
    spec = ConvSpec(4, 3, 2, (5, 5), (3, 3))   # B=4 C=3 K=2 H=W=3
    got = all_strategies(spec, 8)
    assert got["batch_only"] is None                    # P > B
    assert got["spatial_only"] is None                  # 8 = h·w needs a factor > 3
    assert got["channel_filter"] is None                # k ≤ 2, c ≤ 3: k·c ≤ 6 < 8
    assert got["batch_spatial"] is not None
    assert fixed_strategy("batch_only", spec, 4).grid == {"b": 4, "k": 1, "c": 1, "h": 1, "w": 1}
    with pytest.raises(ValueError, match="unknown strategy"):
        fixed_strategy("magic", spec, 4)


@pytest.mark.parametrize("procs", [4, 8, 64])
def test_planner_never_worse_than_grid_strategies(procs):
    spec = layer("resnet50/layer2.0.conv2", 32, PRESETS["int8"])
    pl = plan(spec, procs)
    strat = all_strategies(spec, procs)
    for name, r in strat.items():
        if r is not None and FAMILIES[name] is not None:
            assert pl.max_rank_traffic_bytes <= r.max_rank_traffic_bytes
    assert best_fixed(strat).max_rank_traffic_bytes == min(
        r.max_rank_traffic_bytes for r in strat.values() if r is not None)


def _ownership(n, p, i):
    q, rem = divmod(n, p)
    lo = i * q + min(i, rem)
    return lo, lo + q + (i < rem)


def _simulate_matmul(spec, pm, pn, pk):
    """Element-level simulation: explicit block element sets and owners; per-rank
    received bytes are the block elements it needs but does not hold, sent bytes the
    elements it holds that others need (A, B) or partials it does not own (C)."""
    m, n, k = matmul_shape(spec)
    p = spec.precision
    mb = [_ownership(m, pm, i) for i in range(pm)]
    nb = [_ownership(n, pn, j) for j in range(pn)]
    kb = [_ownership(k, pk, l_) for l_ in range(pk)]
    own_a = -np.ones((m, k), int)
    own_b = -np.ones((k, n), int)
    own_c = -np.ones((m, n), int)
    rank = {c: r for r, c in enumerate(itertools.product(range(pm), range(pn), range(pk)))}
    for (i, j, l_), r in rank.items():
        # A block (i, l_) flattened row-major, part j of it belongs to (i, j, l_)
        a_el = [(x, y) for x in range(*mb[i]) for y in range(*kb[l_])]
        lo, hi = _ownership(len(a_el), pn, j)
        for x, y in a_el[lo:hi]:
            assert own_a[x, y] == -1
            own_a[x, y] = r
        b_el = [(x, y) for x in range(*kb[l_]) for y in range(*nb[j])]
        lo, hi = _ownership(len(b_el), pm, i)
        for x, y in b_el[lo:hi]:
            assert own_b[x, y] == -1
            own_b[x, y] = r
        c_el = [(x, y) for x in range(*mb[i]) for y in range(*nb[j])]
        lo, hi = _ownership(len(c_el), pk, l_)
        for x, y in c_el[lo:hi]:
            assert own_c[x, y] == -1
            own_c[x, y] = r
    assert (own_a >= 0).all() and (own_b >= 0).all() and (own_c >= 0).all()   # partitions
    recv = np.zeros(len(rank), int)
    send = np.zeros(len(rank), int)
    for (i, j, l_), r in rank.items():
        a = own_a[mb[i][0]:mb[i][1], kb[l_][0]:kb[l_][1]]
        b = own_b[kb[l_][0]:kb[l_][1], nb[j][0]:nb[j][1]]
        recv[r] += p.p_filter // 8 * int((a != r).sum()) + p.p_input // 8 * int((b != r).sum())
        for arr, owner in ((a, own_a), (b, own_b)):   # each element needed here comes from its owner
            width = p.p_filter // 8 if owner is own_a else p.p_input // 8
            for o in arr[arr != r].ravel():
                send[o] += width
        # reduce-scatter: each owned C element arrives from the pk - 1 other partial holders
        c = own_c[mb[i][0]:mb[i][1], nb[j][0]:nb[j][1]]
        recv[r] += p.p_accum // 8 * (pk - 1) * int((c == r).sum())
        send[r] += p.p_accum // 8 * int((c != r).sum())
    return recv, send


@pytest.mark.parametrize("spec,grid", [
    (ConvSpec(2, 3, 5, (4, 4), (2, 2), precision=PRESETS["int8"]), (2, 3, 2)),
    (ConvSpec(1, 2, 7, (5, 3), (3, 1), precision=PRESETS["fp32"]), (3, 1, 2)),
    (ConvSpec(3, 1, 4, (3, 3), (1, 1), precision=PRESETS["bf16"]), (1, 6, 1)),
    (ConvSpec(2, 4, 3, (4, 3), (2, 2), 1, 1, precision=PRESETS["fp64"]), (3, 2, 5)),
])
def test_matmul_volumes_match_element_simulation(spec, grid):
    vol = matmul_volumes(spec, *grid)
    got = vol["total"].ravel()
    recv, send = _simulate_matmul(spec, *grid)
    np.testing.assert_array_equal(got, recv)
    np.testing.assert_array_equal(vol["send"].ravel(), send)
    np.testing.assert_array_equal(vol["traffic"].ravel(), recv + send)
    assert matmul_total_recv_bytes(spec, *grid) == int(got.sum())


def test_matmul_class_maximum_is_exact():
    rng = np.random.default_rng(3)
    for _ in range(200):
        spec = ConvSpec(int(rng.integers(1, 9)), int(rng.integers(1, 30)), int(rng.integers(1, 30)),
                        int(rng.integers(3, 12)), int(rng.integers(1, 4)))
        m, n, k = matmul_shape(spec)
        pm, pn, pk = (int(rng.integers(1, min(v, 12) + 1)) for v in (m, n, k))
        full = matmul_volumes(spec, pm, pn, pk)
        cls = matmul_volumes(spec, pm, pn, pk, _matmul_classes(spec, pm, pn, pk))
        assert int(cls["total"].max()) == int(full["total"].max())
        assert int(cls["memory"].max()) == int(full["memory"].max())
        assert int(cls["traffic"].max()) == int(full["traffic"].max())


def test_im2col_strategy_is_best_matmul_grid():
    spec = ConvSpec(4, 6, 10, (6, 6), (3, 3), 1, 1, precision=PRESETS["int8"])
    res = fixed_strategy("im2col_matmul", spec, 12)
    m, n, k = matmul_shape(spec)
    best = min(int(matmul_volumes(spec, a, b, 12 // a // b)["total"].max())
               for a in range(1, 13) for b in range(1, 13)
               if 12 % (a * b) == 0 and a <= m and b <= n and 12 // a // b <= k)
    assert res.max_rank_recv_bytes == best
    g = res.grid
    assert res.max_rank_traffic_bytes == int(matmul_volumes(spec, g["m"], g["n"], g["k"])["traffic"].max())
    assert res.grid["m"] * res.grid["n"] * res.grid["k"] == 12
    # a memory limit below every grid's need makes it infeasible
    assert fixed_strategy("im2col_matmul", spec, 12, memory_bytes=16) is None
