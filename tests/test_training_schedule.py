"""The backward schedule is the adjoint of the forward one (pure, no MPI)."""

from __future__ import annotations

import pytest

from parconv.dtypes import PRESETS
from parconv.planner.adjoint import ADJOINT_OF, PASSES, pass_operations, pass_volume
from parconv.planner.partition import OPERATIONS, Grid, rank_volume
from parconv.planner.schedule import build_schedule
from parconv.planner.simulate import simulate
from parconv.spec import ConvSpec

CASES = [
    (ConvSpec(3, 5, 7, (9, 8), 3, 1, 1, precision=PRESETS["fp32"]), Grid(1, 2, 2, 2, 1)),
    (ConvSpec(2, 4, 6, (11, 10), (3, 2), (2, 1), (1, 0), (2, 1), PRESETS["bf16"]),
     Grid(2, 1, 1, 2, 3)),
    (ConvSpec(5, 3, 4, (7, 7), 7, 2, 3, precision=PRESETS["fp16"]), Grid(1, 1, 3, 1, 2)),
    (ConvSpec(4, 6, 5, (6, 6), 1, 1, 0, precision=PRESETS["fp64"]), Grid(2, 3, 1, 1, 1)),
]


def test_pass_operations():
    assert pass_operations("forward") == OPERATIONS
    step = pass_operations("step")
    assert step[:4] == OPERATIONS and set(step[4:]) == set(ADJOINT_OF)
    again = pass_operations("step", keep_window=False)
    assert set(again) - set(step) == {"recompute_input_allgather", "recompute_input_halo"}
    assert "filter_allgather" in pass_operations("dgrad")
    assert "input_halo" in pass_operations("wgrad")
    with pytest.raises(ValueError, match="unknown pass"):
        pass_operations("backward")


@pytest.mark.parametrize("spec,grid", CASES)
def test_adjoint_ops_exchange_receive_and_send(spec, grid):
    p = spec.precision
    item = {"grad_output": p.p_output // 8, "accum": p.p_accum // 8}
    for r in range(grid.size):
        s = build_schedule(spec, grid, r)
        fwd = rank_volume(spec, grid, r)
        ops = s.pass_ops("step", keep_window=False)
        for op, (src, role) in ADJOINT_OF.items():
            o, f = ops[op], s.ops[src]
            assert o.members == f.members and o.index == f.index
            for j in range(len(o.members)):
                assert o.recv_elems(j) == f.send_elems(j)
                assert o.send_elems(j) == f.recv_elems(j)
            scale_old, scale_new = f.itemsize, item[role]
            assert o.recv_bytes * scale_old == fwd[src][1] * scale_new
            assert o.send_bytes * scale_old == fwd[src][0] * scale_new
        assert ops["recompute_input_halo"].recv_bytes == fwd["input_halo"][0]
        derived = pass_volume(fwd, spec.precision, "step", keep_window=False)
        assert derived == {op: (o.recv_bytes, o.send_bytes) for op, o in ops.items()}
        assert ops["recompute_input_allgather"].send_bytes == fwd["input_allgather"][1]


@pytest.mark.parametrize("spec,grid", CASES)
@pytest.mark.parametrize("pass_", PASSES)
def test_simulated_passes_are_consistent(spec, grid, pass_):
    full = simulate(spec, grid, pass_=pass_, method="full")
    assert full.consistent, full.mismatches
    assert list(full.recv) == list(pass_operations(pass_))
    by_class = simulate(spec, grid, pass_=pass_, method="classes")
    assert by_class.consistent, by_class.mismatches
    for op in full.recv:
        assert (full.recv[op] == by_class.recv[op]).all()
        assert (full.send[op] == by_class.send[op]).all()
    # every byte received is sent by someone: totals over ranks agree
    assert int(full.recv_bytes.sum()) == int(full.send_bytes.sum())
