"""``parconv run --pass step|dgrad|wgrad`` under real ``mpiexec`` (3, 5 and 6 ranks,
subprocess timeouts, few launches): output, input and filter gradients verified against
parconv.reference, measured == planned bytes per rank and operation (and == the planner's
totals), the saved arrays, integer training refused on every rank, and the step's
tracemalloc-measured memory against the plan."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from test_run_cli_io import _exits, per_rank_cli
from test_runtime_mpi import mpiexec

from parconv.io import load_npz
from parconv.planner.adjoint import pass_operations
from parconv.planner.plan import plan_for_grid

ROOT = Path(__file__).resolve().parents[1]
MEMORY_SCRIPT = ROOT / "tests" / "mpi" / "training_memory_cases.py"


def shape(c, k, hw, kern, **kw) -> list[str]:
    out = ["--in-channels", str(c), "--out-channels", str(k), "--input", hw, "--kernel", kern]
    for key, v in kw.items():
        out += [f"--{key}", v]
    return out


def run_json(n: int, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"run{n}.json"
    proc, secs = mpiexec(n, [sys.executable, "-m", "parconv", "run", "--memory", "none",
                             "--quiet", "--json", str(out), *args], timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def check_bytes(d: dict, groups: list[str]) -> None:
    """Measured == planned per rank, per pass and operation; totals == the planner's."""
    assert d["measured_equals_planned"]
    for e in d["ranks"]:
        assert list(e["passes"]) == groups
        for per in e["passes"].values():
            for op, v in per.items():
                assert (v["recv_bytes"], v["send_bytes"]) == (v["planned_recv_bytes"],
                                                             v["planned_send_bytes"]), op
        assert e["recv_bytes"] == sum(v["recv_bytes"] for v in e["operations"].values())
        assert e["recv_bytes"] == e["planned_recv_bytes"] == e["planner_recv_bytes"]
        assert e["send_bytes"] == e["planned_send_bytes"] == e["planner_send_bytes"]


@pytest.mark.parametrize("n,grid,dtype,extra", [
    # h split, stride 2 x dilation 2, even kernel width, uneven blocks (13 rows / 3)
    (3, "1x1x1x3x1", "fp32", shape(5, 7, "13,11", "3,2", stride="2,1", padding="1,0",
                                    dilation="1,2")),
    # k and w split, 16-bit training, padding and dilation, 5 uneven output columns
    (6, "1x2x1x1x3", "bf16", shape(6, 5, "9,14", "3,3", padding="2,1", dilation="2,2")),
    # five ranks: b x nothing else is impossible (batch 2), so c split 5 ways, odd P
    (5, "1x1x5x1x1", "fp16", shape(11, 4, "6,7", "3,3", stride="3,2", padding="1,1")),
])
def test_run_step_verify_json(n, grid, dtype, extra, tmp_path, warm_numba):
    save = tmp_path / "step.npz"
    d = run_json(n, tmp_path, "--pass", "step", "--verify", "--grid", grid, "--dtype", dtype,
                 "--batch", "2", "--save", str(save), *extra)
    assert d["pass"] == "step" and d["verify"]["ok"], d["verify"]
    assert all(k in d["verify"]["message"] for k in ("output", "grad_input", "grad_weight"))
    check_bytes(d, ["forward", "backward"])
    ops = list(d["ranks"][0]["operations"])
    assert ops == list(pass_operations("step"))
    # the planner's busiest-rank step total is what was measured
    assert d["measured_max_rank_traffic_bytes"] == d["planned_max_rank_traffic_bytes"]
    arrays = load_npz(save)
    assert set(arrays) == {"input", "weight", "output", "grad_output", "grad_input",
                           "grad_weight"}
    assert arrays["grad_input"].shape == arrays["input"].shape
    assert arrays["grad_weight"].shape == arrays["weight"].shape
    assert arrays["grad_weight"].dtype == np.float32


@pytest.mark.parametrize("pass_,grid,extra", [
    ("dgrad", "auto", shape(9, 6, "10,9", "3,3", stride="2,2", padding="1,1")),
    ("wgrad", "3x1x1x1x1", shape(4, 5, "8,11", "2,3", padding="0,1", dilation="2,1")),
])
def test_run_backward_pass_alone(pass_, grid, extra, tmp_path, warm_numba):
    d = run_json(3, tmp_path, "--pass", pass_, "--verify", "--grid", grid, "--batch", "3",
                 *extra)
    assert d["verify"]["ok"], d["verify"]
    want = "grad_input" if pass_ == "dgrad" else "grad_weight"
    assert want in d["verify"]["message"] and "output:" not in d["verify"]["message"]
    check_bytes(d, [pass_])
    assert list(d["ranks"][0]["operations"]) == list(pass_operations(pass_))


def test_integer_training_refused_once_exit_2_everywhere():
    proc, secs = mpiexec(3, per_rank_cli("--pass", "step", "--dtype", "int8", "--grid",
                                         "1x1x1x3x1"), timeout=60)
    assert _exits(proc.stdout) == [f"rank {r} exit 2" for r in range(3)], proc.stdout
    assert proc.stderr.count("integer training is not supported") == 1, proc.stderr
    assert secs < 30


def test_step_memory_matches_the_plan(tmp_path, warm_numba):
    out = tmp_path / "memory.json"
    proc, _ = mpiexec(3, [sys.executable, str(MEMORY_SCRIPT), str(out)], timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for case in json.loads(out.read_text())["cases"]:
        for r in case["ranks"]:
            assert 0.85 <= r["traced"] / r["plan_numpy"] <= 1.15, (case["name"], r)
            assert r["plan"] >= r["plan_numpy"]


def test_plan_memory_of_the_step_exceeds_the_forward():
    from parconv.layers import layer
    from parconv.passes import training_precision
    from parconv.planner.partition import Grid

    spec = layer("resnet50/layer1.0.conv2", 2, training_precision("fp32").forward_precision)
    g = Grid(1, 1, 1, 3, 1)
    assert (plan_for_grid(spec, g, pass_="step").max_rank_memory_bytes
            > plan_for_grid(spec, g).max_rank_memory_bytes)
