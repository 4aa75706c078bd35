"""Distributed training steps under real ``mpiexec`` runs (subprocesses with timeouts):
forward + backward of :class:`parconv.runtime.DistributedConv2d` against a float64
reference, adjoint identities, measured == planned bytes per rank and operation, and no
rebuild on the second call. One launch per rank count (tests/mpi/run_training.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_runtime_mpi import mpiexec

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "mpi" / "run_training.py"


def case(name, grid, dtype="fp64", seed=0, **spec):
    spec.setdefault("stride", 1)
    spec.setdefault("padding", 0)
    spec.setdefault("dilation", 1)
    spec["dtype"] = dtype
    return {"name": name, "grid": grid, "seed": seed, "spec": spec}


def S(b, c, k, hw, kern, **kw):  # noqa: N802 - spec shorthand
    return dict(batch=b, in_channels=c, out_channels=k, in_size=hw, kernel=kern, **kw)


BF16 = "bfloat16/bfloat16/float32/bfloat16"  # 16-bit activations and gradients

CASES = {
    1: [case("one rank fp32 3x3", "1x1x1x1x1", "fp32", **S(2, 3, 4, (6, 5), 3, padding=1))],
    2: [case("k split", "1x2x1x1x1", **S(2, 3, 5, (7, 6), 3, padding=1)),
        case("w split stride 2 even kernel", "1x1x1x1x2", "fp32",
             **S(1, 3, 2, (8, 9), (2, 4), stride=2, padding=(0, 1))),
        case("c split bf16", "1x1x2x1x1", BF16, **S(2, 5, 3, (6, 6), 3, padding=1))],
    3: [case("adjoint fp64 h split dilation 2", "1x1x1x3x1",
             **S(2, 2, 3, (11, 7), 3, padding=2, dilation=2)),
        case("adjoint fp64 k x c uneven", "1x3x1x1x1", **S(1, 7, 5, (5, 5), 3, padding=1)),
        case("b split stride 3 fp16", "3x1x1x1x1", "fp16",
             **S(4, 3, 4, (10, 9), 3, stride=3, padding=1)),
        case("integer refused", "1x1x1x3x1", "int8", **S(1, 2, 2, (6, 6), 3))],
    4: [case("stem 7x7/2 h x w", "1x1x1x2x2", "fp32",
             **S(1, 3, 4, (16, 15), 7, stride=2, padding=3)),
        case("1x1 k x c", "1x2x2x1x1", **S(3, 6, 5, (4, 4), 1))],
    6: [case("adjoint fp64 awkward grid", "1x2x1x3x1",
             **S(2, 3, 5, (10, 8), (3, 2), stride=(2, 1), padding=(1, 0))),
        case("every axis", "1x1x3x1x2", **S(2, 4, 3, (7, 9), 3, padding=1, dilation=(1, 2)))],
}


@pytest.mark.parametrize("nprocs", sorted(CASES))
def test_training_steps(nprocs, tmp_path, warm_numba):
    src, dst = tmp_path / "cases.json", tmp_path / "results.json"
    src.write_text(json.dumps(CASES[nprocs]))
    proc, secs = mpiexec(nprocs, [sys.executable, str(SCRIPT), str(src), str(dst)], timeout=180)
    assert proc.returncode == 0, f"mpiexec -n {nprocs} failed:\n{proc.stdout}\n{proc.stderr}"
    results = json.loads(dst.read_text())
    for c, r in zip(CASES[nprocs], results):
        if c["spec"]["dtype"].startswith("int"):
            assert "integer training is not supported" in r["error"]
            continue
        assert "error" not in r, r
        assert r["ok"], (c["name"], r["errors"])
        tol = {"fp64": 1e-12, "fp32": 1e-5}.get(c["spec"]["dtype"], 2e-2)  # 16-bit rounding
        assert r["adjoint"]["dgrad"] <= tol and r["adjoint"]["wgrad"] <= tol, r["adjoint"]
        for rk in r["ranks"]:
            assert rk["measured"] == rk["planned"] == rk["derived"], (c["name"], rk)
            assert rk["builds"] == {"schedule": 0, "comm": 0}
        if c["spec"]["dtype"] == BF16:  # gradients: input's dtype; filter's in fp32
            assert (r["grad_input_dtype"], r["grad_filter_dtype"]) == ("bfloat16", "float32")
