"""sbatch templates: shell syntax, required directives, the commands they would run
(dry run under fake SLURM environments), one real run through the mpirun fallback, and
slurm/collect.py on the JSON of real runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from parconv import mpienv

ROOT = Path(__file__).resolve().parent.parent
SLURM = ROOT / "slurm"
TEMPLATES = ["layer.sbatch", "sweep.sbatch", "suite.sbatch"]
PY = sys.executable


def _env(tmp_path: Path, fake_srun: str | None = None, **extra: str) -> dict[str, str]:
    """A clean environment: no inherited SLURM_*/PARCONV_* variables; PATH holds a fake
    ``srun`` (printing ``fake_srun`` for ``--mpi=list``) when given, and no real one."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PARCONV_", "SBATCH_", "PMI_", "OMPI_"))}
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    srun = bindir / "srun"
    srun.unlink(missing_ok=True)
    if fake_srun is not None:
        srun.write_text(f"#!/bin/sh\n[ \"$1\" = --mpi=list ] && printf '{fake_srun}\\n'\nexit 0\n")
        srun.chmod(0o755)
    env["PATH"] = f"{bindir}:/usr/bin:/bin"
    env["PARCONV_PYTHON"] = PY
    env.update(extra)
    return env


def _dry(template: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**env, "PARCONV_DRY_RUN": "1"}
    return subprocess.run(["bash", str(SLURM / template)], env=env, capture_output=True,
                          text=True, timeout=60)


def _commands(out: str) -> list[list[str]]:
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("name", TEMPLATES + ["common.sh"])
def test_shell_syntax(name):
    r = subprocess.run(["bash", "-n", str(SLURM / name)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", TEMPLATES)
def test_required_directives(name):
    text = (SLURM / name).read_text()
    assert text.startswith("#!/bin/bash\n")
    directives = dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)", text, flags=re.M))
    for d in ("job-name", "nodes", "ntasks-per-node", "time", "output"):
        assert d in directives, f"{name} lacks #SBATCH --{d}"
    if name == "sweep.sbatch":
        assert re.fullmatch(r"0-\d+", directives["array"])
    # partition and account are documented, commented-out directives
    assert re.search(r"^##SBATCH --partition=", text, flags=re.M)
    assert re.search(r"^##SBATCH --account=", text, flags=re.M)
    # #SBATCH lines must come before the first command or sbatch ignores them
    first_cmd = min(i for i, ln in enumerate(text.splitlines()) if ln and not ln.startswith("#"))
    last_dir = max(i for i, ln in enumerate(text.splitlines()) if ln.startswith("#SBATCH"))
    assert last_dir < first_cmd


def test_layer_dry_run_srun_pmix(tmp_path):
    env = _env(tmp_path, fake_srun="MPI plugin types are...\\n\\tnone\\n\\tpmix\\n\\tpmi2",
               SLURM_JOB_ID="4242", SLURM_NTASKS="8", SLURM_JOB_NUM_NODES="2",
               PARCONV_LAYER="resnet50/layer4.0.conv2", PARCONV_BATCH="16",
               PARCONV_RUN_ARGS="--verify --seed 3")
    r = _dry("layer.sbatch", env)
    assert r.returncode == 0, r.stderr
    (cmd,) = _commands(r.stdout)
    i = cmd.index(PY)
    assert cmd[:i] == ["srun", "--ntasks=8", "--nodes=2", "--mpi=pmix", "--cpu-bind=cores",
                       "--kill-on-bad-exit=1"]
    out = ROOT / "results/slurm/layer-4242/layer-P8.json"
    assert cmd[i:] == [PY, "-m", "parconv", "run", "--batch", "16", "--dtype", "fp32", "--grid",
                       "auto", "--layer", "resnet50/layer4.0.conv2", "--json", str(out),
                       "--verify", "--seed", "3"]
    assert not out.parent.exists(), "a dry run must not create the output directory"


def test_layer_dry_run_pmi2_and_fallbacks(tmp_path):
    base = dict(SLURM_JOB_ID="7", SLURM_NTASKS="4", PARCONV_OUT=str(tmp_path / "o"))
    # pmi2 selected and offered
    r = _dry("layer.sbatch", _env(tmp_path, fake_srun="pmix\\npmi2", PARCONV_SRUN_MPI="pmi2", **base))
    assert r.returncode == 0, r.stderr
    assert "--mpi=pmi2" in _commands(r.stdout)[0]
    # srun present but without pmix support: mpirun fallback
    r = _dry("layer.sbatch", _env(tmp_path, fake_srun="none\\npmi2", **base))
    cmd = _commands(r.stdout)[0]
    assert cmd[0] != "srun" and cmd[1:3] == ["-n", "4"], cmd
    assert cmd[0] == str(ROOT / ".venv/bin/mpiexec") or cmd[0] == "mpirun"
    # explicit mpirun command with flags
    r = _dry("layer.sbatch", _env(tmp_path, fake_srun="pmix", PARCONV_LAUNCHER="mpirun",
                                  PARCONV_MPIRUN="mpirun --mca btl self", PARCONV_MPIRUN_FLAGS="--bind-to core",
                                  **base))
    cmd = _commands(r.stdout)[0]
    assert cmd[:7] == ["mpirun", "--mca", "btl", "self", "-n", "4", "--bind-to"]
    # a bad launcher name and a missing task count are errors, not silent defaults
    r = _dry("layer.sbatch", _env(tmp_path, PARCONV_LAUNCHER="ssh", **base))
    assert r.returncode != 0 and "PARCONV_LAUNCHER=ssh" in r.stderr
    r = _dry("layer.sbatch", _env(tmp_path))
    assert r.returncode != 0 and "PARCONV_NTASKS" in r.stderr


def test_sweep_dry_run_picks_node_count(tmp_path):
    common = dict(SLURM_JOB_ID="100", SLURM_ARRAY_JOB_ID="99", SLURM_NTASKS="64",
                  SLURM_JOB_NUM_NODES="16", SLURM_NTASKS_PER_NODE="4(x16)")
    seen = []
    for idx, nodes in enumerate([1, 2, 4, 8, 16]):
        r = _dry("sweep.sbatch", _env(tmp_path, fake_srun="pmix", SLURM_ARRAY_TASK_ID=str(idx), **common))
        assert r.returncode == 0, r.stderr
        cmd = _commands(r.stdout)[0]
        assert cmd[:3] == ["srun", f"--ntasks={4 * nodes}", f"--nodes={nodes}"]
        seen.append(cmd[-1])
    assert seen == [str(ROOT / f"results/slurm/sweep-99/sweep-N{n}-P{4 * n}.json")
                    for n in (1, 2, 4, 8, 16)]
    r = _dry("sweep.sbatch", _env(tmp_path, SLURM_ARRAY_TASK_ID="1", **{**common, "SLURM_NTASKS_PER_NODE": "6,4"}))
    assert _commands(r.stdout)[0][1:3] == ["-n", "12"]  # no srun here: the mpirun fallback
    # index past the list, and a count larger than the allocation: clear errors
    r = _dry("sweep.sbatch", _env(tmp_path, SLURM_ARRAY_TASK_ID="5", **common))
    assert r.returncode != 0 and "PARCONV_SWEEP_NODES has 5 counts" in r.stderr
    r = _dry("sweep.sbatch", _env(tmp_path, SLURM_ARRAY_TASK_ID="0", PARCONV_NODES="32", **common))
    assert r.returncode != 0 and "wants 32 nodes but the job has 16" in r.stderr
    # without --ntasks-per-node: ranks per node from SLURM_NTASKS / nodes
    env = _env(tmp_path, SLURM_ARRAY_TASK_ID="1", PARCONV_SWEEP_NODES="2 4",
               SLURM_NTASKS="12", SLURM_JOB_NUM_NODES="4")
    cmd = _commands(_dry("sweep.sbatch", env).stdout)[0]
    assert cmd[1:3] == ["-n", "12"]


def test_suite_dry_run_runs_every_distinct_layer(tmp_path):
    from parconv.layers import suite

    env = _env(tmp_path, SLURM_NTASKS="6", PARCONV_SUITE="resnet18", PARCONV_OUT=str(tmp_path / "s"))
    r = _dry("suite.sbatch", env)
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    names = [s.name for s in suite("resnet18", unique=True)]
    assert [c[c.index("--layer") + 1] for c in cmds[:-1]] == names
    assert all(c[1:3] == ["-n", "6"] for c in cmds[:-1])
    assert cmds[-1] == [PY, str(SLURM / "collect.py"), str(tmp_path / "s")]
    r = _dry("suite.sbatch", {**env, "PARCONV_UNIQUE": "0"})
    assert len(_commands(r.stdout)) == len(suite("resnet18")) + 1


@pytest.mark.timeout(180)
def test_layer_template_real_run_and_collect(tmp_path):
    """layer.sbatch for real (mpirun fallback, 2 ranks, fake SLURM_NTASKS), then
    collect.py over its JSON and a simulate JSON of the same layer."""
    out = tmp_path / "res"
    env = _env(tmp_path, SLURM_NTASKS="2", PARCONV_LAUNCHER="mpirun", PARCONV_OUT=str(out),
               PARCONV_MPIRUN=shlex.join(mpienv.find_launcher().command),
               PARCONV_LAYER="resnet18/layer4.0.conv2", PARCONV_BATCH="1",
               PARCONV_GRID="1x1x1x2x1", PARCONV_RUN_ARGS="--verify",
               NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache")))
    r = subprocess.run(["bash", str(SLURM / "layer.sbatch")], env=env, capture_output=True,
                       text=True, timeout=170)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    run_json = out / "layer-P2.json"
    measured = json.loads(run_json.read_text())
    assert len(measured["ranks"]) == 2
    sim = subprocess.run([PY, "-m", "parconv", "simulate", "--layer", "resnet18/layer4.0.conv2",
                          "--batch", "1", "--procs", "4", "--json", str(out / "sim-P4.json")],
                         capture_output=True, text=True, timeout=60)
    assert sim.returncode == 0, sim.stderr
    r = subprocess.run([PY, str(SLURM / "collect.py"), str(out)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    rows = {(row["kind"], row["procs"]): row for row in rep["rows"]}
    run_row, sim_row = rows[("run", 2)], rows[("simulate", 4)]
    assert run_row["layer"] == sim_row["layer"] == "resnet18/layer4.0.conv2"
    assert run_row["grid"] == "1x1x1x2x1"
    assert run_row["max_recv_bytes"] == max(x["recv_bytes"] for x in measured["ranks"])
    traffic = max(x["recv_bytes"] + x["send_bytes"] for x in measured["ranks"])
    assert run_row["max_traffic_bytes"] == traffic
    if measured["lower_bound_bytes"]:
        assert run_row["ratio_to_bound"] == traffic / measured["lower_bound_bytes"] >= 1
        assert run_row["ratio_to_bound"] == measured["ratio_to_bound"]
    assert sim_row["ratio_to_bound"] == json.loads((out / "sim-P4.json").read_text())["ratio_to_bound"]
    assert run_row["measured_equals_planned"] is True
    assert run_row["max_wall_seconds"] > 0
    assert sim_row["consistent"] is True
    md = (out / "report.md").read_text()
    assert "| resnet18/layer4.0.conv2 | run | 2 | 1x1x1x2x1 |" in md
    assert "Scaling of the busiest rank" in md   # the layer appears at P = 2 and 4


def test_collect_reports_foreign_files(tmp_path):
    (tmp_path / "junk.json").write_text('{"hello": 1}')
    r = subprocess.run([PY, str(SLURM / "collect.py"), str(tmp_path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1  # no usable rows
    assert "junk.json: skipped" in r.stderr
    r = subprocess.run([PY, str(SLURM / "collect.py"), str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no such file" in r.stderr


def test_bench_report_parts_and_missing_inputs(tmp_path, monkeypatch):
    """bench/report.py: a part whose input JSON is missing says which script to run (no
    crash, no stale figure); a simulated scaling part writes its figures, JSON and
    SUMMARY.md section in the results directory."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "QUICK_LAYERS", ["resnet50/layer4.0.conv2"])
    (tmp_path / "report_tiling.png").write_bytes(b"stale")
    assert report.main(["--only", "tiling,kernels,scaling", "--quick", "--no-measure"]) == 0
    tiling = json.loads((tmp_path / "report_tiling.json").read_text())
    assert tiling["status"] == "missing" and "bench/bench_tiling.py" in tiling["message"]
    assert not (tmp_path / "report_tiling.png").exists()
    sc = json.loads((tmp_path / "report_scaling.json").read_text())
    assert sc["status"] == "ok" and sc["command"].endswith("--only tiling,kernels,scaling --quick --no-measure")
    (lay,) = sc["data"]["layers"]
    assert [r["procs"] for r in lay["rows"]] == [4, 8, 64, 512, 4096]
    assert all(r["consistent"] and r["simulated_max_recv_bytes"] == r["planned_max_recv_bytes"]
               for r in lay["rows"])
    assert (tmp_path / "report_scaling_resnet50_layer4.0.conv2.png").stat().st_size > 10_000
    summary = (tmp_path / "SUMMARY.md").read_text()
    assert "**Missing input**: tiling.json not found" in summary
    assert "![report_scaling_resnet50_layer4.0.conv2.png]" in summary
    assert "Not generated yet: `.venv/bin/python bench/report.py --only walltime`" in summary
