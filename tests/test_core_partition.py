"""Partition index math: blocks cover, ownership is a partition, volumes balance."""

import itertools

import numpy as np
import pytest

from parconv.dtypes import PRESETS
from parconv.layers import layer
from parconv.planner.partition import (
    OPERATIONS,
    Grid,
    balanced_block,
    block_sizes,
    check_grid,
    halo_counts,
    layout,
    rank_volume,
)
from parconv.spec import ConvSpec


@pytest.mark.parametrize("n,p", [(n, p) for n in range(0, 12) for p in range(1, 6)])
def test_balanced_blocks_cover(n, p):
    ranges = [balanced_block(n, p, i) for i in range(p)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    np.testing.assert_array_equal(block_sizes(n, p), sizes)


def test_grid_parse_and_coords():
    g = Grid.parse("2x1x3x1x2")
    assert g.size == 12 and str(g) == "2x1x3x1x2"
    assert all(g.rank(g.coords(r)) == r for r in range(12))
    assert g.coords(1) == (0, 0, 0, 0, 1)  # w fastest, as Create_cart
    for bad in ("2x2", "0x1x1x1x1", "ax1x1x1x1"):
        with pytest.raises(ValueError):
            Grid.parse(bad)


def test_check_grid_messages():
    spec = ConvSpec(2, 3, 4, 6, 3)
    check_grid(spec, Grid(2, 2, 3, 2, 2), 48)
    with pytest.raises(ValueError, match="job has 5"):
        check_grid(spec, Grid(1, 2, 1, 1, 1), 5)
    with pytest.raises(ValueError, match="in-channels"):
        check_grid(spec, Grid(1, 1, 4, 1, 1))
    with pytest.raises(ValueError, match="batch"):
        check_grid(spec, Grid(3, 1, 1, 1, 1))


SPECS = [
    ConvSpec(3, 5, 7, (11, 9), (3, 3), 1, 1, precision=PRESETS["fp32"]),
    ConvSpec(2, 4, 6, (13, 10), (3, 2), 2, (1, 0), (1, 2), precision=PRESETS["int8"]),
    ConvSpec(1, 3, 4, (9, 9), (1, 1), 2, 0, precision=PRESETS["bf16"]),
    ConvSpec(2, 3, 5, (15, 15), (7, 7), 2, 3, precision=PRESETS["fp64"]),
    ConvSpec(1, 2, 3, (12, 12), (3, 3), 1, 2, 3, precision=PRESETS["fp32"]),  # wide dilation
]
GRIDS = [Grid(1, 1, 1, 1, 1), Grid(1, 1, 1, 3, 1), Grid(1, 1, 1, 2, 3), Grid(2, 1, 1, 1, 1),
         Grid(1, 3, 1, 1, 1), Grid(1, 1, 2, 1, 1), Grid(1, 2, 1, 2, 1), Grid(1, 1, 1, 5, 1),
         Grid(1, 2, 3, 1, 1), Grid(2, 1, 1, 1, 3)]


def _cases():
    for spec, grid in itertools.product(SPECS, GRIDS):
        try:
            check_grid(spec, grid)
        except ValueError:
            continue
        yield spec, grid


@pytest.mark.parametrize("spec,grid", list(_cases()))
def test_ownership_is_a_partition_and_volumes_balance(spec, grid):
    P = grid.size
    cover_in = np.zeros(spec.input_shape, dtype=int)
    cover_f = np.zeros(spec.filter_shape, dtype=int)
    cover_o = np.zeros(spec.output_shape, dtype=int)
    compute = np.zeros((spec.B, spec.K, spec.C, spec.H, spec.W), dtype=int)
    totals = {op: [0, 0] for op in OPERATIONS}
    for r in range(P):
        me = layout(spec, grid, r)
        b, ci, rows, cols = me.batch, me.input_channels_owned, me.own_rows, me.own_cols
        cover_in[b[0]:b[1], ci[0]:ci[1], rows[0]:rows[1], cols[0]:cols[1]] += 1
        kf = me.filter_out_channels_owned
        cover_f[kf[0]:kf[1], me.in_channels[0]:me.in_channels[1]] += 1
        ko = me.output_out_channels_owned
        cover_o[b[0]:b[1], ko[0]:ko[1], me.out_rows[0]:me.out_rows[1], me.out_cols[0]:me.out_cols[1]] += 1
        k, c = me.out_channels, me.in_channels
        compute[b[0]:b[1], k[0]:k[1], c[0]:c[1], me.out_rows[0]:me.out_rows[1],
                me.out_cols[0]:me.out_cols[1]] += 1
        assert tuple(np.subtract(*zip(*[(hi, lo) for lo, hi in (b, ci, rows, cols)]))) == me.input_owned_shape
        vol = rank_volume(spec, grid, r)
        for op in OPERATIONS:
            totals[op][0] += vol[op][0]
            totals[op][1] += vol[op][1]
    assert (cover_in == 1).all() and (cover_f == 1).all() and (cover_o == 1).all()
    assert (compute == 1).all()  # every (b,k,c,h,w) computed exactly once
    for op in OPERATIONS:
        assert totals[op][0] == totals[op][1], op  # everything received was sent by someone


@pytest.mark.parametrize("spec,grid", list(_cases()))
def test_halo_brings_exactly_the_missing_input(spec, grid):
    """After the allgather a rank holds its owned used rows/cols; the halo must bring
    every element its output block reads that it does not own, and nothing else."""
    for r in range(grid.size):
        me = layout(spec, grid, r)
        ib, ik, ic, _, _ = me.coords
        need = np.zeros(spec.in_size, dtype=bool)
        need[np.ix_(me.need_rows, me.need_cols)] = True
        own = np.zeros(spec.in_size, dtype=bool)
        own[me.own_rows[0]:me.own_rows[1], me.own_cols[0]:me.own_cols[1]] = True
        bc = (me.batch[1] - me.batch[0]) * (me.in_channels[1] - me.in_channels[0])
        halo = halo_counts(spec, grid, r)
        assert sum(v[0] for v in halo.values()) == bc * int((need & ~own).sum())
        for peer, (recv, send) in halo.items():
            other = layout(spec, grid, peer)
            assert other.coords[:3] == (ib, ik, ic)
            theirs = np.zeros(spec.in_size, dtype=bool)
            theirs[other.own_rows[0]:other.own_rows[1], other.own_cols[0]:other.own_cols[1]] = True
            assert recv == bc * int((need & theirs).sum())
            assert halo_counts(spec, grid, peer)[r] == (send, recv)


def test_halo_can_span_several_neighbours():
    spec = ConvSpec(1, 1, 1, (12, 3), (3, 1), 1, (2, 0), (3, 1))  # dilation 3: reach 6 rows
    grid = Grid(1, 1, 1, 6, 1)
    peers = halo_counts(spec, grid, 2)
    assert len(peers) >= 3


def test_resnet_layer_volumes_positive_and_symmetric():
    spec = layer("resnet50/layer3.0.conv2", batch=4, precision=PRESETS["int8"])
    grid = Grid(1, 2, 1, 3, 1)
    vols = [rank_volume(spec, grid, r) for r in range(grid.size)]
    assert all(v["input_allgather"][0] > 0 and v["filter_allgather"][0] > 0 for v in vols)
    assert sum(v["input_halo"][0] for v in vols) > 0
