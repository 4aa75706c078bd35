"""The pure message schedule (no MPI): bytes equal partition.rank_volume, halos are
symmetric, and the index sets are exactly what the output blocks read."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

from parconv.dtypes import PRESETS
from parconv.planner.partition import Grid, check_grid, layout, rank_volume
from parconv.planner.schedule import build_schedule, fiber_members
from parconv.spec import ConvSpec

SPECS = [
    ConvSpec(3, 5, 7, (9, 11), (3, 2), (2, 1), (1, 0), (1, 2), PRESETS["int8"]),
    ConvSpec(2, 4, 6, (13, 13), (7, 7), (2, 2), (3, 3), (1, 1), PRESETS["fp16"]),
    ConvSpec(2, 4, 6, (13, 10), (1, 1), (3, 3), (0, 0), (1, 1), PRESETS["fp32"]),  # skips pixels
    ConvSpec(1, 3, 2, (5, 5), (3, 3), (1, 1), (2, 2), (2, 2), PRESETS["bf16"]),
    ConvSpec(2, 3, 4, (6, 9), (4, 2), (1, 1), (0, 1), (1, 1), PRESETS["fp64"]),  # even kernels
]


def _grids(spec, limit=12):
    for dims in itertools.product([1, 2, 3], repeat=5):
        g = Grid(*dims)
        if g.size > limit:
            continue
        try:
            check_grid(spec, g)
        except ValueError:
            continue
        yield g


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe()[:40])
def test_schedule_bytes_equal_partition_and_halos_symmetric(spec):
    n = 0
    for g in _grids(spec):
        scheds = [build_schedule(spec, g, r) for r in range(g.size)]
        for r, s in enumerate(scheds):
            assert s.volume() == rank_volume(spec, g, r), (g, r)
            op = s.ops["input_halo"]
            for j, peer in enumerate(op.members):
                other = scheds[peer].ops["input_halo"]
                assert op.recv_elems(j) == other.send_elems(other.members.index(r))
                if j in s.halo:
                    hp, hq = s.halo[j], scheds[peer].halo[other.members.index(r)]
                    np.testing.assert_array_equal(hp.recv_rows, hq.send_rows)
                    np.testing.assert_array_equal(hp.recv_cols, hq.send_cols)
            n += 1
    assert n > 50


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe()[:40])
def test_window_is_covered_exactly(spec):
    """Own part plus halo pieces tile exactly the (rows x cols) set the output reads."""
    for g in _grids(spec, limit=8):
        for r in range(g.size):
            s, me = build_schedule(spec, g, r), layout(spec, g, r)
            (r0, r1), (c0, c1) = s.window
            cover = np.zeros((r1 - r0, c1 - c0), int)
            cover[np.ix_(s.self_rows - r0, s.self_cols - c0)] += 1
            for hp in s.halo.values():
                cover[np.ix_(hp.recv_rows - r0, hp.recv_cols - c0)] += 1
            need = np.zeros_like(cover)
            need[np.ix_(me.need_rows - r0, me.need_cols - c0)] = 1
            np.testing.assert_array_equal(cover, need)


def test_kernel_offset_maps_output_to_window():
    spec = SPECS[0]
    g = Grid(1, 1, 1, 3, 2)
    for r in range(g.size):
        s, me = build_schedule(spec, g, r), layout(spec, g, r)
        h0, w0 = me.out_rows[0], me.out_cols[0]
        assert s.offset[0] + s.window[0][0] == spec.stride[0] * h0 - spec.padding[0]
        assert s.offset[1] + s.window[1][0] == spec.stride[1] * w0 - spec.padding[1]


def test_fiber_members_row_major():
    g = Grid(2, 3, 2, 2, 2)
    c = g.coords(17)
    assert fiber_members(g, c, (False, True, False, False, False)) == tuple(
        g.rank((c[0], k, c[2], c[3], c[4])) for k in range(3))
    ms = fiber_members(g, c, (True, False, False, True, True))
    assert ms == tuple(g.rank((b, c[1], c[2], h, w)) for b in range(2) for h in range(2) for w in range(2))
    sched = build_schedule(SPECS[0], g, 17)
    assert sched.ops["filter_allgather"].members == ms
    assert ms.index(17) == sched.ops["filter_allgather"].index


def test_schedule_module_needs_no_mpi():
    import subprocess

    code = ("import sys; from parconv.planner.schedule import build_schedule; "
            "import parconv.runtime; assert 'mpi4py' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
