"""Layouts and redistributions: agreement with parconv.planner.partition, exactly-once ownership,
per-rank bytes and messages against brute force over explicit owner arrays."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from parconv.network.layout import (
    Layout,
    Placement,
    conv_input_layout,
    conv_output_layout,
    flatten_layout,
    nested_owner,
    reduce_hw_layout,
)
from parconv.network.redistribute import max_rank_traffic_bytes, redistribute
from parconv.planner.partition import Grid, check_grid
from parconv.planner.plan import candidate_grids
from parconv.runtime.api import block_ranges
from parconv.spec import ConvSpec

ORDERS = [("b", "k", "c", "h", "w"), ("b", "c", "k", "h", "w"), ("w", "c", "b", "k", "h")]


def _explicit(shape, procs, ranges_of) -> np.ndarray:
    """Owner array from per-rank ranges; asserts every element is owned exactly once."""
    count = np.zeros(shape, np.int64)
    owner = np.full(shape, -1, np.int64)
    for r in range(procs):
        sl = tuple(slice(lo, hi) for lo, hi in ranges_of(r))
        count[sl] += 1
        owner[sl] = r
    assert (count == 1).all()
    return owner


def _random_spec(rng) -> ConvSpec:
    return ConvSpec(int(rng.integers(1, 7)), int(rng.integers(1, 11)), int(rng.integers(1, 11)),
                    (int(rng.integers(3, 12)), int(rng.integers(3, 12))), int(rng.integers(1, 4)),
                    int(rng.integers(1, 3)), int(rng.integers(0, 2)))


def test_conv_layouts_equal_partition_blocks_and_own_everything_once():
    rng = np.random.default_rng(1)
    checked = 0
    while checked < 40:
        spec = _random_spec(rng)
        grids = candidate_grids(spec, int(rng.choice([1, 2, 3, 4, 5, 6, 8, 12])))
        if not grids:
            continue
        g = grids[int(rng.integers(len(grids)))]
        for which, make in (("input", conv_input_layout), ("output", conv_output_layout)):
            lay = make(spec, g)
            assert lay.is_partition()
            ref = _explicit(lay.shape, g.size, lambda r, s=spec, gg=g, wh=which: block_ranges(s, gg, r, wh))
            assert np.array_equal(lay.owner_array(), ref)
            assert all(lay.ranges(r) == block_ranges(spec, g, r, which) for r in range(g.size))
            assert lay.owned_elems().sum() == np.prod(lay.shape)
        checked += 1


def test_placement_order_permutes_ranks_only():
    spec = ConvSpec(4, 6, 6, (5, 5), 3, padding=1)
    g = Grid(2, 3, 2, 1, 1)
    base = conv_output_layout(spec, g)
    for order in ORDERS:
        lay = conv_output_layout(spec, Placement(g, order))
        w5 = Placement(g, order).world_ranks()
        assert sorted(w5.ravel().tolist()) == list(range(12))
        # the element owned by grid rank r in the default order is owned by w5[coords(r)]
        assert np.array_equal(lay.owner_array(), w5.ravel()[base.owner_array()])
    # transposed placement: its input layout is the output layout (nothing moves)
    pl = Placement(g, ORDERS[2])
    assert conv_input_layout(spec, pl.transposed()) == conv_output_layout(spec, pl)
    assert not redistribute(conv_output_layout(spec, pl),
                            conv_input_layout(spec, pl.transposed()), 4).moves
    with pytest.raises(ValueError, match="permutation"):
        Placement(g, ("b", "k", "c", "h"))


def _brute(src: Layout, dst: Layout):
    a, b = src.owner_array().ravel(), dst.owner_array().ravel()
    p = src.procs
    moved = a != b
    send = np.bincount(a[moved], minlength=p)
    recv = np.bincount(b[moved], minlength=p)
    pairs = np.zeros((p, p), np.int64)
    np.add.at(pairs, (a[moved], b[moved]), 1)
    return send, recv, pairs


def _random_layout(spec, rng, procs, which):
    grids = candidate_grids(spec, procs)
    g = grids[int(rng.integers(len(grids)))]
    order = ORDERS[int(rng.integers(len(ORDERS)))]
    return (conv_input_layout if which == "input" else conv_output_layout)(
        spec, Placement(g, order))


def test_redistribution_exact_against_brute_force_random_grid_pairs():
    rng = np.random.default_rng(7)
    done = 0
    while done < 60:
        procs = int(rng.choice([2, 3, 4, 5, 6, 8, 12]))
        b, c, h, w = (int(rng.integers(1, 9)), int(rng.integers(1, 13)),
                      int(rng.integers(1, 10)), int(rng.integers(1, 10)))
        prod = ConvSpec(b, 3, c, (h, w), 1)             # producer output: (b, c, h, w)
        cons = ConvSpec(b, c, int(rng.integers(1, 9)), (h, w), 1)   # consumer input
        if not candidate_grids(prod, procs) or not candidate_grids(cons, procs):
            continue
        src = _random_layout(prod, rng, procs, "output")
        dst = _random_layout(cons, rng, procs, "input")
        if rng.random() < 0.2:                          # non-contiguous parts too
            src, dst = flatten_layout(src), flatten_layout(_random_layout(cons, rng, procs,
                                                                          "input"))
        send, recv, pairs = _brute(src, dst)
        eb = int(rng.choice([1, 2, 4]))
        r = redistribute(src, dst, eb)
        assert np.array_equal(r.send_elems, send) and np.array_equal(r.recv_elems, recv)
        assert r.max_rank_traffic_bytes == int((send + recv).max()) * eb
        assert max_rank_traffic_bytes(src, dst, eb) == r.max_rank_traffic_bytes
        assert r.total_bytes == int(send.sum()) * eb
        assert np.array_equal(r.kept_elems + r.send_elems, src.owned_elems())
        for rank in range(procs):
            m = r.messages(rank)
            assert m["send"] == {int(q): int(n) for q, n in enumerate(pairs[rank]) if n}
            assert m["recv"] == {int(q): int(n) for q, n in enumerate(pairs[:, rank]) if n}
            sc, rc = r.alltoallv_counts(rank)
            assert np.array_equal(sc, pairs[rank]) and np.array_equal(rc, pairs[:, rank])
        done += 1


def test_identical_layouts_move_nothing():
    spec = ConvSpec(8, 16, 16, (7, 7), 3, padding=1)
    for g in candidate_grids(spec, 8)[:20]:
        for make in (conv_input_layout, conv_output_layout):
            r = redistribute(make(spec, g), make(spec, g), 4)
            assert not r.moves and r.max_rank_traffic_bytes == 0
            assert all(not v for v in r.messages(3).values())
    # data-parallel layouts agree between any two layers on the same batch split
    a = conv_output_layout(ConvSpec(8, 3, 16, (7, 7), 1), Grid(4, 1, 1, 1, 1))
    b = conv_input_layout(ConvSpec(8, 16, 5, (7, 7), 3), Grid(4, 1, 1, 1, 1))
    assert a == b and not redistribute(a, b, 4).moves


def test_redistribution_refuses_mismatches_and_scales_to_4096_ranks():
    a = conv_output_layout(ConvSpec(4, 3, 8, (6, 6), 1), Grid(2, 2, 1, 1, 1))
    with pytest.raises(ValueError, match="shapes"):
        redistribute(a, conv_input_layout(ConvSpec(4, 9, 8, (6, 6), 1), Grid(4, 1, 1, 1, 1)), 4)
    with pytest.raises(ValueError, match="ranks"):
        redistribute(a, conv_input_layout(ConvSpec(4, 8, 8, (6, 6), 1), Grid(2, 1, 1, 1, 1)), 4)
    spec = ConvSpec(32, 256, 256, (14, 14), 3, padding=1)
    src = conv_output_layout(spec, Grid(32, 4, 2, 4, 4))
    dst = conv_input_layout(spec, Grid(8, 8, 4, 4, 4))
    r = redistribute(src, dst, 4)
    assert r.send_elems.sum() == r.recv_elems.sum() > 0
    m = r.messages(4095)
    assert sum(m["send"].values()) == r.send_elems[4095]
    assert sum(m["recv"].values()) == r.recv_elems[4095]


def test_nested_owner_and_reduce_layout():
    for n, p1, p2 in itertools.product(range(1, 12), range(1, 5), range(1, 5)):
        o = nested_owner(n, p1, p2)
        ref = []
        q, rem = divmod(n, p1)
        for i1 in range(p1):
            size = q + (i1 < rem)
            q2, r2 = divmod(size, p2)
            for i2 in range(p2):
                ref += [i1 * p2 + i2] * (q2 + (i2 < r2))
        assert o.tolist() == ref
    spec = ConvSpec(3, 4, 7, (5, 5), 1)
    src = conv_output_layout(spec, Grid(1, 1, 1, 2, 3))
    out = reduce_hw_layout(src)
    assert out.is_partition() and out.shape == (3, 7, 1, 1)
    assert out.owned_elems().sum() == 21
    # the rank at spatial position t of its (b, c) group owns sub-block t of the channels
    assert [out.ranges(r)[1] for r in range(6)] == [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6),
                                                    (6, 7)]
    check_grid(spec, Grid(1, 1, 1, 2, 3))
