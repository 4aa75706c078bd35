"""The planner for training passes: per-rank bytes of every pass against the runtime's
schedule, per-rank memory against the partition reference, the class-representative
maxima against every rank, the traffic-objective search against brute force, the
backward kernels' workspace formulas against tracemalloc, the fixed strategies of a
training step and the CLI."""

from __future__ import annotations

import json
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

from parconv.cli import main
from parconv.dtypes import PRESETS
from parconv.kernels.backward import (
    dgrad_window,
    dgrad_workspace_bytes,
    training_accumulator,
    wgrad_window,
    wgrad_workspace_bytes,
)
from parconv.layers import layer
from parconv.passes import training_precision
from parconv.planner.adjoint import pass_operations
from parconv.planner.partition import Grid, rank_memory_bytes
from parconv.planner.plan import (
    _all_indices,
    _first_rank_traffic,
    _memory_bits,
    _objective_floor,
    _pass_volumes,
    _totals,
    candidate_grids,
    max_rank_memory_bytes,
    max_rank_recv_bytes,
    max_rank_traffic_bytes,
    plan,
    plan_for_grid,
    total_recv_bytes,
)
from parconv.planner.schedule import build_schedule
from parconv.planner.strategies import data_parallel_training, fixed_strategy
from parconv.spec import ConvSpec

PASS_KEEP = [("forward", True), ("dgrad", True), ("wgrad", True), ("step", True),
             ("step", False)]
TRAIN = [training_precision(n).forward_precision for n in ("fp32", "bf16", "fp16", "fp64")]


def _random_case(rng, max_procs: int = 72):
    while True:
        ker = rng.integers(1, 5, 2)
        stride, dil = rng.integers(1, 4, 2), rng.integers(1, 3, 2)
        pad = rng.integers(0, 3, 2)
        insz = rng.integers(4, 30, 2)
        try:
            spec = ConvSpec(int(rng.integers(1, 12)), int(rng.integers(1, 14)),
                            int(rng.integers(1, 14)), tuple(insz), tuple(ker), tuple(stride),
                            tuple(pad), tuple(dil), TRAIN[int(rng.integers(0, len(TRAIN)))])
        except ValueError:
            continue
        lim = [spec.B, spec.K, spec.C, spec.H, spec.W]
        grid = Grid(*(int(rng.integers(1, min(n, 5) + 1)) for n in lim))
        if grid.size <= max_procs:
            return spec, grid


def test_every_rank_every_pass_equals_schedule_and_partition():
    """Per rank and operation: the planner's bytes == the runtime schedule's; memory ==
    the partition reference; the class maxima and closed-form totals == brute force."""
    rng = np.random.default_rng(3)
    for _ in range(14):
        spec, grid = _random_case(rng, 36)
        scheds = [build_schedule(spec, grid, r) for r in range(grid.size)]
        for pass_, keep in PASS_KEEP:
            pl = plan_for_grid(spec, grid, pass_=pass_, keep_window=keep)
            v = pl.rank_volumes()
            assert pl.max_rank_traffic_bytes == int((v["recv_bytes"] + v["send_bytes"]).max())
            assert pl.operations == pass_operations(pass_, keep)
            for r, s in enumerate(scheds):
                want = s.pass_volume(pass_, keep)
                got = {op: (int(v[op + ".recv"][r]), int(v[op + ".send"][r]))
                       for op in pl.operations}
                assert got == want, (spec, grid, pass_, r)
                assert int(v["memory_bytes"][r]) == rank_memory_bytes(spec, grid, r, pass_, keep)
            traffic = v["recv_bytes"] + v["send_bytes"]
            assert pl.max_rank_recv_bytes == int(v["recv_bytes"].max())
            assert pl.max_rank_traffic_bytes == int(traffic.max())
            assert pl.max_rank_memory_bytes == int(v["memory_bytes"].max())
            assert pl.total_recv_bytes == int(v["recv_bytes"].sum()) == int(v["send_bytes"].sum())


def test_class_representatives_exact_on_many_random_cases():
    """Maxima over the class representatives == maxima over all ranks (vectorised
    arrays, tied to the schedule above), for every pass, on many grids; includes
    filter rows split unevenly over the b·h·w fiber (kf varies inside a class)."""
    rng = np.random.default_rng(11)
    uneven = 0
    for _ in range(100):
        spec, grid = _random_case(rng)
        q = grid.b * grid.h * grid.w
        uneven += (spec.K // grid.k) % q != 0 and q > 1
        idx = _all_indices(grid)
        for pass_, keep in PASS_KEEP:
            vol = _pass_volumes(spec, grid, idx, pass_, keep)
            recv = sum(np.broadcast_to(r, grid.dims) for r, _ in vol.values())
            send = sum(np.broadcast_to(s, grid.dims) for _, s in vol.values())
            mem = _memory_bits(spec, grid, idx, pass_, keep) // 8
            assert max_rank_traffic_bytes(spec, grid, pass_, keep) == int((recv + send).max())
            assert max_rank_recv_bytes(spec, grid, pass_, keep) == int(recv.max())
            assert max_rank_memory_bytes(spec, grid, pass_, keep) == int(mem.max())
    assert uneven > 15


def test_search_floor_is_rank_zero_and_a_lower_bound():
    """The closed-form floor of the search: rank 0's exact traffic (== the per-rank
    arrays) and never above the busiest rank's, for every pass and many grids."""
    rng = np.random.default_rng(5)
    for _ in range(25):
        spec, grid = _random_case(rng)
        dims = np.array([g.dims for g in candidate_grids(spec, grid.size)], dtype=np.int64)
        for pass_, keep in PASS_KEEP:
            tot = _totals(spec, dims, pass_, keep)
            floor = _objective_floor(spec, dims, tot, grid.size, pass_, keep)
            first = _first_rank_traffic(spec, dims, pass_, keep)
            for i, d in enumerate(dims[:6]):
                g = Grid(*(int(v) for v in d))
                v = plan_for_grid(spec, g, pass_=pass_, keep_window=keep).rank_volumes() \
                    if i == 0 else None
                if v is not None:
                    assert int(first[i]) == int(v["recv_bytes"][0] + v["send_bytes"][0])
                assert floor[i] <= max_rank_traffic_bytes(spec, g, pass_, keep)


def test_backward_recv_needs_the_first_rank_of_a_class():
    """The busiest rank by received wgrad bytes is the *first* index of its class: the
    dF reduce-scatter (adjoint of the filter allgather) receives (q-1)·kf rows, most where
    kf is largest. The forward's largest-index representatives would miss it."""
    spec = ConvSpec(4, 3, 7, (6, 6), 1, 1, 0, precision=TRAIN[0])
    grid = Grid(4, 1, 1, 1, 1)            # 7 filter rows over q = 4: kf = 2, 2, 2, 1
    v = plan_for_grid(spec, grid, pass_="wgrad").rank_volumes()
    # wgrad's dF reduce-scatter receives (q-1)·kf rows: most at rank 0, the first index
    assert int(np.argmax(v["recv_bytes"])) == 0
    assert max_rank_recv_bytes(spec, grid, "wgrad") == int(v["recv_bytes"].max())


@pytest.mark.parametrize("pass_", ["forward", "dgrad", "wgrad", "step"])
def test_search_is_the_exhaustive_traffic_optimum(pass_):
    for spec, procs in [(ConvSpec(3, 5, 7, (11, 9), 3, 1, 1, precision=TRAIN[0]), 6),
                        (ConvSpec(2, 4, 6, (13, 10), (3, 2), 2, (1, 0), (1, 2),
                                  precision=TRAIN[1]), 12),
                        (layer("resnet50/layer1.0.conv2", 4, TRAIN[0]), 16)]:
        pl = plan(spec, procs, pass_=pass_)
        keys = [(max_rank_traffic_bytes(spec, g, pass_), total_recv_bytes(spec, g, pass_), g)
                for g in candidate_grids(spec, procs)]
        best = min(k[:2] for k in keys)
        assert (pl.max_rank_traffic_bytes, pl.total_recv_bytes) == best
        assert pl.grid in [g for m, t, g in keys if (m, t) == best]


def test_traffic_objective_beats_recv_objective_at_scale():
    """The received-only objective picked grids where a few ranks send a whole filter
    row to the whole b·h·w fiber; the traffic objective's busiest rank is never worse and
    here far better."""
    spec = layer("resnet50/layer4.0.conv2", 32, PRESETS["fp32"])
    pl = plan(spec, 4096)
    recv_best = min(candidate_grids(spec, 4096), key=lambda g: (max_rank_recv_bytes(spec, g),
                                                                total_recv_bytes(spec, g)))
    assert pl.max_rank_traffic_bytes <= max_rank_traffic_bytes(spec, recv_best)
    assert pl.ratio_to_bound < 3


def test_memory_limit_and_step_memory_larger_than_forward():
    spec = layer("resnet50/layer3.1.conv2", 8, TRAIN[0])
    g = Grid(2, 1, 2, 1, 1)
    fwd = max_rank_memory_bytes(spec, g)
    step = max_rank_memory_bytes(spec, g, "step")
    step_nokeep = max_rank_memory_bytes(spec, g, "step", keep_window=False)
    assert step > fwd and step_nokeep <= step
    assert max_rank_traffic_bytes(spec, g, "step", False) >= max_rank_traffic_bytes(spec, g, "step")
    need = plan(spec, 8, pass_="step").max_rank_memory_bytes
    with pytest.raises(ValueError, match="least memory"):
        plan(spec, 8, 1000, pass_="step")
    assert plan(spec, 8, need, pass_="step").max_rank_memory_bytes <= need


def test_integer_training_refused():
    spec = ConvSpec(2, 4, 4, (8, 8), 3, 1, 1, precision=PRESETS["int8"])
    for p in ("dgrad", "wgrad", "step"):
        with pytest.raises(ValueError, match="integer training"):
            plan(spec, 4, pass_=p)
    assert plan(spec, 4).pass_ == "forward"


def test_step_bound_fields():
    spec = layer("resnet50/layer2.0.conv2", 32, TRAIN[1])
    pl = plan(spec, 64, pass_="step")
    assert pl.lower_bound_bytes and pl.ratio_to_bound >= 1
    sep = pl.bound["separate"]
    parts = sep["per_pass_max_rank_traffic_bytes"]
    assert sep["separate_sum_bytes"] == sum(parts.values())
    assert parts["dgrad"] == max_rank_traffic_bytes(spec, pl.grid, "dgrad")
    assert sep["ratio"] >= 1 and sep["bytes"] >= pl.lower_bound_bytes
    for p in ("forward", "dgrad", "wgrad"):
        one = plan(spec, 64, pass_=p)
        assert one.ratio_to_bound >= 1


# ------------------------------------------------------------------ fixed strategies


def test_data_parallel_training_exact_allreduce():
    spec = ConvSpec(6, 5, 7, (9, 9), 3, 1, 1, precision=TRAIN[1])
    res = data_parallel_training(spec, 3, pass_="step")
    K, crs = spec.K, spec.C * spec.R * spec.S
    pa = 4
    worst = 0
    for f in range(3):             # rank f owns filter-gradient rows kf of the allreduce
        kf = K // 3 + (f < K % 3)
        rs = (2 * kf * crs * pa, (K - kf) * crs * pa)           # reduce-scatter recv, send
        ag = ((K - kf) * crs * pa, 2 * kf * crs * pa)           # allgather recv, send
        worst = max(worst, sum(rs) + sum(ag))
    assert res.max_rank_traffic_bytes == worst
    assert res.grid == {"b": 3, "k": 1, "c": 1, "h": 1, "w": 1}
    assert data_parallel_training(spec, 12, pass_="step") is None      # P > B
    sp = fixed_strategy("spatial_only", spec, 3, pass_="step")
    assert sp.grid["h"] * sp.grid["w"] == 3


# ------------------------------------------------------------------ kernels' workspace

WS_CASES = [((2, 8, 10, 10), (4, 8, 3, 3), np.float32, 1),
            ((3, 16, 20, 20), (8, 16, 1, 1), np.float32, 1),
            ((2, 6, 21, 21), (5, 6, 3, 3), np.float32, 2),
            ((2, 6, 21, 21), (5, 6, 3, 3), ml_dtypes.bfloat16, 2),
            ((2, 6, 20, 20), (5, 6, 3, 3), ml_dtypes.bfloat16, 1),
            ((1, 4, 40, 40), (3, 4, 1, 1), np.float64, 1),
            ((3, 5, 9, 9), (1, 5, 1, 1), np.float32, 1)]


@pytest.mark.parametrize("xs,ws,dt,st", WS_CASES)
def test_backward_workspace_formulas(xs, ws, dt, st, warm_numba):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(xs).astype(dt), rng.standard_normal(ws).astype(dt)
    R, S = ws[2:]
    H, W = (xs[2] - R) // st + 1, (xs[3] - S) // st + 1
    g = rng.standard_normal((xs[0], ws[0], H, W)).astype(dt)
    acc = training_accumulator(dt, dt)
    direct = R == S == 1 and st == 1 and np.dtype(dt) == acc and H * W >= 256
    args = (xs[0], ws[0], xs[1], H, W, R, S, xs[2], xs[3])
    for which in ("wgrad", "dgrad"):
        for _ in range(2):          # the first call compiles
            out = np.zeros(ws if which == "wgrad" else xs, acc)
            tracemalloc.start()
            start = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            if which == "wgrad":
                wgrad_window(x, g, out, st, 1, (0, 0))
            else:
                dgrad_window(g, w, out, st, 1, (0, 0))
            peak = tracemalloc.get_traced_memory()[1] - start
            tracemalloc.stop()
        pred = int(wgrad_workspace_bytes(*args, dt, dt, direct) if which == "wgrad"
                   else dgrad_workspace_bytes(*args, st, dt, dt, direct))
        assert pred <= peak <= pred + 8192, (which, peak, pred)


# ------------------------------------------------------------------ CLI


def test_cli_plan_pass_step_json_and_table(capsys):
    assert main(["plan", "--layer", "resnet50/layer3.1.conv2", "--batch", "8", "--procs", "6",
                 "--pass", "step", "--dtype", "bf16", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["pass"] == "step" and d["layer"]["precision"]["output"] == "bfloat16"
    assert d["operations"] == list(pass_operations("step"))
    r0 = d["ranks"][0]
    assert r0["recv_bytes"] == sum(o["recv_bytes"] for o in r0["operations"].values())
    assert "data_parallel_training" in d["strategies_traffic"]
    assert d["best_fixed_over_planned"] >= 1
    assert main(["plan", "--layer", "resnet50/layer3.1.conv2", "--batch", "8", "--procs", "6",
                 "--pass", "step"]) == 0
    out = capsys.readouterr().out
    assert "data_parallel_training" in out and "best fixed" in out and "separate" in out


def test_cli_integer_training_refused(capsys):
    for cmd in ("plan", "simulate"):
        rc = main([cmd, "--procs", "4", "--pass", "dgrad", "--dtype", "int8"])
        assert rc == 2
        assert "integer training is not supported" in capsys.readouterr().err


def test_cli_simulate_pass(capsys):
    assert main(["simulate", "--layer", "resnet50/layer1.0.conv2", "--batch", "2", "--grid",
                 "1x2x1x3x1", "--pass", "step", "--json", "--quiet"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["pass"] == "step" and d["matches_plan"] and d["consistent"]
    assert list(d["ranks"][0]["operations"]) == list(pass_operations("step"))
    assert main(["simulate", "--layer", "resnet50/layer1.0.conv2", "--batch", "2", "--grid",
                 "1x2x1x3x1", "--pass", "wgrad", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "grad_filter_reduce_scatter" in out and "pass    wgrad" in out


def test_step_memory_independent_bounds_equal_step_bounds():
    from parconv.bounds import step_bounds, step_memory_independent_bounds

    for name in ("resnet50/conv1", "resnet50/layer2.0.conv2", "resnet50/layer4.2.conv3"):
        spec = layer(name, 32, TRAIN[1])
        for procs in (8, 512):
            full = step_bounds(spec, procs)
            fast = step_memory_independent_bounds(spec, procs)
            for cls in ("keep", "separate"):
                assert fast[cls].bits == full[cls]["parallel_memory_independent"].bits
