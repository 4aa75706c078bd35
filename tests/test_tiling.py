"""Sequential tiling: closed forms by hand, the vectorised formula, the optimiser against
exhaustive enumeration, no tiling below the sequential lower bound, Im2Col, the CLI."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from parconv.bounds import sequential_bound
from parconv.cli import main
from parconv.dtypes import PRESETS
from parconv.im2col import gemm_spec, im2col_breakdown, im2col_traffic_bits, is_plain_gemm
from parconv.replay import replay_traffic_bits
from parconv.spec import ConvSpec
from parconv.tiling import (
    DIMS,
    ORDERS,
    SEARCH_ORDERS,
    Tiling,
    best_tiling,
    compulsory_bits,
    extents,
    fits,
    footprint_bits,
    footprint_bits_grid,
    tiling_traffic_bits,
    traffic_bits_grid,
    traffic_bits_grids,
    traffic_breakdown,
)


def _all_tiles(spec: ConvSpec) -> dict[str, np.ndarray]:
    ext = extents(spec)
    g = np.array(list(itertools.product(*(range(1, ext[d] + 1) for d in DIMS))), dtype=np.int64)
    return {d: g[:, i] for i, d in enumerate(DIMS)}


def test_closed_forms_of_theory_table_on_a_matmul():
    # 1x1 convolution, every tile divides its loop: THEORY.md §4's table holds exactly
    p = PRESETS["int8"]
    spec = ConvSpec(2, 6, 4, (4, 6), 1, precision=p)
    tile = {"b": 1, "k": 2, "c": 3, "h": 2, "w": 3, "r": 1, "s": 1}
    n_b, n_k, n_c, n_h, n_w = 2, 2, 2, 2, 2
    i_bits, f_bits, o_bits = 8 * spec.input_elems, 8 * spec.filter_elems, 32 * spec.output_elems
    got = {o: traffic_breakdown(spec, tile, o) for o in ORDERS}
    assert got["output-stationary"] == {"input": n_k * i_bits, "filter": n_b * n_h * n_w * f_bits,
                                        "output": o_bits}
    assert got["weight-stationary"] == {"input": n_k * i_bits, "filter": f_bits,
                                        "output": (2 * n_c - 1) * o_bits}
    assert got["input-stationary"] == {"input": i_bits, "filter": n_b * n_h * n_w * f_bits,
                                       "output": (2 * n_c - 1) * o_bits}


def test_halo_reuse_along_a_sliding_row():
    # 1-D, 3-tap filter, stride 1, no padding, output tiles of 1 column: consecutive
    # windows share 2 columns, so each input column is loaded once (6 in total), not 3x4
    spec = ConvSpec(1, 1, 1, (1, 6), (1, 3), precision=PRESETS["int8"])
    tile = {"b": 1, "k": 1, "c": 1, "h": 1, "w": 1, "r": 1, "s": 3}
    assert traffic_breakdown(spec, tile, "output-stationary")["input"] == 8 * 6
    # taps cut to 1, innermost: tile (w, s) reads column w+s; going (w, 2) -> (w+1, 0)
    # jumps back a column, so every one of the 4x3 steps loads one column
    tile_s = dict(tile, s=1)
    rep = replay_traffic_bits(spec, tile_s, "output-stationary", 1 << 20)
    assert traffic_breakdown(spec, tile_s, "output-stationary")["input"] == rep.bits["input"]
    assert rep.loads["input"] == 4 * 3  # every step needs a column the previous lacked


def test_vectorised_formula_equals_exact():
    rng = random.Random(5)
    spec = ConvSpec(3, 4, 5, (9, 7), (3, 2), (2, 1), (1, 0), (1, 2), PRESETS["bf16"])
    tiles = _all_tiles(spec)
    idx = np.array(rng.sample(range(len(tiles["b"])), 60))
    for order in list(ORDERS) + ["".join(rng.sample(DIMS, 7)) for _ in range(4)]:
        grid = traffic_bits_grid(spec, order, tiles)
        foot = footprint_bits_grid(spec, tiles)
        for i in idx:
            t = {d: int(tiles[d][i]) for d in DIMS}
            assert grid[i] == tiling_traffic_bits(spec, t, order)
            assert foot[i] == sum(footprint_bits(spec, t).values())


SMALL = [
    ConvSpec(2, 3, 4, (5, 5), (3, 3), 1, 1, 1, PRESETS["fp32"]),
    ConvSpec(1, 4, 3, (7, 6), (3, 2), (2, 1), (1, 0), 1, PRESETS["int8"]),
    ConvSpec(2, 2, 3, (8, 5), (2, 3), (3, 1), 0, (2, 1), PRESETS["bf16"]),
    ConvSpec(1, 5, 4, (3, 4), 1, precision=PRESETS["fp32"]),
]


@pytest.mark.parametrize("spec", SMALL, ids=lambda s: s.describe())
def test_best_tiling_beats_every_enumerated_tiling(spec):
    tiles = _all_tiles(spec)
    foot = footprint_bits_grid(spec, tiles)
    grids = {o: traffic_bits_grid(spec, o, tiles) for o in SEARCH_ORDERS}
    lo = int(foot.min()) // 8
    for memory in (lo, lo + 8, 2 * lo, 4 * lo, 16 * lo, int(foot.max()) // 8):
        ok = foot <= 8 * memory
        best_enum = min(int(g[ok].min()) for g in grids.values())
        best = best_tiling(spec, memory)
        assert isinstance(best, Tiling) and best.memory_bytes == memory
        assert fits(spec, best.tile, memory)
        assert best.traffic_bits == tiling_traffic_bits(spec, best.tile, best.order)
        assert best.traffic_bits <= best_enum, (memory, best)
        assert best.traffic_bits == best_enum  # it is one of them
        # restricting the orders never helps
        for o in SEARCH_ORDERS:
            assert best_tiling(spec, memory, orders=[o]).traffic_bits >= best.traffic_bits
    with pytest.raises(ValueError, match="too small"):
        best_tiling(spec, lo - 1)


# tiny problems with tiny memories: the lower bound is not just the compulsory traffic
BOUND_CASES = [
    ConvSpec(1, 3, 4, (6, 6), (3, 3), 1, 1, 1, PRESETS["fp32"]),
    ConvSpec(1, 3, 3, (7, 7), (3, 3), 2, 1, 1, PRESETS["fp32"]),
    ConvSpec(1, 3, 3, (7, 6), (3, 2), 1, (2, 0), (2, 1), PRESETS["fp32"]),
    ConvSpec(1, 8, 8, (4, 4), 1, precision=PRESETS["fp32"]),
    ConvSpec(2, 3, 3, (4, 5), (1, 2), (1, 3), 0, 1, PRESETS["bf16"]),
]


@pytest.mark.parametrize("spec", BOUND_CASES, ids=lambda s: s.describe())
def test_no_box_tiling_and_loop_order_beats_the_sequential_bound(spec):
    """Every box tiling x every loop order (all orders of the loops longer than 1),
    checked at the smallest memory it fits in (the bound only falls as M grows)."""
    tiles = _all_tiles(spec)
    foot_bytes = footprint_bits_grid(spec, tiles) // 8
    ext = extents(spec)
    live = [d for d in DIMS if ext[d] > 1]
    dead = "".join(d for d in DIMS if ext[d] == 1)
    best = np.full(foot_bytes.shape, np.iinfo(np.int64).max)
    best_order = np.empty(foot_bytes.shape, dtype=object)
    orders = ["".join(perm) + dead for perm in itertools.permutations(live)]
    for order, g in traffic_bits_grids(spec, orders, tiles).items():
        better = g < best
        best = np.where(better, g, best)
        best_order[better] = order
    non_compulsory = 0
    for m in np.unique(foot_bytes):
        bound = sequential_bound(spec, int(m))
        sel = np.flatnonzero(foot_bytes == m)
        i = sel[np.argmin(best[sel])]
        assert best[i] >= bound.bits, (int(m), bound)
        non_compulsory += bound.binding != "compulsory"
        # and the closest tiling, replayed against a memory of exactly m bytes
        tile = {d: int(tiles[d][i]) for d in DIMS}
        rep = replay_traffic_bits(spec, tile, best_order[i], int(m))
        assert rep.total_bits == best[i] and rep.total_bits >= bound.bits
    assert non_compulsory > 0  # the bound was exercised beyond its compulsory term


def test_fits_and_double_buffer():
    spec = ConvSpec(2, 3, 4, (6, 6), (3, 3), 2, 1, 1, PRESETS["int8"])
    tile = {"b": 2, "k": 3, "c": 2, "h": 2, "w": 3, "r": 3, "s": 2}
    f = footprint_bits(spec, tile)
    # input: 2 output rows at stride 2 with 3 taps from row -1: rows 0..3 of the first
    # tile (4 real); columns: 3 outputs, 2 taps from -1: cols 0..4 (5)
    assert f == {"input": 8 * 2 * 2 * 4 * 5, "filter": 8 * 3 * 2 * 3 * 2, "output": 32 * 2 * 3 * 2 * 3}
    need = sum(f.values()) // 8
    assert fits(spec, tile, need) and not fits(spec, tile, need - 1)
    assert fits(spec, tile, 2 * need, double_buffer=True)
    assert not fits(spec, tile, 2 * need - 1, double_buffer=True)
    with pytest.raises(ValueError, match="tile: expected keys"):
        fits(spec, {"b": 1}, need)


def test_im2col_hand_computed():
    # 1 channel, 3x3 image, 2x2 filter, 2x2 output, int8/int8/int32, memory holds all:
    # build: read 9 inputs (72 bits) + write 4x4 matrix (128 bits);
    # GEMM: read the matrix (128) + 4 weights (32) + write 4 outputs (4 x 32 = 128)
    spec = ConvSpec(1, 1, 1, (3, 3), (2, 2), precision=PRESETS["int8"])
    b = im2col_breakdown(spec, 1 << 20)
    assert (b["build_read"], b["matrix_write"], b["gemm"]) == (72, 128, 288)
    assert im2col_traffic_bits(spec, 1 << 20) == 488


def test_im2col_baseline_sanity():
    for spec in SMALL + BOUND_CASES:
        for memory in (64, 256, 4096):
            try:
                tiling = best_tiling(spec, memory)
                b = im2col_breakdown(spec, memory)
            except ValueError:
                continue
            assert b["total"] >= compulsory_bits(spec)
            assert b["gemm"] == best_tiling(gemm_spec(spec), memory).traffic_bits
            entries = spec.C * spec.R * spec.S * spec.B * spec.H * spec.W
            assert b["matrix_write"] == (0 if is_plain_gemm(spec) else spec.precision.p_input * entries)
            assert b["total"] >= tiling.traffic_bits
    # a 1x1 stride-1 layer is already a GEMM: Im2Col is the direct tiling
    spec = ConvSpec(2, 16, 8, (5, 5), 1, precision=PRESETS["fp32"])
    assert im2col_traffic_bits(spec, 512) == best_tiling(spec, 512).traffic_bits


def test_best_tiling_on_a_resnet_layer_is_fast_and_sane():
    from parconv.layers import layer

    spec = layer("resnet50/layer3.1.conv2", 32, PRESETS["int8"])
    t = best_tiling(spec, 256 * 1024)
    assert fits(spec, t.tile, 256 * 1024)
    assert compulsory_bits(spec) <= t.traffic_bits <= im2col_traffic_bits(spec, 256 * 1024)
    assert t.traffic_bits >= sequential_bound(spec, 256 * 1024).bits
    d = t.to_dict()
    assert d["tile"] == t.tile and d["traffic_bits"] == t.traffic_bits and d["order"] in ORDERS


def test_orders_and_tile_validation():
    spec = ConvSpec(1, 2, 2, (4, 4), (3, 3), precision=PRESETS["int8"])
    tile = dict.fromkeys(DIMS, 1)
    assert tiling_traffic_bits(spec, tile, "output-stationary") == tiling_traffic_bits(spec, tile, ORDERS["output-stationary"])
    for bad in ("bkchw", "bkchwrr", "nonsense"):
        with pytest.raises(ValueError, match="order"):
            tiling_traffic_bits(spec, tile, bad)
    with pytest.raises(ValueError, match="tile\\['k'\\]=0"):
        tiling_traffic_bits(spec, dict(tile, k=0), "output-stationary")
    with pytest.raises(ValueError, match="tile\\['c'\\]"):
        tiling_traffic_bits(spec, dict(tile, c=1.5), "output-stationary")


def test_cli_tile_json_and_table(tmp_path, capsys):
    out = tmp_path / "t.json"
    rc = main(["tile", "--in-channels", "8", "--out-channels", "6", "--input", "10,9",
               "--kernel", "3", "--stride", "2,1", "--padding", "1", "--batch", "2",
               "--dtype", "int8", "--memory", "1KiB", "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    for key in ("tile", "order", "traffic_bytes", "lower_bound_bytes", "im2col_traffic_bytes",
                "memory_bytes"):
        assert key in d
    assert set(d["tile"]) == set(DIMS) and d["memory_bytes"] == 1024
    spec = ConvSpec(2, 8, 6, (10, 9), 3, (2, 1), 1, 1, PRESETS["int8"])
    assert d["traffic_bytes"] * 8 == tiling_traffic_bits(spec, d["tile"], d["order"])
    assert d["traffic_bytes"] >= d["lower_bound_bytes"]
    # the one-accumulation-chain bound covers every box tiling, and is the tighter one
    chain = sequential_bound(spec, 1024, single_chain=True)
    assert d["single_chain_bound_bytes"] == chain.bytes >= d["lower_bound_bytes"]
    assert d["traffic_bytes"] >= d["single_chain_bound_bytes"]
    assert d["ratio_to_single_chain_bound"] == d["traffic_bytes"] / chain.bytes
    assert d["im2col_traffic_bytes"] * 8 == im2col_traffic_bits(spec, 1024)
    assert main(["tile", "--layer", "resnet50/layer4.0.conv3", "--memory", "1MiB"]) == 0
    text = capsys.readouterr().out
    assert "tiling traffic" in text and "Im2Col" in text
    assert "one accumulation chain per output" in text and "tiling / one-chain bound = " in text
    assert main(["tile", "--memory", "8B", "--batch", "2"]) == 2
    assert "too small" in capsys.readouterr().err
