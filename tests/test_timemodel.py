"""The alpha-beta-gamma time model: algorithm steps, hand-computed schedules, the
vectorised per-class evaluation against a rank-by-rank one, the exact time-optimal
search against brute force, machine files, the CLI, and a calibration smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parconv.calibrate import fit_alpha_beta
from parconv.dtypes import PRESETS
from parconv.planner.partition import Grid
from parconv.planner.plan import candidate_grids, plan
from parconv.planner.schedule import build_schedule
from parconv.spec import ConvSpec
from parconv.timemodel import (
    KINDS,
    SETUP_COLLECTIVES,
    Link,
    Machine,
    best_grid_by_time,
    collective_steps,
    load_machine,
    op_seconds,
    predict,
    rank_time_lower_bounds,
)

ROOT = Path(__file__).resolve().parent.parent
A, BETA, G = 1e-3, 1e-6, 1e-9   # round figures: times are exact sums of these


def _machine(rpn: int = 1000, alpha=A, beta=BETA, inter_scale: float = 1.0,
             copy: float = 0.0, setup: float = 0.0, cores: int | None = None) -> Machine:
    intra = {k: Link(alpha, beta) for k in KINDS}
    inter = {k: Link(10 * alpha, inter_scale * beta) for k in KINDS}
    return Machine("test", rpn, cores or rpn, intra, inter,
                   {c: G for c in ("fp32", "int8", "bf16", "fp16", "fp64")}, copy, setup)


def _spec(**kw) -> ConvSpec:
    base = dict(batch=2, in_channels=4, out_channels=4, in_size=(4, 4), kernel=(1, 1),
                stride=(1, 1), padding=(0, 0), dilation=(1, 1), precision=PRESETS["fp32"])
    base.update(kw)
    return ConvSpec(**base)


def test_collective_steps_follow_mpich_selection():
    # allgather: recursive doubling (pow2, < 512 KiB), Bruck (< 80 KiB), else ring
    assert collective_steps("allgather", 4, 1000) == 2
    assert collective_steps("allgather", 4, 600_000) == 3
    assert collective_steps("allgather", 8, 400_000) == 3
    assert collective_steps("allgather", 6, 1000) == 3
    assert collective_steps("allgather", 6, 100_000) == 5
    # reduce-scatter: recursive halving (+1 step off powers of two) < 512 KiB, else pairwise
    assert collective_steps("reduce_scatter", 4, 1000) == 2
    assert collective_steps("reduce_scatter", 3, 1000) == 3
    assert collective_steps("reduce_scatter", 4, 1 << 20) == 3
    assert collective_steps("alltoallv", 9, 0, peers=3) == 3
    assert collective_steps("allgather", 1, 10) == 0
    with pytest.raises(ValueError):
        collective_steps("bcast", 4, 10)


def test_hand_computed_channel_grid():
    """B=2, C=K=4, 4x4, 1x1 kernel on 1x2x2x1x1: input allgather over k (2 members of
    2·1·16 floats = 128 B each), reduce-scatter over c (own block 1·2·16 floats = 128 B),
    no halo, no filter allgather; compute 2·2·2·16 MACs."""
    spec = _spec()
    pred = predict(spec, Grid.parse("1x2x2x1x1"), _machine())
    for r in range(4):
        assert pred.comm["input_allgather"][r] == pytest.approx(A * 1 + BETA * 128)
        assert pred.comm["output_reduce_scatter"][r] == pytest.approx(A * 1 + BETA * 128)
        assert pred.comm["input_halo"][r] == 0 and pred.comm["filter_allgather"][r] == 0
        assert pred.compute["compute"][r] == pytest.approx(G * 2 * 2 * 2 * 16)
        assert pred.comm["setup"][r] == pytest.approx(SETUP_COLLECTIVES * 2 * A)
    total = 2 * (A + BETA * 128) + G * 128 + SETUP_COLLECTIVES * 2 * A
    assert pred.step_seconds == pytest.approx(total)
    over = predict(spec, Grid.parse("1x2x2x1x1"), _machine(), overlap=True)
    assert over.step_seconds == pytest.approx(max(total - G * 128, G * 128))


def test_hand_computed_uneven_halo_and_filter_allgather():
    """H=7 split 3 ways (rows 3, 2, 2), 3x3 kernel, pad 1, W=5, B=1, C=2, K=4: the middle
    rank trades one 10-float row with each neighbour (2 peers), the borders with one;
    the filter allgather over 3 ranks (k_f = 2, 1, 1 rows of 2·9 floats, 288 B in all:
    Bruck, 2 steps) receives 144, 216, 216 B."""
    spec = _spec(batch=1, in_channels=2, out_channels=4, in_size=(7, 5), kernel=(3, 3),
                 padding=(1, 1))
    pred = predict(spec, Grid.parse("1x1x1x3x1"), _machine())
    halo = [A + 40 * BETA, 2 * A + 80 * BETA, A + 40 * BETA]
    filt = [2 * A + 144 * BETA, 2 * A + 216 * BETA, 2 * A + 216 * BETA]
    np.testing.assert_allclose(pred.comm["input_halo"], halo)
    np.testing.assert_allclose(pred.comm["filter_allgather"], filt)
    np.testing.assert_allclose(pred.steps["input_halo"], [1, 2, 1])
    assert pred.comm["input_allgather"].sum() == 0 == pred.comm["output_reduce_scatter"].sum()
    # rows of output 3, 2, 2 of width 5: MACs = 1·4·2·rows·5·9
    np.testing.assert_allclose(pred.compute["compute"], [G * 4 * 2 * r * 5 * 9 for r in (3, 2, 2)])
    comp = [G * 4 * 2 * r * 5 * 9 for r in (3, 2, 2)]
    setup = SETUP_COLLECTIVES * 2 * A   # ⌈log2 3⌉ = 2 steps each
    np.testing.assert_allclose(pred.rank_seconds,
                               [setup + h + f + c for h, f, c in zip(halo, filt, comp)])
    assert pred.busiest_rank == 1   # two halo peers, the most filter bytes


def test_inter_node_links_and_nic_sharing():
    """With 2 ranks per node, the k-fiber {r, r+2} of 1x2x2x1x1 spans nodes (inter α,
    β × 2 ranks sharing the NIC), the c-fiber {r, r+1} does not."""
    spec = _spec()
    m = _machine(rpn=2, inter_scale=3.0)
    pred = predict(spec, Grid.parse("1x2x2x1x1"), m)
    for r in range(4):
        assert pred.comm["input_allgather"][r] == pytest.approx(10 * A + 2 * 3 * BETA * 128)
        assert pred.comm["output_reduce_scatter"][r] == pytest.approx(A + BETA * 128)


def test_oversubscription_and_packing():
    spec = _spec()
    m = _machine(rpn=4, cores=2, copy=1e-9, setup=1e-4)
    pred = predict(spec, Grid.parse("1x2x2x1x1"), m)
    assert pred.compute["compute"][0] == pytest.approx(2 * G * 128)   # 4 ranks on 2 cores
    assert pred.pack["setup"][0] == pytest.approx(2 * 1e-4)
    # allgather send block: c_own·b·16 floats; cast: k_o·b·16 × (4 + 4) bytes
    assert pred.pack["input_allgather"][0] == pytest.approx(2 * 1e-9 * 4 * 1 * 2 * 16)
    assert pred.pack["cast"][0] == pytest.approx(2 * 1e-9 * 1 * 2 * 16 * 8)


CASES = [
    (dict(batch=3, in_channels=5, out_channels=7, in_size=(11, 9), kernel=(3, 2),
          stride=(2, 1), padding=(1, 1), dilation=(1, 2)), "3x1x1x2x2", 3),
    (dict(batch=3, in_channels=5, out_channels=7, in_size=(11, 9), kernel=(3, 3),
          padding=(1, 1)), "1x2x3x1x2", 5),
    (dict(batch=4, in_channels=6, out_channels=9, in_size=(8, 8), kernel=(3, 3),
          padding=(1, 1), precision=PRESETS["int8"]), "2x3x1x2x1", 4),
    (dict(batch=2, in_channels=3, out_channels=5, in_size=(13, 7), kernel=(5, 3),
          stride=(2, 2), padding=(2, 1)), "1x1x1x5x1", 2),
]


@pytest.mark.parametrize("kw,grid,rpn", CASES)
def test_vectorised_equals_rank_by_rank(kw, grid, rpn):
    """predict's per-class evaluation equals op_seconds on every rank's own schedule."""
    spec, g = _spec(**kw), Grid.parse(grid)
    m = _machine(rpn=rpn, inter_scale=4.0)
    pred = predict(spec, g, m)
    for r in range(g.size):
        s = build_schedule(spec, g, r)
        for op, o in s.ops.items():
            t, n = op_seconds(o, m, g.size)
            assert pred.comm[op][r] == pytest.approx(t, rel=1e-12, abs=1e-18), (op, r)
            assert pred.steps[op][r] == n


@pytest.mark.parametrize("kw,grid,rpn", CASES)
def test_lower_bounds_hold(kw, grid, rpn):
    spec, g = _spec(**kw), Grid.parse(grid)
    m = _machine(rpn=rpn, inter_scale=4.0, copy=1e-10, setup=1e-5)
    for overlap in (False, True):
        pred = predict(spec, g, m, overlap=overlap)
        assert (rank_time_lower_bounds(spec, g, m, overlap) <= pred.rank_seconds * (1 + 1e-12)).all()


@pytest.mark.parametrize("procs,rpn", [(12, 4), (8, 2), (6, 6)])
def test_time_search_equals_brute_force(procs, rpn):
    spec = _spec(batch=4, in_channels=6, out_channels=12, in_size=(10, 10), kernel=(3, 3),
                 padding=(1, 1))
    m = _machine(rpn=rpn, alpha=2e-6, beta=1e-9, inter_scale=20.0)
    res = best_grid_by_time(spec, procs, m)
    times = {g: predict(spec, g, m).step_seconds for g in candidate_grids(spec, procs)}
    assert res.prediction.step_seconds == pytest.approx(min(times.values()))
    assert res.bytes_grid == plan(spec, procs).grid
    assert res.speedup_over_bytes >= 1.0
    assert res.evaluated <= res.candidates and res.exact
    capped = best_grid_by_time(spec, procs, m, max_evaluations=1)
    assert capped.evaluated == 1 and capped.prediction.step_seconds >= res.prediction.step_seconds


def test_backward_passes():
    spec = _spec(in_size=(6, 6), kernel=(3, 3), padding=(1, 1))
    g = Grid.parse("1x2x1x2x1")
    fwd = predict(spec, g, _machine())
    step = predict(spec, g, _machine(), pass_="step")
    assert "grad_input_reduce_scatter" in step.phases
    assert step.compute["compute"][0] == pytest.approx(3 * fwd.compute["compute"][0])


def test_machine_files_and_presets(tmp_path):
    m = _machine(rpn=3)
    m.save(tmp_path / "m.json")
    assert load_machine(str(tmp_path / "m.json")) == m
    toml = tmp_path / "m.toml"
    lines = ['name = "t"', "ranks_per_node = 4", "copy = 1e-10", "[gamma]", "fp32 = 2e-11"]
    for side in ("intra", "inter"):
        for k in KINDS:
            lines += [f"[{side}.{k}]", "alpha = 1e-6", "beta = 1e-10"]
    toml.write_text("\n".join(lines) + "\n")
    t = load_machine(str(toml))
    assert t.ranks_per_node == 4 and t.inter["alltoallv"] == Link(1e-6, 1e-10)
    for name in ("ib-hdr", "ib-ndr", "this-machine"):
        p = load_machine(name)
        assert p.inter["allgather"].beta > 0 and p.gamma["fp32"] > 0
    assert load_machine("ib-ndr").inter["allgather"].beta < load_machine("ib-hdr").inter["allgather"].beta
    bad = m.to_dict()
    bad["intra"]["allgather"]["beta"] = -1
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="finite number"):
        load_machine(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="not a preset"):
        load_machine("no-such-machine")
    with pytest.raises(ValueError, match="no kernel rate"):
        predict(_spec(), Grid.parse("1x1x1x1x1"),
                Machine("x", 1, 1, m.intra, m.inter, {"int8": G}, 0.0))


def test_fit_alpha_beta():
    steps = np.array([1, 1, 1, 2, 2, 3], float)
    nb = np.array([8, 1e3, 1e5, 1e6, 8, 4e6])
    t = 3e-6 * steps + 2e-10 * nb
    a, b = fit_alpha_beta(steps, nb, t)
    assert a == pytest.approx(3e-6, rel=1e-6) and b == pytest.approx(2e-10, rel=1e-6)
    # the unconstrained fit of these needs α < 0: the non-negative one sets α = 0 and fits β
    a, b = fit_alpha_beta(np.array([1, 10, 5.]), np.array([1e6, 1e3, 1e5]),
                          np.array([2e-4, 1e-7, 2e-5]))
    assert a == 0 and b > 0


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "parconv", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_cli_plan_and_simulate_time(tmp_path):
    layer = ["--layer", "resnet50/layer3.1.conv2", "--batch", "32"]
    r = _cli("plan", *layer, "--procs", "64", "--objective", "time")
    assert r.returncode == 2 and "needs --machine" in r.stderr
    out = tmp_path / "p.json"
    r = _cli("plan", *layer, "--procs", "64", "--objective", "time", "--machine", "ib-hdr",
             "--ranks-per-node", "16", "--json", str(out))
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    from parconv.layers import layer as get_layer

    res = best_grid_by_time(get_layer("resnet50/layer3.1.conv2", 32, PRESETS["fp32"]), 64,
                            load_machine("ib-hdr").with_ranks_per_node(16))
    assert d["grid"] == res.grid.as_dict() == d["time_search"]["grid"]
    assert d["time"]["step_seconds"] == pytest.approx(res.prediction.step_seconds)
    assert len(d["time"]["ranks"]) == 64
    r = _cli("simulate", "--layer", "resnet50/layer1.0.conv2", "--batch", "8", "--grid",
             "1x1x1x2x2", "--machine", "this-machine", "--json", str(out))
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert set(d["ranks"][0]["predicted"]["phases"]) >= {"compute", "input_halo"}
    r = _cli("simulate", "--layer", "resnet50/layer1.0.conv2", "--procs", "4", "--overlap")
    assert r.returncode == 2 and "need --machine" in r.stderr


@pytest.mark.timeout(300)
def test_calibrate_quick_two_ranks(tmp_path):
    from parconv import mpienv

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_"))}
    out, raw = tmp_path / "m.json", tmp_path / "raw.json"
    cmd = [*mpienv.find_launcher(env).command, "-n", "2", sys.executable, "-m", "parconv",
           "calibrate", "--quick", "--out", str(out), "--raw", str(raw)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = load_machine(str(out))
    assert m.ranks_per_node == 2 and m.setup >= 0 and m.copy > 0
    assert all(0 < v < 1e-6 for v in m.gamma.values())
    d = json.loads(raw.read_text())
    for kind in KINDS:
        sw = d["sweeps"]["intra"][kind]
        assert len(sw["points"]) >= 4 and sw["alpha"] >= 0 and sw["beta"] >= 0
        assert m.intra[kind] == Link(sw["alpha"], sw["beta"])
    # a bad output path is refused on every rank before any communication
    r = subprocess.run([*cmd[:-4], "--out", str(tmp_path / "nope" / "m.json")],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and r.stderr.count("error") == 1
