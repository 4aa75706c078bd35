"""Real MPI runs of the runtime (``mpiexec -n P`` subprocesses under timeouts).

Plain ``pytest`` runs these: nothing is skipped. Many cases run inside ONE launch per
rank count (tests/mpi/run_cases.py) to keep the suite fast on 2 cores; the numba cache
is warmed once in the parent first (conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parconv.planner.partition import Grid, check_grid
from parconv.spec import ConvSpec

sys.path.insert(0, str(Path(__file__).parent / "mpi"))
from cases import CASES, case  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "mpi" / "run_cases.py"
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


def mpi_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_", "PARCONV_FAULT"))}
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def mpiexec(n: int, args: list[str], timeout: float = 90, env: dict | None = None):
    """Run ``mpiexec -n n args`` and return (completed process, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run([MPIEXEC, "-n", str(n), *args], capture_output=True, text=True,
                          timeout=timeout, env=env or mpi_env(), cwd=ROOT)
    return proc, time.perf_counter() - t0


def mpiexec_aborting(n: int, args: list[str], timeout: float = 60, env: dict | None = None):
    """``mpiexec`` for a job expected to abort, returning (completed process, seconds).

    A job whose launcher returned no output at all (not our line, not MPICH's own
    ``Abort(...)`` line) is launched once more: hydra can drop the pipes of an aborted job
    on a loaded machine even after the 1 s grace of ``abort_job``
    (``parconv/runtime/errors.py``). An empty output twice fails the test.
    """
    proc, secs = mpiexec(n, args, timeout, env)
    if proc.returncode != 0 and not (proc.stdout + proc.stderr).strip():
        print(f"mpiexec -n {n}: exit {proc.returncode} with no output at all; relaunching once")
        proc, secs = mpiexec(n, args, timeout, env)
        if proc.returncode != 0 and not (proc.stdout + proc.stderr).strip():
            pytest.fail(f"mpiexec -n {n} {' '.join(args)}: exit {proc.returncode} with no "
                        "output at all, twice")
    return proc, secs


def run_cases(n: int, cases: list[dict], tmp_path: Path, timeout: float = 120) -> list[dict]:
    src, dst = tmp_path / f"cases{n}.json", tmp_path / f"results{n}.json"
    src.write_text(json.dumps(cases))
    proc, secs = mpiexec(n, [sys.executable, str(SCRIPT), str(src), str(dst)], timeout)
    assert proc.returncode == 0, f"mpiexec -n {n} failed:\n{proc.stdout}\n{proc.stderr}"
    print(f"mpiexec -n {n}: {len(cases)} cases in {secs:.1f} s")
    return json.loads(dst.read_text())


def check_results(cases: list[dict], results: list[dict]) -> None:
    assert [r["name"] for r in results] == [c["name"] for c in cases]
    for c, r in zip(cases, results):
        if "expect_error" in c:
            assert "error" in r, f"{c['name']}: expected refusal, got {r}"
            assert c["expect_error"] in r["error"], (c["name"], r["error"])
            continue
        assert "error" not in r, f"{c['name']}: {r.get('error')}"
        assert r["ok"], f"{c['name']}: {r['message']}"
        assert r["measured"] == r["planned"], f"{c['name']}: measured {r['measured']} != planned {r['planned']}"
        assert r["bytes_match"]


@pytest.mark.parametrize("nprocs", sorted(CASES))
def test_fixed_cases(nprocs, tmp_path, warm_numba):
    cases = CASES[nprocs]
    check_results(cases, run_cases(nprocs, cases, tmp_path))


def test_cases_cover_every_grid_dimension_and_feature():
    runnable = [c for cs in CASES.values() for c in cs if "expect_error" not in c]
    split = {ax for c in runnable for ax, d in zip("bkchw", Grid.parse(c["grid"]).dims) if d > 1}
    assert split == set("bkchw")
    specs = [c["spec"] for c in runnable]
    assert any(s["stride"] == [2, 2] for s in specs)
    assert any(2 in s["dilation"] for s in specs)
    assert any(any(k % 2 == 0 for k in s["kernel"]) for s in specs)
    assert any(s["kernel"] == [1, 1] for s in specs)
    assert any(s["kernel"] == [7, 7] and s["stride"] == [2, 2] and s["padding"] == [3, 3] for s in specs)
    assert any(s["batch"] == 1 for s in specs)
    assert {s["dtype"] for s in specs} == {"fp32", "fp64", "fp16", "bf16", "int8", "uint8"}


# -- randomised shapes and grids (hypothesis draws a whole batch for one launch) ---------

PRIMES_GRIDS = {3: ["3x1x1x1x1", "1x3x1x1x1", "1x1x3x1x1", "1x1x1x3x1", "1x1x1x1x3"],
                4: ["1x1x1x2x2", "2x2x1x1x1", "1x2x2x1x1", "1x1x2x1x2", "1x1x1x4x1", "2x1x1x2x1"],
                6: ["1x1x1x3x2", "1x2x3x1x1", "2x1x1x1x3", "3x2x1x1x1", "1x1x2x3x1", "1x3x1x2x1"]}


@st.composite
def random_case(draw, nprocs: int, i: int):
    grid = Grid.parse(draw(st.sampled_from(PRIMES_GRIDS[nprocs])))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    ext = [dil[a] * (kernel[a] - 1) + 1 for a in range(2)]
    hw = tuple(draw(st.integers(max(1, ext[a] - 2 * pad[a]), ext[a] + 10)) for a in range(2))
    spec = ConvSpec(draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6)), hw,
                    kernel, stride, pad, dil)
    try:
        check_grid(spec, grid)
    except ValueError:
        spec = None
    dtype = draw(st.sampled_from(["fp32", "int8", "bf16", "fp64"]))
    if spec is None:  # keep the draw: a refused grid is a case too
        return case(f"random {i} refused", str(grid), 1, 1, 1, 1, 1,
                    expect_error="blocks: at most")
    return case(f"random {i}", str(grid), spec.B, spec.C, spec.K, list(spec.in_size),
                list(kernel), list(stride), list(pad), list(dil), dtype, seed=draw(st.integers(0, 99)))


@pytest.mark.parametrize("nprocs", [3, 4, 6])
@settings(max_examples=1, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_cases(nprocs, data, tmp_path_factory, warm_numba):
    cases = [data.draw(random_case(nprocs, i)) for i in range(8)]
    cases = [c for c in cases if c is not None]
    print(json.dumps(cases))
    check_results(cases, run_cases(nprocs, cases, tmp_path_factory.mktemp("rand")))


# -- the CLI under mpiexec ---------------------------------------------------------------

def parconv_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "parconv", "run", *args]


def test_cli_run_verify_json_save(tmp_path, warm_numba):
    out_json, out_npz = tmp_path / "run.json", tmp_path / "run.npz"
    proc, _ = mpiexec(3, parconv_cli("--in-channels", "5", "--out-channels", "6", "--input", "9,8",
                                     "--kernel", "3", "--padding", "1", "--batch", "2",
                                     "--dtype", "int8", "--grid", "auto", "--verify",
                                     "--json", str(out_json), "--save", str(out_npz)))
    assert proc.returncode == 0, proc.stderr
    assert "verify: OK" in proc.stdout and "equal planned bytes on every rank: yes" in proc.stdout
    d = json.loads(out_json.read_text())
    assert {"grid", "lower_bound_bytes", "ranks"} <= set(d)
    assert len(d["ranks"]) == 3 and d["measured_equals_planned"] and d["verify"]["ok"]
    max_recv = max(e["recv_bytes"] for e in d["ranks"])
    traffic = max(e["recv_bytes"] + e["send_bytes"] for e in d["ranks"])
    assert d["measured_max_rank_traffic_bytes"] == d["planned_max_rank_traffic_bytes"] == traffic
    if d["lower_bound_bytes"] is not None:  # the bound holds for the quantity it bounds
        assert traffic >= d["lower_bound_bytes"]
        assert d["ratio_to_bound"] == traffic / d["lower_bound_bytes"]
        assert d["recv_ratio_grid_family"] == max_recv / d["lower_bound_bytes"]
        assert "max recv + send per rank" in proc.stdout and "x the bound" in proc.stdout
    for e in d["ranks"]:
        assert e["recv_bytes"] == e["planned_recv_bytes"] == e["planner_recv_bytes"]
        assert e["send_bytes"] == e["planned_send_bytes"]
        assert set(e["operations"]) == {"input_allgather", "input_halo", "filter_allgather",
                                        "output_reduce_scatter"}
        assert "compute" in e["phase_seconds"]
    z = np.load(out_npz)
    from parconv.reference import conv2d_reference

    ref = conv2d_reference(z["input"], z["weight"], 1, 1, 1, "int32")
    np.testing.assert_array_equal(z["output"], ref)


def test_cli_gemmini_offload_reports_cycles_and_dram(tmp_path, warm_numba):
    out_json = tmp_path / "g.json"
    proc, _ = mpiexec(2, parconv_cli("--in-channels", "4", "--out-channels", "3", "--input", "7,6",
                                     "--kernel", "3", "--stride", "2", "--padding", "1",
                                     "--dtype", "uint8", "--grid", "1x1x1x1x2", "--offload",
                                     "gemmini", "--verify", "--json", str(out_json)))
    assert proc.returncode == 0, proc.stderr
    assert "gemmini cycles" in proc.stdout and "bit-exact" in proc.stdout
    d = json.loads(out_json.read_text())
    assert d["offload"] == "gemmini" and d["measured_equals_planned"]
    for e in d["ranks"]:
        assert e["gemmini"]["cycles"] > 0 and e["gemmini"]["dram_bytes"] > 0


def test_cli_verify_detects_a_wrong_result(warm_numba):
    env = mpi_env() | {"PARCONV_FAULT_RANK": "1", "PARCONV_FAULT_PHASE": "corrupt_output"}
    proc, _ = mpiexec(2, parconv_cli("--in-channels", "2", "--out-channels", "3", "--input", "6",
                                     "--kernel", "3", "--grid", "1x1x1x2x1", "--verify", "--quiet"),
                      env=env)
    assert proc.returncode == 1
    assert "verification failed" in proc.stderr


BAD = [
    (["--grid", "1x1x1x1x3"], "has 3 ranks but the job has 2"),
    (["--grid", "1x1x2x1x1", "--in-channels", "1", "--out-channels", "2", "--input", "5"],
     "splits in-channels (1) into 2 blocks"),
    (["--memory", "1KiB", "--in-channels", "8", "--out-channels", "8", "--input", "8",
      "--kernel", "3"], "memory"),
    (["--in-channels", "2", "--out-channels", "2", "--input", "3", "--kernel", "5"],
     "empty output"),
    (["--grid", "2x1"], "expected five positive integers"),
    (["--grid", "1x1x1x1x2", "--memory", "1KiB"], "more than --memory"),
    (["--offload", "gemmini", "--grid", "2x1x1x1x1", "--batch", "2"],
     "--offload gemmini runs int8/uint8 x int8 -> int32 only"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[m for _, m in BAD])
def test_cli_bad_input_fails_fast_on_every_rank(extra, message):
    proc, secs = mpiexec(2, parconv_cli(*extra), timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert proc.stderr.count("parconv run: error:") == 1  # printed once
    assert secs < 30


def test_cli_slurm_world_size_mismatch():
    """Under SLURM, a process that finds itself "rank 0 of 1" while SLURM started 4 tasks
    (an MPI build that did not pick up the job) stops with the reason."""
    env = mpi_env() | {"SLURM_NTASKS": "4", "SLURM_JOB_ID": "1"}
    proc = subprocess.run(parconv_cli("--grid", "1x1x1x1x1"), capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT)
    assert proc.returncode == 2
    assert "MPI world size is 1 but SLURM_NTASKS=4" in proc.stderr


@pytest.mark.parametrize("phase", ["input_halo", "compute"])
def test_fault_on_one_rank_aborts_job_quickly(phase, warm_numba):
    env = mpi_env() | {"PARCONV_FAULT_RANK": "1", "PARCONV_FAULT_PHASE": phase}
    proc, secs = mpiexec_aborting(4, parconv_cli("--in-channels", "4", "--out-channels", "4", "--input", "8",
                                        "--kernel", "3", "--padding", "1", "--grid", "1x1x1x2x2"),
                         timeout=60, env=env)
    assert proc.returncode != 0
    assert f"rank 1 failed: RuntimeError: injected fault in phase {phase}" in proc.stderr
    assert secs < 20


def test_narrow_integer_output_overflow_aborts_with_the_reason(warm_numba):
    """int8 output of int32 sums: values that do not fit raise (never wrap) and the job
    aborts naming the rank."""
    proc, secs = mpiexec_aborting(2, parconv_cli("--in-channels", "4", "--out-channels", "3", "--input", "6",
                                        "--kernel", "3", "--dtype", "int8/int8/int32/int8",
                                        "--grid", "1x1x2x1x1", "--quiet"), timeout=60)
    assert proc.returncode != 0
    assert "failed: AccumulatorOverflow" in proc.stderr and "does not fit the int8" in proc.stderr
    assert secs < 20


def test_api_fault_on_one_rank_aborts_job_quickly(tmp_path, warm_numba):
    """The Python API (conv2d_distributed) aborts the job too, not only the CLI."""
    src = tmp_path / "cases.json"
    src.write_text(json.dumps([case("api fault", "1x1x3x1x1", 1, 3, 2, 5, 3)]))
    env = mpi_env() | {"PARCONV_FAULT_RANK": "2", "PARCONV_FAULT_PHASE": "filter_allgather"}
    proc, secs = mpiexec_aborting(3, [sys.executable, str(SCRIPT), str(src), str(tmp_path / "r.json")],
                         timeout=60, env=env)
    assert proc.returncode != 0
    assert "rank 2 failed: RuntimeError: injected fault in phase filter_allgather" in proc.stderr
    assert secs < 20


def test_docs_custom_layer_example(tmp_path, warm_numba):
    """docs/runtime.md's custom-layer example runs as written under mpiexec -n 3 and its
    result verifies (the docs show how to build a layer, a grid and each rank's blocks)."""
    text = (ROOT / "docs" / "runtime.md").read_text()
    block = text.split("### A custom layer with your own data", 1)[1]
    code = block.split("```python\n", 1)[1].split("```", 1)[0]
    assert "local_block(" in code and 'precision="fp32"' in code
    script = tmp_path / "example.py"
    script.write_text(code)
    proc, _ = mpiexec(3, [sys.executable, str(script)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify: OK" in proc.stdout
    assert "owns input (2, 5, 4, 9)" in proc.stdout and "owns input (2, 5, 3, 9)" in proc.stdout
