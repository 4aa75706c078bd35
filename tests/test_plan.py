"""The planner: exact per-rank volumes (vs partition.rank_volume), the class-based fast
maximum (vs every rank), the grid search (vs brute force), memory limits and the CLI."""

import itertools
import json

import numpy as np
import pytest

from parconv.cli import main
from parconv.dtypes import PRESETS
from parconv.layers import layer, suite
from parconv.planner.partition import (
    GRID_AXES,
    OPERATIONS,
    Grid,
    check_grid,
    halo_counts,
    rank_memory_bytes,
    rank_volume,
)
from parconv.planner.plan import (
    Plan,
    candidate_grids,
    max_rank_memory_bytes,
    max_rank_recv_bytes,
    max_rank_traffic_bytes,
    plan,
    plan_for_grid,
    total_recv_bytes,
)
from parconv.spec import ConvSpec

SPECS = [
    ConvSpec(3, 5, 7, (11, 9), (3, 3), 1, 1, precision=PRESETS["fp32"]),
    ConvSpec(2, 4, 6, (13, 10), (3, 2), 2, (1, 0), (1, 2), precision=PRESETS["int8"]),
    ConvSpec(1, 3, 4, (9, 9), (1, 1), 2, 0, precision=PRESETS["bf16"]),          # stride skips
    ConvSpec(5, 3, 5, (15, 15), (7, 7), 2, 3, precision=PRESETS["fp64"]),       # ResNet stem-like
    ConvSpec(1, 2, 3, (12, 12), (3, 3), 1, 2, 3, precision=PRESETS["fp32"]),    # wide dilation
    ConvSpec(7, 6, 10, (8, 6), (2, 2), 1, 0, precision=PRESETS["int8"]),        # even kernel
    ConvSpec(2, 3, 4, (3, 3), (1, 1), 1, 2, precision=PRESETS["fp16"]),         # out > in (padding)
]
GRIDS = [Grid(1, 1, 1, 1, 1), Grid(3, 1, 1, 1, 1), Grid(1, 3, 1, 1, 1), Grid(1, 1, 3, 1, 1),
         Grid(1, 1, 1, 3, 1), Grid(1, 1, 1, 1, 3), Grid(1, 2, 3, 1, 1), Grid(2, 1, 1, 1, 3),
         Grid(1, 1, 1, 2, 3), Grid(3, 2, 1, 1, 1), Grid(1, 3, 2, 2, 1), Grid(2, 2, 1, 3, 1),
         Grid(1, 1, 2, 2, 3), Grid(1, 1, 1, 4, 3), Grid(2, 1, 1, 1, 6), Grid(5, 1, 1, 1, 1),
         Grid(1, 5, 1, 1, 1), Grid(1, 1, 1, 5, 1)]


def _cases():
    for spec, grid in itertools.product(SPECS, GRIDS):
        try:
            check_grid(spec, grid)
        except ValueError:
            continue
        yield spec, grid


CASES = list(_cases())


def test_cases_cover_odd_and_uneven():
    sizes = {g.size for _, g in CASES}
    assert {3, 6, 12} <= sizes
    assert len(CASES) > 60


@pytest.mark.parametrize("spec,grid", CASES)
def test_every_rank_equals_partition(spec, grid):
    pl = plan_for_grid(spec, grid)
    vols = pl.rank_volumes()
    recv, traffic = [], []
    pi = spec.precision.p_input // 8
    for r in range(grid.size):
        ref = rank_volume(spec, grid, r)
        for op in OPERATIONS:
            assert (int(vols[op + ".recv"][r]), int(vols[op + ".send"][r])) == ref[op], (r, op)
        assert vols["recv_bytes"][r] == sum(v[0] for v in ref.values())
        assert vols["memory_bytes"][r] == rank_memory_bytes(spec, grid, r)
        halo = {p: (rv * pi, sd * pi) for p, (rv, sd) in halo_counts(spec, grid, r).items()}
        assert pl.halos(r) == halo
        recv.append(sum(v[0] for v in ref.values()))
        traffic.append(sum(v[0] + v[1] for v in ref.values()))
    # the class-based maxima and the closed-form total equal the brute force
    assert pl.max_rank_recv_bytes == max(recv)
    assert pl.max_rank_traffic_bytes == max_rank_traffic_bytes(spec, grid) == max(traffic)
    assert pl.total_recv_bytes == sum(recv)
    assert pl.max_rank_memory_bytes == max(rank_memory_bytes(spec, grid, r) for r in range(grid.size))


def test_rank_dict_contents():
    spec, grid = SPECS[1], Grid(1, 2, 1, 3, 1)
    pl = plan_for_grid(spec, grid)
    d = pl.rank(4)
    assert d["coords"] == dict(zip(GRID_AXES, grid.coords(4)))
    ref = rank_volume(spec, grid, 4)
    assert d["operations"] == {op: {"recv_bytes": r, "send_bytes": s} for op, (r, s) in ref.items()}
    assert d["recv_bytes"] == sum(r for r, _ in ref.values())
    assert d["blocks"]["out_rows"] == [3, 5] and d["blocks"]["batch"] == [0, 2]
    assert len(pl.ranks()) == 6 and pl.ranks()[4] == d


def _random_case(rng):
    while True:
        ker = rng.integers(1, 6, 2)
        stride, dil = rng.integers(1, 4, 2), rng.integers(1, 3, 2)
        pad = rng.integers(0, 3, 2)
        insz = rng.integers(5, 40, 2)
        try:
            spec = ConvSpec(int(rng.integers(1, 40)), int(rng.integers(1, 40)), int(rng.integers(1, 40)),
                            tuple(insz), tuple(ker), tuple(stride), tuple(pad), tuple(dil),
                            PRESETS[str(rng.choice(["int8", "fp32", "bf16"]))])
        except ValueError:
            continue
        lim = [spec.B, spec.K, spec.C, spec.H, spec.W]
        grid = Grid(*(int(rng.integers(1, min(n, 9) + 1)) for n in lim))
        return spec, grid


def test_class_maximum_equals_all_ranks_random():
    """The block-class reduction is exact: compare with the full per-rank arrays (which
    the test above ties to partition.rank_volume) on random layers and grids."""
    rng = np.random.default_rng(7)
    for _ in range(150):
        spec, grid = _random_case(rng)
        pl = plan_for_grid(spec, grid)
        vols = pl.rank_volumes()
        assert pl.max_rank_recv_bytes == int(vols["recv_bytes"].max())
        assert pl.max_rank_traffic_bytes == int((vols["recv_bytes"] + vols["send_bytes"]).max())
        assert pl.total_recv_bytes == int(vols["recv_bytes"].sum()) == int(vols["send_bytes"].sum())
        assert pl.max_rank_memory_bytes == int(vols["memory_bytes"].max())
    # and spot-check some random cases rank by rank against the reference
    for _ in range(6):
        spec, grid = _random_case(rng)
        vols = plan_for_grid(spec, grid).rank_volumes()
        for r in rng.choice(grid.size, size=min(grid.size, 8), replace=False):
            ref = rank_volume(spec, grid, int(r))
            assert int(vols["recv_bytes"][r]) == sum(v[0] for v in ref.values())


def test_candidate_grids_are_all_factorisations():
    spec = ConvSpec(4, 6, 3, (9, 7), 3, 1, 0)   # B=4 C=6 K=3 H=7 W=5
    for procs in (1, 6, 12, 36):
        got = {g.dims for g in candidate_grids(spec, procs)}
        want = {d for d in itertools.product(*(range(1, n + 1) for n in (4, 3, 6, 7, 5)))
                if int(np.prod(d)) == procs}
        assert got == want


@pytest.mark.parametrize("spec,procs", [(SPECS[0], 6), (SPECS[1], 12), (SPECS[3], 8),
                                        (SPECS[5], 12), (SPECS[2], 3),
                                        (layer("resnet50/layer1.0.conv2", 4, PRESETS["int8"]), 16)])
def test_plan_is_the_exhaustive_optimum(spec, procs):
    pl = plan(spec, procs)
    keys = []
    for g in candidate_grids(spec, procs):
        keys.append((max_rank_traffic_bytes(spec, g), total_recv_bytes(spec, g), g))
    best = min(k[:2] for k in keys)
    assert (pl.max_rank_traffic_bytes, pl.total_recv_bytes) == best
    assert pl.grid in [g for m, t, g in keys if (m, t) == best]
    assert pl.grid.size == procs


def test_memory_limit_filters_and_errors():
    spec = layer("resnet50/layer3.0.downsample.0", 8, PRESETS["fp32"])
    grids = candidate_grids(spec, 16)
    mems = {g: max_rank_memory_bytes(spec, g) for g in grids}
    free = plan(spec, 16)
    chosen = set()
    for limit in sorted(set(mems.values()))[::4]:
        pl = plan(spec, 16, limit)
        chosen.add(pl.grid)
        ok = [g for g in grids if mems[g] <= limit]
        assert pl.max_rank_memory_bytes <= limit
        assert pl.max_rank_recv_bytes == min(max_rank_recv_bytes(spec, g) for g in ok)
        assert pl.max_rank_recv_bytes >= free.max_rank_recv_bytes
    assert len(chosen) >= 3  # the limit really changes the choice
    need = min(mems.values())
    with pytest.raises(ValueError, match=f"least memory any grid needs is {need} bytes"):
        plan(spec, 16, need - 1)
    assert plan(spec, 16, need).max_rank_memory_bytes == need
    with pytest.raises(ValueError, match="needs"):
        plan_for_grid(spec, free.grid, free.max_rank_memory_bytes - 1)


def test_bad_inputs_rejected():
    spec = ConvSpec(2, 3, 2, 4, 3)  # B=2 K=2 C=3 H=W=2
    with pytest.raises(ValueError, match="procs"):
        plan(spec, 0)
    with pytest.raises(ValueError, match="no grid of 5 ranks"):
        plan(spec, 5)
    with pytest.raises(ValueError, match="in-channels"):
        plan_for_grid(spec, Grid(1, 1, 4, 1, 1))


def test_plan_respects_the_lower_bound():
    """A real schedule never beats a valid lower bound."""
    for spec in suite("resnet50", 32, PRESETS["int8"], unique=True)[::3]:
        for procs in (8, 512):
            pl = plan(spec, procs)
            if pl.lower_bound_bytes is not None:
                assert pl.max_rank_traffic_bytes >= pl.lower_bound_bytes * (1 - 1e-9), (spec.name, procs)
                assert pl.ratio_to_bound == pl.max_rank_traffic_bytes / pl.lower_bound_bytes >= 1 - 1e-9
                # the received-only figure (grid family): held on every grid tried
                assert pl.recv_ratio_grid_family == pl.max_rank_recv_bytes / pl.lemma_bound_bytes
                assert pl.recv_ratio_grid_family >= 1 - 1e-9


def test_traffic_of_busiest_rank_never_below_the_bound_random():
    """What the printed ratio compares is what the bound bounds: on random small layers
    and grids (odd and uneven splits) the busiest rank's received + sent bytes, taken
    over every rank, are at least the memory-independent bound."""
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(200):
        spec, grid = _random_case(rng)
        pl = plan_for_grid(spec, grid)
        vols = pl.rank_volumes()
        traffic = int((vols["recv_bytes"] + vols["send_bytes"]).max())
        assert pl.max_rank_traffic_bytes == traffic
        if pl.lower_bound_bytes is not None:
            checked += 1
            assert traffic >= pl.lower_bound_bytes * (1 - 1e-12), (spec, grid)
            assert pl.ratio_to_bound >= 1 - 1e-12
            assert pl.ratio_to_bound == pytest.approx(
                pl.recv_ratio_grid_family * traffic / pl.max_rank_recv_bytes
                * pl.lemma_bound_bytes / pl.lower_bound_bytes)
    assert checked > 50


def test_received_only_figure_is_not_what_the_bound_bounds():
    """The audit's relay example (1x1, B = C = K = 64, fp32, P = 256): a schedule relaying
    partial sums through idle ranks receives 960 B on its busiest rank, below the bound,
    so the bound must be compared with received + sent bytes, which the planned grid
    reports (and which is >= the bound)."""
    spec = ConvSpec(64, 64, 64, 1, 1, precision=PRESETS["fp32"])
    pl = plan(spec, 256)
    # the relay beats the lemma on received bytes (960 B < 1027.1 B), not the bound on
    # received + sent, which the averaging argument raises to 1617.4 B
    assert 960 < pl.lemma_bound_bytes < 1028                      # 1027.1 B
    assert pl.lower_bound_bytes > 1.5 * pl.lemma_bound_bytes
    assert pl.max_rank_traffic_bytes >= pl.lower_bound_bytes
    vols = pl.rank_volumes()
    assert pl.max_rank_traffic_bytes == int((vols["recv_bytes"] + vols["send_bytes"]).max())
    d = pl.to_dict(include_ranks=False)
    assert d["ratio_to_bound"] == pl.max_rank_traffic_bytes / pl.lower_bound_bytes
    assert d["recv_ratio_grid_family"] == pl.max_rank_recv_bytes / pl.lemma_bound_bytes


def test_large_procs_search_prunes():
    spec = layer("resnet50/layer3.1.conv2", 32, PRESETS["int8"])
    pl = plan(spec, 65536)
    assert pl.grid.size == 65536
    assert pl.search["evaluated"] < pl.search["candidates"]
    assert pl.max_rank_recv_bytes * 65536 >= pl.total_recv_bytes


def test_to_dict_is_json():
    pl = plan(SPECS[0], 6)
    d = json.loads(json.dumps(pl.to_dict()))
    assert d["grid"] == pl.grid.as_dict() and len(d["ranks"]) == 6
    assert d["max_rank_recv_bytes"] == max(r["recv_bytes"] for r in d["ranks"])
    assert d["max_rank_traffic_bytes"] == max(r["recv_bytes"] + r["send_bytes"] for r in d["ranks"])
    assert d["ratio_to_bound"] == d["max_rank_traffic_bytes"] / d["lower_bound_bytes"]
    assert d["recv_ratio_grid_family"] == d["max_rank_recv_bytes"] / d["lemma_bound_bytes"]
    assert isinstance(pl, Plan) and "ranks" not in pl.to_dict(include_ranks=False)


def test_cli_plan_json_and_table(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["plan", "--layer", "resnet50/layer3.1.conv2", "--batch", "8", "--procs", "6",
                 "--dtype", "int8", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert set(d["grid"]) == set(GRID_AXES) and len(d["ranks"]) == 6
    assert {"recv_bytes", "send_bytes", "operations"} <= set(d["ranks"][0])
    assert set(d["strategies"]) == {"batch_only", "spatial_only", "batch_spatial",
                                    "channel_filter", "im2col_matmul"}
    assert d["layer"]["name"] == "resnet50/layer3.1.conv2" and d["lower_bound_bytes"] > 0
    assert d["max_rank_recv_bytes"] <= min(v for v in d["strategies"].values() if v is not None)
    assert d["ratio_to_bound"] == d["max_rank_traffic_bytes"] / d["lower_bound_bytes"]
    assert set(d["strategies_traffic"]) == set(d["strategies"])
    assert all(t >= r for t, r in zip(d["strategies_traffic"].values(), d["strategies"].values()))
    assert main(["plan", "--batch", "8", "--procs", "4", "--grid", "1x2x2x1x1"]) == 0
    text = capsys.readouterr().out
    assert "1x2x2x1x1" in text and "channel_filter" in text and "rank" in text
    assert "recv + send = " in text and "x the bound" in text and "grid-family figure" in text
    assert main(["plan", "--procs", "4", "--grid", "2x1x1x1x1"]) == 2
    assert "has 2 ranks" in capsys.readouterr().err
