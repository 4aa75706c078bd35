"""The launcher (launch/parconv-launch) and parconv.mpienv: finding the MPI, binding,
refusing bad grids before launching, SLURM world-size checks, and one real launch."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from parconv import mpienv

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch" / "parconv-launch"
SMALL = ["--in-channels", "3", "--out-channels", "5", "--input", "9,7", "--kernel", "3",
         "--stride", "2", "--padding", "1", "--batch", "2"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PARCONV_", "PMI_", "OMPI_"))}
    env["PARCONV_PYTHON"] = sys.executable
    env.update(extra)
    return env


def _launch(args: list[str], env: dict[str, str] | None = None, timeout: int = 60):
    return subprocess.run([str(LAUNCH), *args], env=env or _clean_env(), capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------- mpienv (pure)

def test_slurm_ntasks_precedence():
    assert mpienv.slurm_ntasks({}) is None
    assert mpienv.slurm_ntasks({"SLURM_NPROCS": "3"}) == 3
    assert mpienv.slurm_ntasks({"SLURM_NTASKS": "8", "SLURM_NPROCS": "3"}) == 8
    assert mpienv.slurm_ntasks({"SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "8"}) == 4
    with pytest.raises(mpienv.WorldSizeError, match="SLURM_NTASKS='x'"):
        mpienv.slurm_ntasks({"SLURM_NTASKS": "x"})


def test_check_world_size():
    mpienv.check_world_size(1, {})                                  # not under SLURM
    mpienv.check_world_size(4, {"SLURM_NTASKS": "4"})
    with pytest.raises(mpienv.WorldSizeError, match=r"world size is 1 but SLURM_NTASKS=4.*srun --mpi=pmix"):
        mpienv.check_world_size(1, {"SLURM_NTASKS": "4"})
    # the process manager's own count wins: mpirun -n 2 inside a 4-task allocation is fine
    mpienv.check_world_size(2, {"SLURM_NTASKS": "4", "PMI_SIZE": "2"})
    with pytest.raises(mpienv.WorldSizeError, match="world size is 3 but OMPI_COMM_WORLD_SIZE=6"):
        mpienv.check_world_size(3, {"OMPI_COMM_WORLD_SIZE": "6", "SLURM_NTASKS": "3"})
    mpienv.check_world_size(1, {"SLURM_NTASKS": "4", "PARCONV_SKIP_WORLD_CHECK": "1"})
    assert issubclass(mpienv.WorldSizeError, ValueError)  # the CLI reports it as an error


def test_implementation_from_version():
    assert mpienv.implementation_from_version("HYDRA build details:\n Version: 4.2") == "hydra"
    assert mpienv.implementation_from_version("Intel(R) MPI Library for Linux* OS, Version 2021") == "hydra"
    assert mpienv.implementation_from_version("mpirun (Open MPI) 4.1.5\n") == "openmpi"
    assert mpienv.implementation_from_version("slurm 23.02.6") == "slurm"
    assert mpienv.implementation_from_version("something else") == "unknown"


def test_binding_and_commands():
    assert mpienv.binding_flags("hydra", 4, 8) == ["-bind-to", "core"]
    assert mpienv.binding_flags("hydra", 16, 8) == []
    assert mpienv.binding_flags("openmpi", 16, 8) == ["--oversubscribe", "--bind-to", "none"]
    assert mpienv.binding_flags("unknown", 2, 8) == []
    hydra = mpienv.Launcher(("mpiexec",), "hydra", "PATH")
    assert mpienv.launch_command(hydra, 2, ["prog"], cores=4, env={}) == \
        ["mpiexec", "-n", "2", "-bind-to", "core", "prog"]
    srun = mpienv.Launcher(("srun",), "slurm", "SLURM")
    assert mpienv.launch_command(srun, 8, ["prog"], cores=8, env={"PARCONV_SRUN_MPI": "pmi2"}) == \
        ["srun", "--ntasks=8", "--mpi=pmi2", "--cpu-bind=cores", "prog"]
    assert mpienv.launch_command(srun, 8, ["p"], cores=8, env={"PARCONV_SRUN_MPI": "none"})[:2] == \
        ["srun", "--ntasks=8"]
    with pytest.raises(ValueError, match="positive"):
        mpienv.launch_command(hydra, 0, ["prog"], cores=4, env={})


def test_available_cores_under_slurm():
    env = {"SLURM_JOB_ID": "1", "SLURM_CPUS_ON_NODE": "32", "SLURM_JOB_NUM_NODES": "4"}
    assert mpienv.available_cores(env) == 128
    assert mpienv.available_cores({}) == len(os.sched_getaffinity(0))


def test_find_launcher(tmp_path):
    found = mpienv.find_launcher(_clean_env())
    if (Path(sys.executable).parent / "mpiexec").exists():  # the PyPI mpich (launch/env.sh)
        assert found.source == "venv" and Path(found.command[0]).parent == Path(sys.executable).parent
        assert found.impl == "hydra"
    else:
        assert found.source == "PATH" and found.impl in mpienv.IMPLEMENTATIONS
    fake = tmp_path / "mympirun"
    fake.write_text("#!/bin/sh\necho 'mpirun (Open MPI) 5.0.3'\n")
    fake.chmod(0o755)
    env = _clean_env(PARCONV_MPIEXEC=f"{fake} --mca btl self")
    got = mpienv.find_launcher(env)
    assert got == mpienv.Launcher((str(fake), "--mca", "btl", "self"), "openmpi", "PARCONV_MPIEXEC")
    with pytest.raises(FileNotFoundError, match="not found"):
        mpienv.find_launcher(_clean_env(PARCONV_MPIEXEC="/nonexistent/mpiexec"))
    with pytest.raises(ValueError, match="PARCONV_MPI_IMPL"):
        mpienv.detect_implementation(["mpiexec"], {"PARCONV_MPI_IMPL": "lam"})


# ---------------------------------------------------------------- the launcher script

def test_dry_run_prints_plan_and_bound_command():
    r = _launch(["-n", "1", "--dry-run", *SMALL, "--verify", "--json", "out.json"])
    assert r.returncode == 0, r.stderr
    plan, run = [shlex.split(x) for x in r.stdout.splitlines() if not x.startswith("#")]
    assert plan == [sys.executable, "-m", "parconv", "plan", "--procs", "1", *SMALL]
    assert run[1:5] == ["-n", "1", "-bind-to", "core"]            # 1 rank fits the cores
    assert run[5:] == [sys.executable, "-m", "parconv", "run", "--grid", "auto", *SMALL,
                       "--verify", "--json", "out.json"]


def test_no_binding_when_oversubscribed():
    n = len(os.sched_getaffinity(0)) + 1
    r = _launch(["-n", str(n), "--dry-run", "--no-plan"])
    assert r.returncode == 0, r.stderr
    (run,) = [shlex.split(x) for x in r.stdout.splitlines() if not x.startswith("#")]
    assert run[1:3] == ["-n", str(n)] and "-bind-to" not in run


def test_refuses_before_launching(tmp_path):
    marker = tmp_path / "launched"
    fake = tmp_path / "mpiexec"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    env = _clean_env(PARCONV_MPIEXEC=str(fake), PARCONV_MPI_IMPL="hydra")
    r = _launch(["-n", "3", "--grid", "2x1x2x1x1", *SMALL], env)
    assert r.returncode == 2
    assert "refusing to launch: --grid 2x1x2x1x1 has 4 ranks" in r.stderr and "-n asks for 3" in r.stderr
    r = _launch(["-n", "4", "--grid", "1x1x4x1x1", *SMALL], env)  # C = 3 < 4
    assert r.returncode == 2 and "splits in-channels (3) into 4 blocks" in r.stderr
    r = _launch(["-n", "2", "--grid", "2x2", *SMALL], env)
    assert r.returncode == 2 and "expected five positive integers" in r.stderr
    r = _launch(["-n", "2", "--layer", "resnet50/nope"], env)
    assert r.returncode == 2 and "refusing to launch" in r.stderr
    assert not marker.exists()
    # the same fake launcher does get called for a valid request
    r = _launch(["-n", "2", "--no-plan", *SMALL], env)
    assert r.returncode == 0 and marker.exists()


@pytest.mark.timeout(120)
def test_real_launch_two_ranks(tmp_path):
    out = tmp_path / "run.json"
    r = _launch(["-n", "2", "--grid", "1x1x1x2x1", *SMALL, "--verify", "--json", str(out)],
                timeout=110)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "+ " + shlex.join([sys.executable, "-m", "parconv", "plan"]) in r.stdout
    d = json.loads(out.read_text())
    assert d["grid"] == {"b": 1, "k": 1, "c": 1, "h": 2, "w": 1}
    assert [x["recv_bytes"] for x in d["ranks"]] == [x["planned_recv_bytes"] for x in d["ranks"]]


@pytest.mark.timeout(60)
def test_singleton_under_fake_slurm_is_caught():
    """A process started without a process manager is 'rank 0 of 1'; with SLURM_NTASKS=4
    `parconv run` stops at start-up naming the problem (what a misconfigured `srun`
    produces), and runs when the counts agree."""
    cmd = [sys.executable, "-m", "parconv", "run", "--quiet", "--in-channels", "2",
           "--out-channels", "3", "--input", "4,4", "--kernel", "1"]
    r = subprocess.run(cmd, env=_clean_env(SLURM_NTASKS="4"), capture_output=True, text=True,
                       timeout=50)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "MPI world size is 1 but SLURM_NTASKS=4" in r.stderr and "srun --mpi=pmix" in r.stderr
    r = subprocess.run(cmd, env=_clean_env(SLURM_NTASKS="1"), capture_output=True, text=True,
                       timeout=50)
    assert r.returncode == 0, r.stderr
