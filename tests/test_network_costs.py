"""Per-layer byte models of the network plan against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from parconv.network import costs
from parconv.network.graph import adaptive_windows, pool_windows
from parconv.network.layout import Placement, conv_input_layout, conv_output_layout
from parconv.planner.partition import Grid
from parconv.planner.plan import candidate_grids, plan_for_grid
from parconv.spec import ConvSpec


def _rank_masks(lay):
    own = lay.owner_array()
    return [own == r for r in range(lay.procs)]


def _brute_window(src, windows, out_lay):
    """recv/send elements of a window op by explicit sets."""
    p = src.procs
    own = _rank_masks(src)
    need = []
    for r in range(p):
        ib, ic, ih, iw = src.indices(r)
        _, _, oh, ow = out_lay.indices(r)
        rows = np.zeros(src.shape[2], bool)
        cols = np.zeros(src.shape[3], bool)
        for o in oh:
            rows[windows[0][o, 0]:windows[0][o, 1]] = True
        for o in ow:
            cols[windows[1][o, 0]:windows[1][o, 1]] = True
        m = np.zeros(src.shape, bool)
        m[np.ix_(ib, ic, np.flatnonzero(rows), np.flatnonzero(cols))] = True
        need.append(m)
    recv = np.array([(need[r] & ~own[r]).sum() for r in range(p)])
    send = np.array([sum((need[q] & own[r]).sum() for q in range(p) if q != r)
                     for r in range(p)])
    return recv, send


def test_window_cost_exact_against_brute_force():
    rng = np.random.default_rng(3)
    done = 0
    while done < 40:
        b, c, h, w = (int(rng.integers(1, 5)), int(rng.integers(1, 7)), int(rng.integers(2, 13)),
                      int(rng.integers(2, 13)))
        procs = int(rng.choice([1, 2, 3, 4, 5, 6, 8]))
        prod = ConvSpec(b, 2, c, (h, w), 1)
        grids = candidate_grids(prod, procs)
        if not grids:
            continue
        src = conv_output_layout(prod, Placement(grids[int(rng.integers(len(grids)))]))
        if rng.random() < 0.3:
            o = (int(rng.integers(1, h + 2)), int(rng.integers(1, w + 2)))
            win = (adaptive_windows(h, o[0]), adaptive_windows(w, o[1]))
        else:
            k = int(rng.integers(1, min(h, w) + 1))
            s, pad, cm = int(rng.integers(1, 4)), int(rng.integers(0, k // 2 + 1)), bool(
                rng.integers(2))
            win = (pool_windows(h, k, s, pad, cm), pool_windows(w, k, s, pad, cm))
        eb = int(rng.choice([1, 4]))
        out, step = costs.window_cost(src, win, eb)
        assert out.is_partition() and out.shape == (b, c, len(win[0]), len(win[1]))
        recv, send = _brute_window(src, win, out)
        assert np.array_equal(step.recv, recv * eb) and np.array_equal(step.send, send * eb)
        done += 1


def test_reduce_hw_cost_exact_against_brute_force():
    rng = np.random.default_rng(4)
    for _ in range(25):
        b, c, h, w = (int(rng.integers(1, 5)), int(rng.integers(1, 9)), int(rng.integers(1, 6)),
                      int(rng.integers(1, 6)))
        procs = int(rng.choice([1, 2, 3, 4, 6]))
        spec = ConvSpec(b, 2, c, (h, w), 1)
        grids = candidate_grids(spec, procs)
        if not grids:
            continue
        src = conv_output_layout(spec, grids[int(rng.integers(len(grids)))])
        from parconv.network.layout import reduce_hw_layout

        out = reduce_hw_layout(src)
        step = costs.reduce_hw_cost(src, 4)
        recv = np.zeros(procs, np.int64)
        send = np.zeros(procs, np.int64)
        owner = out.owner_array()[:, :, 0, 0]
        for r in range(procs):                  # r holds partial sums of its (b, c) block
            ib, ic, _, _ = src.indices(r)
            for bb in ib:
                for cc in ic:
                    o = owner[bb, cc]
                    if o != r:
                        send[r] += 1
                        recv[o] += 1
        assert np.array_equal(step.recv, recv * 4) and np.array_equal(step.send, send * 4)


def test_conv_traffic_equals_the_planner_per_rank_volumes():
    rng = np.random.default_rng(5)
    n = 0
    while n < 60:
        spec = ConvSpec(int(rng.integers(1, 9)), int(rng.integers(1, 13)),
                        int(rng.integers(1, 13)), (int(rng.integers(3, 15)),
                                                   int(rng.integers(3, 15))),
                        int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(0, 2)))
        grids = candidate_grids(spec, int(rng.choice([2, 3, 4, 6, 8, 12, 16, 30])))
        if not grids:
            continue
        g = grids[int(rng.integers(len(grids)))]
        v = plan_for_grid(spec, g).rank_volumes()
        traffic = v["recv_bytes"] + v["send_bytes"]
        assert costs._max_traffic(spec, g) == traffic.max()      # the class argument
        assert costs.conv_max_traffic(spec, g) == traffic.max()
        order = ("h", "c", "b", "w", "k")
        pl = Placement(g, order)
        step = costs.conv_cost(spec, pl)
        world = pl.world_ranks().ravel()
        assert np.array_equal(step.recv[world], v["recv_bytes"])
        assert np.array_equal(step.send[world], v["send_bytes"])
        n += 1


def test_best_grids_are_the_true_best_by_traffic():
    for spec, procs in [(ConvSpec(8, 16, 32, (14, 14), 3, padding=1), 16),
                        (ConvSpec(3, 5, 7, (9, 11), 3, 2, 1), 12),
                        (ConvSpec(32, 2048, 1000, (1, 1), 1), 64)]:
        allg = candidate_grids(spec, procs)
        tr = sorted(costs.conv_max_traffic(spec, g) for g in allg)
        got = costs.best_grids(spec, procs, 4)
        assert [t for _, t in got] == tr[:4]
        only = costs.best_grids(spec, procs, 1, ("b", "h", "w"))
        ref = [costs.conv_max_traffic(spec, g) for g in candidate_grids(spec, procs,
                                                                       ("b", "h", "w"))]
        assert (only[0][1] if only else None) == (min(ref) if ref else None)


def test_input_layout_of_a_conv_is_its_own_partition_block():
    spec = ConvSpec(4, 6, 8, (7, 7), 3, padding=1)
    lay = conv_input_layout(spec, Grid(2, 2, 1, 1, 1))
    assert lay.ranges(1) == ((0, 2), (3, 6), (0, 7), (0, 7))


@pytest.mark.parametrize("q", [1, 2])
def test_step_zero(q):
    z = costs.StepCost.zero(q)
    assert z.max_rank_traffic_bytes == 0 and z.max_rank_recv_bytes == 0
