"""parconv simulate: per-rank bytes of the runtime's schedule for every virtual rank,
equal to partition.rank_volume and to the bytes real `mpiexec` runs measure; the
schedule-consistency check catches a tampered schedule."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parconv.dtypes import PRESETS
from parconv.layers import layer
from parconv.planner import schedule as schedule_mod
from parconv.planner.partition import OPERATIONS, Grid, rank_volume
from parconv.planner.simulate import simulate
from parconv.spec import ConvSpec

ROOT = Path(__file__).resolve().parent.parent


def _spec(**kw) -> ConvSpec:
    base = dict(batch=3, in_channels=5, out_channels=7, in_size=(11, 9), kernel=(3, 2),
                stride=(2, 1), padding=(1, 1), dilation=(1, 2), precision=PRESETS["fp32"])
    base.update(kw)
    return ConvSpec(**base)


@pytest.mark.parametrize("grid", ["1x1x1x1x1", "3x1x1x1x1", "1x3x1x1x1", "1x1x5x1x1",
                                  "1x1x1x3x2", "1x2x1x2x2", "3x2x1x1x1", "1x1x2x2x1",
                                  "1x7x5x1x1", "3x1x1x6x4"])
def test_equals_rank_volume(grid):
    spec = _spec(precision=PRESETS["int8"])
    g = Grid.parse(grid)
    sim = simulate(spec, g)
    assert sim.consistent, sim.mismatches
    for r in range(g.size):
        vol = rank_volume(spec, g, r)
        assert {op: (int(sim.recv[op][r]), int(sim.send[op][r])) for op in OPERATIONS} == vol
    # bytes conserve: everything received was sent by someone
    assert sim.recv_bytes.sum() == sim.send_bytes.sum()
    d = sim.to_dict()
    assert len(d["ranks"]) == g.size and d["max_rank_recv_bytes"] == int(sim.recv_bytes.max())


@pytest.mark.parametrize("grid", ["2x2x2x2x2", "3x2x2x3x2", "1x4x3x2x3", "3x7x1x1x4"])
def test_class_derivation_equals_building_every_rank(grid):
    """method="classes" (one schedule per block class, communicators derived from the
    grid) gives exactly what building every rank gives, on uneven blocks of every axis."""
    spec = _spec(batch=5, in_channels=6, out_channels=7, in_size=(13, 11))
    g = Grid.parse(grid)
    full, cls = simulate(spec, g, method="full"), simulate(spec, g, method="classes")
    assert full.consistent and cls.consistent, (full.mismatches, cls.mismatches)
    for op in OPERATIONS:
        assert full.recv[op].tolist() == cls.recv[op].tolist()
        assert full.send[op].tolist() == cls.send[op].tolist()
    assert full.messages == cls.messages > 0
    with pytest.raises(ValueError, match="method"):
        simulate(spec, g, method="fast")


@pytest.mark.parametrize("method", ["full", "classes"])
def test_consistency_check_catches_tampering(monkeypatch, method):
    spec, g = _spec(), Grid(1, 2, 1, 3, 1)  # K = 7 over 2: every rank its own class
    real = schedule_mod.build_schedule

    def tampered(spec_, grid_, rank):
        s = real(spec_, grid_, rank)
        if rank == 1:  # rank 1 sends one element more to its first halo peer
            op = s.ops["input_halo"]
            sc = list(op.send_counts)
            j = next(j for j, c in enumerate(sc) if c)
            sc[j] += 1
            ops = dict(s.ops, input_halo=dataclasses.replace(op, send_counts=tuple(sc)))
            s = dataclasses.replace(s, ops=ops)
        if rank == 4:  # rank 4 believes in other allgather block sizes
            op = s.ops["input_allgather"]
            ops = dict(s.ops, input_allgather=dataclasses.replace(op, counts=(op.counts[0] + 1,) + op.counts[1:]))
            s = dataclasses.replace(s, ops=ops)
        return s

    monkeypatch.setattr(schedule_mod, "build_schedule", tampered)
    sim = simulate(spec, g, method=method)
    assert not sim.consistent
    text = "\n".join(sim.mismatches)
    assert "input_halo: rank 1 sends" in text and "which expects" in text
    assert "input_allgather: rank 4 expects block sizes" in text
    assert len(sim.mismatches) == 2
    monkeypatch.setattr(schedule_mod, "build_schedule", real)
    assert simulate(spec, g, method=method).consistent


def test_cli_table_json_and_errors(tmp_path):
    out = tmp_path / "s.json"
    args = [sys.executable, "-m", "parconv", "simulate", "--in-channels", "5", "--out-channels",
            "7", "--input", "11,9", "--kernel", "3", "--padding", "1", "--batch", "2"]
    r = subprocess.run(args + ["--grid", "1x1x1x3x2", "--json", str(out)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["command"] == "simulate" and d["consistent"] and d["matches_plan"]
    assert d["grid"] == {"b": 1, "k": 1, "c": 1, "h": 3, "w": 2} and len(d["ranks"]) == 6
    assert d["summary"]["total"]["max"] == max(x["recv_bytes"] for x in d["ranks"])
    traffic = max(x["recv_bytes"] + x["send_bytes"] for x in d["ranks"])
    assert d["max_rank_traffic_bytes"] == traffic
    assert d["ratio_to_bound"] == traffic / d["lower_bound_bytes"] >= 1
    assert d["recv_ratio_grid_family"] == d["summary"]["total"]["max"] / d["lemma_bound_bytes"]
    assert d["lemma_bound_bytes"] <= d["lower_bound_bytes"]
    r = subprocess.run(args + ["--procs", "4"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "schedule consistent: yes" in r.stdout
    assert "recv + send = " in r.stdout and "x the bound (received only:" in r.stdout
    assert "input_halo" in r.stdout and "max" in r.stdout
    r = subprocess.run(args + ["--procs", "5", "--grid", "1x1x1x3x2"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "has 6 ranks but --procs is 5" in r.stderr


def _mpi_run(n: int, grid: str, flags: list[str], out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_"))}
    from parconv import mpienv

    cmd = [*mpienv.find_launcher(env).command, "-n", str(n), sys.executable, "-m", "parconv",
           "run", "--grid", grid, *flags, "--json", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=100, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.timeout(240)
@pytest.mark.parametrize("n,grid,flags", [
    # h split over 3 (uneven, stride 2: halos), filter allgather over 3 ranks, int8
    (3, "1x1x1x3x1", ["--in-channels", "4", "--out-channels", "5", "--input", "13,6",
                      "--kernel", "3", "--stride", "2", "--padding", "1", "--batch", "2",
                      "--dtype", "int8"]),
    # k and c split (input allgather, reduce-scatter), w split with dilation 2, even kernel
    (4, "1x2x1x1x2", ["--in-channels", "3", "--out-channels", "5", "--input", "7,10",
                      "--kernel", "2,4", "--dilation", "1,2", "--batch", "3"]),
    (4, "2x1x2x1x1", ["--in-channels", "5", "--out-channels", "3", "--input", "6,6",
                      "--kernel", "3", "--padding", "1", "--batch", "3", "--dtype", "bf16"]),
])
def test_simulated_equals_measured(tmp_path, n, grid, flags):
    measured = _mpi_run(n, grid, flags, tmp_path / "run.json")
    sim = subprocess.run([sys.executable, "-m", "parconv", "simulate", "--grid", grid, *flags,
                          "--json", str(tmp_path / "sim.json")], capture_output=True, text=True,
                         timeout=60)
    assert sim.returncode == 0, sim.stderr
    simulated = json.loads((tmp_path / "sim.json").read_text())
    assert len(measured["ranks"]) == len(simulated["ranks"]) == n
    moved = 0
    for m, s in zip(measured["ranks"], simulated["ranks"]):
        assert m["rank"] == s["rank"]
        assert (m["recv_bytes"], m["send_bytes"]) == (s["recv_bytes"], s["send_bytes"])
        for op in OPERATIONS:
            mo, so = m["operations"][op], s["operations"][op]
            assert (mo["recv_bytes"], mo["send_bytes"]) == (so["recv_bytes"], so["send_bytes"]), (m["rank"], op)
            moved += mo["recv_bytes"] > 0
    assert moved >= 2  # the layers do move data in at least two operations
    # the run's bound comparison uses the same quantity as the simulator's: recv + send
    traffic = max(x["recv_bytes"] + x["send_bytes"] for x in measured["ranks"])
    assert measured["measured_max_rank_traffic_bytes"] == simulated["max_rank_traffic_bytes"] == traffic
    assert measured["planned_max_rank_traffic_bytes"] == traffic
    assert measured["ratio_to_bound"] == simulated["ratio_to_bound"]
    assert measured["recv_ratio_grid_family"] == simulated["recv_ratio_grid_family"]


def test_resnet50_layer_at_512_ranks_is_exact_where_checked():
    """A 5-D grid of 512 ranks on a ResNet-50 layer: consistent, and equal to rank_volume
    on a sample of ranks (the P = 4,096 timing lives in bench/report.py)."""
    spec = layer("resnet50/layer4.0.conv2", 8)
    g = Grid(4, 4, 4, 2, 4)
    sim = simulate(spec, g)
    assert sim.consistent, sim.mismatches[:3]
    for r in (0, 1, 77, 300, 511):
        assert {op: (int(sim.recv[op][r]), int(sim.send[op][r])) for op in OPERATIONS} == rank_volume(spec, g, r)
