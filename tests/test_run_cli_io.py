"""``parconv run`` hardening: refusals printed once with exit 2 on every rank, the default
memory limit (the memory the ranks really have), output paths checked before the run,
compilation timed apart from compute, and bfloat16 arrays that survive ``--save``.

Pure tests first (fake environments, meminfo and cgroup trees), then a few small
``mpiexec -n 3`` launches under timeouts (helpers from tests/test_runtime_mpi.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from parconv.mpienv import (
    cgroup_available_bytes,
    default_memory_limit,
    is_rank_zero,
    launcher_rank,
    local_ranks,
    meminfo_available_bytes,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_runtime_mpi import mpiexec, parconv_cli  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20


# -- rank and ranks per node from the launcher's variables ----------------------------------

def test_launcher_rank_from_env():
    assert launcher_rank({}) is None and is_rank_zero({})
    assert launcher_rank({"PMI_RANK": "2"}) == 2 and not is_rank_zero({"PMI_RANK": "2"})
    assert launcher_rank({"OMPI_COMM_WORLD_RANK": "0"}) == 0
    assert launcher_rank({"SLURM_PROCID": "5"}) == 5
    # the process manager's variable wins over SLURM's (mpiexec inside an allocation)
    assert launcher_rank({"PMI_RANK": "1", "SLURM_PROCID": "0"}) == 1
    assert launcher_rank({"PMI_RANK": "x", "PMIX_RANK": "3"}) == 3


def test_local_ranks_from_env():
    assert local_ranks({}) is None
    assert local_ranks({"MPI_LOCALNRANKS": "3"}) == (3, "MPI_LOCALNRANKS")
    assert local_ranks({"OMPI_COMM_WORLD_LOCAL_SIZE": "6"}) == (6, "OMPI_COMM_WORLD_LOCAL_SIZE")
    slurm = {"SLURM_JOB_ID": "7", "SLURM_TASKS_PER_NODE": "3(x2),4"}
    assert local_ranks(slurm) == (4, "SLURM_TASKS_PER_NODE")  # the most crowded node
    assert local_ranks(slurm | {"SLURM_STEP_TASKS_PER_NODE": "2"}) == (2, "SLURM_STEP_TASKS_PER_NODE")
    assert local_ranks(slurm | {"MPI_LOCALNRANKS": "5"}) == (5, "MPI_LOCALNRANKS")
    assert local_ranks({"SLURM_TASKS_PER_NODE": "4"}) is None  # not inside a job


# -- the default memory limit --------------------------------------------------------------

def _meminfo(tmp_path: Path, avail_kib: int) -> Path:
    p = tmp_path / "meminfo"
    p.write_text(f"MemTotal:       99999999 kB\nMemFree:  1 kB\nMemAvailable:   {avail_kib} kB\n")
    return p


def _no_cgroup(tmp_path: Path) -> dict:
    (tmp_path / "cg").mkdir(exist_ok=True)
    (tmp_path / "proc_cgroup").write_text("0::/\n")
    return {"cgroup_root": tmp_path / "cg", "proc_cgroup": tmp_path / "proc_cgroup"}


def test_default_limit_meminfo_divided_by_ranks_on_node(tmp_path):
    mi = _meminfo(tmp_path, 12 * 1024 * 1024)  # 12 GiB
    assert meminfo_available_bytes(mi) == 12 * GiB
    lim = default_memory_limit((3, "MPI_LOCALNRANKS"), env={}, meminfo=mi, **_no_cgroup(tmp_path))
    assert lim.bytes == 4 * GiB
    assert "MemAvailable 12.00 GiB" in lim.source and "3 ranks on the node (MPI_LOCALNRANKS)" in lim.source
    assert lim.as_dict() == {"bytes": 4 * GiB, "source": lim.source}


def test_default_limit_slurm_mem_per_cpu_and_per_node(tmp_path):
    mi = _meminfo(tmp_path, 64 * 1024 * 1024)  # 64 GiB available: SLURM is tighter
    cg = _no_cgroup(tmp_path)
    env = {"SLURM_JOB_ID": "1", "SLURM_MEM_PER_CPU": "2000", "SLURM_CPUS_PER_TASK": "3"}
    lim = default_memory_limit((4, "SLURM_TASKS_PER_NODE"), env=env, meminfo=mi, **cg)
    assert lim.bytes == 2000 * 3 * MiB and "SLURM_MEM_PER_CPU 2000 MiB x 3 cpus" in lim.source
    env = {"SLURM_JOB_ID": "1", "SLURM_MEM_PER_NODE": "12000"}
    lim = default_memory_limit((4, "SLURM_TASKS_PER_NODE"), env=env, meminfo=mi, **cg)
    assert lim.bytes == 12000 * MiB // 4 and "SLURM_MEM_PER_NODE 12000 MiB / 4 ranks" in lim.source
    # a SLURM figure above what the node has: the node's memory wins
    env = {"SLURM_JOB_ID": "1", "SLURM_MEM_PER_CPU": str(100 * 1024)}
    lim = default_memory_limit((2, "x"), env=env, meminfo=mi, **cg)
    assert lim.bytes == 32 * GiB and "MemAvailable" in lim.source
    # SLURM_MEM_PER_NODE=0 means "the whole node": ignored
    lim = default_memory_limit((2, "x"), env={"SLURM_JOB_ID": "1", "SLURM_MEM_PER_NODE": "0"},
                               meminfo=mi, **cg)
    assert lim.bytes == 32 * GiB


def test_default_limit_cgroup_v2_and_v1(tmp_path):
    mi = _meminfo(tmp_path, 64 * 1024 * 1024)
    root = tmp_path / "cg"
    leaf = root / "job" / "step"
    leaf.mkdir(parents=True)
    (leaf / "memory.max").write_text("max\n")  # no limit at the leaf ...
    (root / "job" / "memory.max").write_text(f"{8 * GiB}\n")  # ... its parent has one
    (root / "job" / "memory.current").write_text(f"{3 * GiB}\n")
    (root / "job" / "memory.stat").write_text(f"anon 1\ninactive_file {GiB}\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/job/step\n")
    assert cgroup_available_bytes(root, proc) == (6 * GiB, str(root / "job" / "memory.max"))
    lim = default_memory_limit((3, "MPI_LOCALNRANKS"), env={}, meminfo=mi, cgroup_root=root,
                               proc_cgroup=proc)
    assert lim.bytes == 2 * GiB and "cgroup allows 6.00 GiB more" in lim.source

    v1 = tmp_path / "v1"
    d = v1 / "memory" / "batch"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text(f"{4 * GiB}\n")
    (d / "memory.usage_in_bytes").write_text(f"{GiB}\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # none
    proc.write_text("5:memory:/batch\n0::/\n")
    assert cgroup_available_bytes(v1, proc) == (3 * GiB, str(d / "memory.limit_in_bytes"))
    # a cgroup allowing more than MemAvailable does not raise the limit
    (d / "memory.limit_in_bytes").write_text(f"{1000 * GiB}\n")
    lim = default_memory_limit((2, "x"), env={}, meminfo=mi, cgroup_root=v1, proc_cgroup=proc)
    assert lim.bytes == 32 * GiB and "MemAvailable" in lim.source


def test_default_limit_nothing_known(tmp_path):
    lim = default_memory_limit((1, "x"), env={}, meminfo=tmp_path / "absent",
                               **_no_cgroup(tmp_path))
    assert lim.bytes is None and lim.source.startswith("none")


# -- argument errors printed once (launcher rank 0 only), exit 2 everywhere ----------------

def test_parser_messages_only_on_launcher_rank_zero(monkeypatch, capsys):
    from parconv.cli import main

    monkeypatch.setenv("PMI_RANK", "1")
    with pytest.raises(SystemExit) as exc:
        main(["run", "--batch", "two"])
    assert exc.value.code == 2 and capsys.readouterr().err == ""
    assert main(["plan", "--procs", "4", "--in-channels", "2", "--out-channels", "2",
                 "--input", "5", "--padding", "-1,0"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("PMI_RANK", "0")
    assert main(["plan", "--procs", "4", "--in-channels", "2", "--out-channels", "2",
                 "--input", "5", "--padding", "-1,0"]) == 2  # -1,0 is a value, not an option
    assert "padding must be non-negative" in capsys.readouterr().err


def test_geometry_flags_without_an_explicit_shape_are_refused(capsys):
    from parconv.cli import main

    assert main(["plan", "--procs", "2", "--padding", "1"]) == 2
    assert "--padding applies to an explicit shape only" in capsys.readouterr().err


# -- output files ---------------------------------------------------------------------------

def test_save_npz_bfloat16_round_trip(tmp_path):
    from parconv.io import load_npz, npz_path, save_npz

    x = (np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7).astype(ml_dtypes.bfloat16)
    i8 = np.arange(-3, 3, dtype=np.int8)
    path = save_npz(tmp_path / "a", x=x, i8=i8)
    assert path == npz_path(tmp_path / "a") == tmp_path / "a.npz"
    z = np.load(path)  # plain numpy: usable float32, the same values
    assert z["x"].dtype == np.float32 and str(z["x.dtype"]) == "bfloat16"
    np.testing.assert_array_equal(z["x"], x.astype(np.float32))
    back = load_npz(path)
    assert set(back) == {"x", "i8"} and back["x"].dtype == x.dtype
    np.testing.assert_array_equal(back["x"].view(np.uint16), x.view(np.uint16))  # bit-exact
    assert back["i8"].dtype == np.int8 and np.array_equal(back["i8"], i8)
    with pytest.raises(ValueError, match="reserved"):
        save_npz(tmp_path / "b.npz", **{"x.dtype": i8})


def test_check_output_path(tmp_path):
    from parconv.io import check_output_path

    check_output_path(tmp_path / "new.json", "--json")  # new file in a writable directory
    (tmp_path / "old.json").write_text("keep")
    check_output_path(tmp_path / "old.json", "--json")
    assert (tmp_path / "old.json").read_text() == "keep"  # left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]  # no probe left
    with pytest.raises(ValueError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "r.json", "--json")
    with pytest.raises(ValueError, match="is not a directory"):
        check_output_path(tmp_path / "old.json" / "r.npz", "--save")
    with pytest.raises(ValueError, match="is a directory"):
        check_output_path(tmp_path, "--save")


# -- under mpiexec: 3 ranks -----------------------------------------------------------------

def per_rank_cli(*args: str) -> list[str]:
    """``parconv run args`` on every rank, each rank then printing its own exit status."""
    script = 'python -m parconv run "$@"; echo "rank $PMI_RANK exit $?"'
    return ["sh", "-c", script.replace("python", sys.executable), "sh", *args]


def _exits(stdout: str) -> list[str]:
    return sorted(line for line in stdout.splitlines() if line.startswith("rank "))


EXIT2 = [f"rank {r} exit 2" for r in range(3)]


@pytest.mark.parametrize("extra,message", [
    (["--padding", "-1,0"], "--padding applies to an explicit shape only"),
    (["--in-channels", "2", "--out-channels", "2", "--input", "5", "--padding", "-1,0"],
     "padding must be non-negative"),
    (["--batch", "two"], "argument --batch: invalid int value"),
])
def test_refusals_printed_once_exit_2_on_every_rank(extra, message):
    proc, secs = mpiexec(3, per_rank_cli(*extra), timeout=60)
    assert _exits(proc.stdout) == EXIT2, proc.stdout + proc.stderr
    assert proc.stderr.count(message) == 1, proc.stderr
    assert proc.stderr.count("error:") == 1 and proc.stderr.count("usage:") <= 1
    assert secs < 30


def test_layer_too_large_for_the_node_refused_without_memory_flag():
    """No --memory: the limit is the node's available memory / 3 ranks, and a layer that
    cannot fit is refused before any allocation (the issue's 3000 x 1000 x 1000 layer,
    more channels on a node with more memory)."""
    from parconv.planner.plan import min_memory_grid
    from parconv.spec import ConvSpec

    avail = meminfo_available_bytes()
    assert avail is not None
    c = 3000
    while min_memory_grid(ConvSpec(1, c, 64, (1000, 1000), (1, 1)), 3)[1] < 1.5 * avail / 3:
        c *= 2
    need = min_memory_grid(ConvSpec(1, c, 64, (1000, 1000), (1, 1)), 3)[1]
    proc, secs = mpiexec(3, per_rank_cli("--in-channels", str(c), "--out-channels", "64",
                                         "--input", "1000,1000", "--kernel", "1,1"), timeout=60)
    assert _exits(proc.stdout) == EXIT2, proc.stdout + proc.stderr
    err = proc.stderr
    assert err.count("parconv run: error:") == 1, err
    assert "least planned peak memory per rank is" in err and f"({need} B, grid" in err
    assert "more than the memory limit" in err and "MemAvailable" in err
    assert "3 ranks on the node (MPI_LOCALNRANKS)" in err and "--memory none" in err
    assert "[parconv run]" not in proc.stdout  # nothing ran
    assert secs < 15, secs


@pytest.mark.parametrize("flag", ["--json", "--save"])
def test_unwritable_output_path_refused_before_running(flag, tmp_path):
    bad = tmp_path / "missing" / ("r.json" if flag == "--json" else "r.npz")
    proc, secs = mpiexec(3, per_rank_cli("--in-channels", "3", "--out-channels", "2",
                                         "--input", "6", "--kernel", "3", flag, str(bad)),
                         timeout=60)
    assert _exits(proc.stdout) == EXIT2, proc.stdout + proc.stderr
    assert proc.stderr.count(f"parconv run: error: {flag} {bad}: directory") == 1, proc.stderr
    assert "[parconv run]" not in proc.stdout and "failed" not in proc.stderr  # nothing ran
    assert not (tmp_path / "missing").exists()
    assert secs < 15, secs


def test_bf16_save_round_trip_and_compile_seconds(tmp_path, warm_numba):
    """bfloat16 input, filter and output saved with --save load back usable (plain np.load:
    exact float32; parconv.io.load_npz: bfloat16) and equal the run's arrays; compilation
    (or loading the numba cache) is reported as compile_seconds, outside compute."""
    from parconv.dtypes import parse_precision
    from parconv.io import load_npz
    from parconv.runtime.api import seeded_operands_global
    from parconv.runtime.verify import compare
    from parconv.spec import ConvSpec

    out_json, out_npz = tmp_path / "r.json", tmp_path / "r.npz"
    proc, _ = mpiexec(3, parconv_cli("--in-channels", "5", "--out-channels", "4", "--input", "7,5",
                                     "--kernel", "3", "--padding", "1", "--batch", "2",
                                     "--dtype", "bf16/bf16/fp32/bf16", "--grid", "1x1x1x3x1",
                                     "--seed", "3", "--verify", "--json", str(out_json),
                                     "--save", str(out_npz)), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compile s" in proc.stdout and "verify: OK" in proc.stdout
    assert "memory per rank: planned peak" in proc.stdout
    d = json.loads(out_json.read_text())
    assert d["memory_limit"]["bytes"] > 0 and "MemAvailable" in d["memory_limit"]["source"]
    assert 0 < d["planned_max_rank_memory_bytes"] <= d["memory_limit"]["bytes"]
    for e in d["ranks"]:
        assert e["compile_seconds"] > 0
        # a 2x5x7x5 layer: its compute is far below loading/compiling the kernel
        assert e["phase_seconds"]["compute"] < e["compile_seconds"]

    z = np.load(out_npz)
    for name in ("input", "weight", "output"):
        assert z[name].dtype == np.float32 and str(z[f"{name}.dtype"]) == "bfloat16"
    a = load_npz(out_npz)
    assert {k: str(v.dtype) for k, v in a.items()} == {"input": "bfloat16", "weight": "bfloat16",
                                                       "output": "bfloat16"}
    spec = ConvSpec(2, 5, 4, (7, 5), (3, 3), (1, 1), (1, 1), (1, 1),
                    parse_precision("bf16/bf16/fp32/bf16"))
    x, w = seeded_operands_global(spec, 3)
    np.testing.assert_array_equal(a["input"].view(np.uint16), x.view(np.uint16))
    np.testing.assert_array_equal(a["weight"].view(np.uint16), w.view(np.uint16))
    np.testing.assert_array_equal(z["input"], x.astype(np.float32))
    verdict = compare(spec, a["input"], a["weight"], a["output"])
    assert verdict.ok, verdict.message
