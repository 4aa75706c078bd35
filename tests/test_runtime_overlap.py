"""Communication overlapped with computation (issue 12.2): the execution plan's tiles
(pure), and real ``mpiexec`` runs in both orders — the same output bytes (where the
summation order is the same), measured == planned bytes in both, the deadline
machinery with overlap, and ``parconv run --repeat`` / ``--overlap`` JSON fields."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

from parconv.dtypes import PRESETS
from parconv.planner.partition import Grid, layout
from parconv.planner.schedule import build_schedule
from parconv.runtime.execute import exec_plan, overlap_default
from parconv.spec import ConvSpec

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "mpi"))
from cases import case  # noqa: E402
from test_runtime_mpi import ROOT, mpi_env, mpiexec  # noqa: E402
from test_runtime_schedule import SPECS, _grids  # noqa: E402

SCRIPT = ROOT / "tests" / "mpi" / "overlap_cases.py"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe()[:40])
def test_tiles_partition_the_output_and_interior_tiles_read_only_owned_input(spec):
    """Every grid <= 8 ranks: the tiles cover each output element exactly once; an
    interior tile reads only input rows/cols the rank owns; the tiles' reduce-scatter
    counts add up to the schedule's, member by member; interior tiles come first."""
    n_split = 0
    for g in _grids(spec, limit=8):
        for r in range(g.size):
            s, me = build_schedule(spec, g, r), layout(spec, g, r)
            p = exec_plan(s)
            H, W = s.sizes["out_h"], s.sizes["out_w"]
            cover = np.zeros((H, W), int)
            for t in p.tiles:
                cover[t.r0:t.r1, t.c0:t.c1] += 1
                if t.interior:
                    for axis, (lo, hi), out_lo, own in (
                            (spec.axes[0], (t.r0, t.r1), me.out_rows[0], me.own_rows),
                            (spec.axes[1], (t.c0, t.c1), me.out_cols[0], me.own_cols)):
                        used = axis.used_indices(out_lo + lo, out_lo + hi)
                        assert np.all((used >= own[0]) & (used < own[1])), (g, r, t)
            assert np.all(cover == 1), (g, r)
            counts = np.sum([t.counts for t in p.tiles], axis=0)
            assert tuple(counts) == s.ops["output_reduce_scatter"].counts, (g, r)
            inner = [t.interior for t in p.tiles]
            assert inner == sorted(inner, reverse=True)
            assert p.whole[0].counts == s.ops["output_reduce_scatter"].counts
            assert p.whole[0].interior == (not p.halo_recv)   # computed after the halo
            n_split += len(p.tiles) > 1
    assert n_split > 0


def test_a_halo_grid_has_interior_and_boundary_tiles():
    spec = ConvSpec(2, 4, 6, (16, 12), 3, 1, 1, precision=PRESETS["fp32"])
    p = exec_plan(build_schedule(spec, Grid.parse("1x1x2x2x1"), 0))
    rows = sorted({(t.r0, t.r1) for t in p.tiles if t.interior})
    assert rows and rows[0][0] == 0 and rows[-1][1] == 7   # out rows 0..7, row 7 needs halo
    assert [(t.r0, t.r1, t.interior) for t in p.tiles if not t.interior] == [(7, 8, False)]


def test_tile_columns_setting():
    from parconv.runtime.execute import TILE_COLUMNS, tile_columns

    assert tile_columns({}) == TILE_COLUMNS
    assert tile_columns({"PARCONV_TILE_COLUMNS": "40"}) == 40
    assert tile_columns({"PARCONV_TILE_COLUMNS": "x"}) == TILE_COLUMNS


def test_overlap_switch():
    assert overlap_default({}) is True
    assert overlap_default({"PARCONV_OVERLAP": "0"}) is False
    assert overlap_default({"PARCONV_OVERLAP": "off"}) is False
    assert overlap_default({"PARCONV_OVERLAP": "1"}) is True


def _same_summation(c: dict, r: dict) -> bool:
    """Integers are exact. Floats: the same summation order only when the overlapped run
    computed one tile per rank (the BLAS's rounding depends on the GEMM's column
    blocking, which a tile changes) and at most two partials meet per element."""
    return (c["spec"]["dtype"] in ("int8", "uint8")
            or (Grid.parse(c["grid"]).c <= 2 and all(t == 1 for t in r["overlap"]["tiles"])))


OVERLAP_CASES = {
    3: [
        case("h split halo fp32", "1x1x1x3x1", 2, 3, 8, (23, 9), 3, padding=1),
        case("c split fp64", "1x1x3x1x1", 2, 6, 8, 12, 3, padding=1, dtype="fp64"),
        case("c split fp32 (3 partials)", "1x1x3x1x1", 4, 6, 8, 12, 3, padding=1),
        case("k split int8 halo-free", "1x3x1x1x1", 3, 5, 7, 11, 3, stride=2, dtype="int8"),
        case("w split dilation int8, deadline", "1x1x1x1x3", 2, 3, 5, (9, 20), 3,
             padding=2, dilation=2, dtype="int8") | {"timeout": 30},
    ],
    4: [
        case("c x h halo fp32", "1x1x2x2x1", 2, 4, 6, (16, 12), 3, padding=1),
        case("k x c x w bf16", "1x2x2x1x1", 2, 4, 8, (8, 13), (3, 5), padding=(1, 2),
             dtype="bf16"),
        case("h x w diagonal int8, deadline", "1x1x1x2x2", 3, 3, 4, (14, 14), 5, padding=2,
             dtype="int8") | {"timeout": 30},
        case("k x h uneven fp16", "1x2x1x2x1", 1, 3, 5, (11, 7), 3, padding=1, dtype="fp16"),
    ],
}


@pytest.mark.parametrize("nprocs", sorted(OVERLAP_CASES))
def test_overlap_and_sequential_move_the_same_bytes_and_agree(nprocs, tmp_path, warm_numba):
    cases = OVERLAP_CASES[nprocs]
    src, dst = tmp_path / "cases.json", tmp_path / "results.json"
    src.write_text(json.dumps(cases))
    # small tiles, so that these small layers are cut into several bands
    proc, secs = mpiexec(nprocs, [sys.executable, str(SCRIPT), str(src), str(dst)], 180,
                         env=mpi_env() | {"PARCONV_TILE_COLUMNS": "40"})
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    results = json.loads(dst.read_text())
    assert [r["name"] for r in results] == [c["name"] for c in cases]
    split = 0
    for c, r in zip(cases, results):
        assert r["ok"] == {"overlap": True, "sequential": True}, r["name"]
        assert r["overlap"]["measured"] == r["planned"], r["name"]
        assert r["sequential"]["measured"] == r["planned"], r["name"]
        if _same_summation(c, r):
            assert r["identical"], (r["name"], r["max_abs_diff"])
        assert all(t == 1 for t in r["sequential"]["tiles"])
        split += any(t > 1 for t in r["overlap"]["tiles"])
        for t in r["overlap"]["time"] + r["sequential"]["time"]:
            assert set(t) == {"compute", "communication", "waiting", "other", "total"}
            assert t["compute"] > 0 and abs(sum(t.values()) - 2 * t["total"]) < 1e-6
    assert split >= 4   # the overlapped order really computed in tiles


def test_run_repeat_reports_the_median_and_the_time_split(tmp_path, warm_numba):
    out = tmp_path / "run.json"
    args = [sys.executable, "-m", "parconv", "run", "--in-channels", "4", "--out-channels",
            "6", "--input", "12", "--kernel", "3", "--padding", "1", "--batch", "2",
            "--grid", "1x1x3x1x1", "--repeat", "3", "--timeout", "30", "--verify",
            "--quiet", "--json", str(out)]
    proc, _ = mpiexec(3, args, 120, env=mpi_env() | {"PARCONV_TILE_COLUMNS": "40"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "comm s" in proc.stdout and "median of 3 runs after a warm-up" in proc.stdout
    d = json.loads(out.read_text())
    assert d["repeat"] == 3 and d["overlap"] is True and d["measured_equals_planned"]
    assert d["verify"]["ok"]
    for e in d["ranks"]:
        assert len(e["wall_samples"]) == 3
        assert e["wall_seconds"] == statistics.median(e["wall_samples"])
        assert set(e["time_seconds"]) >= {"compute", "communication", "waiting", "total"}
        assert e["tiles"] > 1 and e["overlap"] is True
