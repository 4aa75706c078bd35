"""The network runtime under MPI (``mpiexec -n P`` subprocesses under timeouts; one
launch per rank count, cases batched in tests/mpi/run_network.py).

End-to-end ResNet-18 (32x32, batch 2) on 1, 2, 3, 4, 6 ranks against the single-process
reference, on the joint plan and on random placements (redistributions, spatial splits,
reordered ranks); every non-convolution op alone at 3 and 5 ranks; measured == planned
bytes per layer and per redistribution on every rank; ``parconv net run`` end to end and
its refusals (printed once, exit 2 on every rank).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_runtime_mpi import MPIEXEC, ROOT, mpi_env, mpiexec  # noqa: E402

SCRIPT = ROOT / "tests" / "mpi" / "run_network.py"
OPS = ["maxpool", "maxpool2", "avgpool", "avgpool_pad", "adaptive", "global", "flatten_fc",
       "relu", "add", "concat"]


def _cases(n: int) -> list[dict]:
    cases = [{"name": "resnet18", "kind": "model", "model": "resnet18", "image": [32, 32]}]
    if n > 1:
        cases.append({"name": "resnet18-random", "kind": "model", "model": "resnet18",
                      "image": [32, 32], "placements": "random", "seed": n})
    if n == 2:
        cases.append({"name": "resnet18-bf16", "kind": "model", "model": "resnet18",
                      "image": [32, 32], "dtype": "bf16"})
    if n in (3, 5):
        cases += [{"name": op, "kind": "ops", "op": op, "placements": "random", "seed": i}
                  for i, op in enumerate(OPS)]
        cases.append({"name": "relu-bf16", "kind": "ops", "op": "add", "dtype": "bf16",
                      "placements": "random", "seed": 99})
    return cases


@pytest.mark.parametrize("nprocs", [1, 2, 3, 4, 5, 6])
def test_network_runs_match_reference_and_plan(nprocs, tmp_path, warm_numba):
    cases = _cases(nprocs)
    src, dst = tmp_path / "cases.json", tmp_path / "results.json"
    src.write_text(json.dumps(cases))
    proc, secs = mpiexec(nprocs, [sys.executable, str(SCRIPT), str(src), str(dst)], 150)
    assert proc.returncode == 0, f"mpiexec -n {nprocs}:\n{proc.stdout}\n{proc.stderr}"
    print(f"mpiexec -n {nprocs}: {len(cases)} cases in {secs:.1f} s")
    results = json.loads(dst.read_text())
    assert [r["name"] for r in results] == [c["name"] for c in cases]
    for c, r in zip(cases, results):
        assert "error" not in r, f"{c['name']}: {r.get('error')}"
        rel = 3e-2 if c.get("dtype") == "bf16" else 1e-4
        assert r["max_err"] <= rel * r["scale"], (c["name"], r)
        assert r["mismatches"] == [], (c["name"], r["mismatches"][:5])
        assert r["same_twice"]
        if nprocs > 1:
            assert r["measured_any"] > 0
    if nprocs > 1:
        rand = next(r for r in results if r["name"] == "resnet18-random")
        assert rand["redistributions"] > 0
    if nprocs in (3, 5):          # every mechanism moved data at odd rank counts
        by = {r["name"]: r for r in results}
        for op in ("maxpool", "avgpool", "adaptive", "avgpool_pad"):
            assert by[op]["halo_bytes"] > 0, (op, by[op])
        assert by["global"]["reduce_bytes"] > 0
        for op in ("add", "concat", "flatten_fc"):
            assert by[op]["redistributions"] > 0, (op, by[op])


def test_net_run_cli_end_to_end_and_refusals(tmp_path, warm_numba):
    from parconv.io import load_npz, save_npz
    from parconv.network.models import build
    from parconv.network.weights import seeded_weights

    out, save = tmp_path / "r.json", tmp_path / "s.npz"
    base = ["parconv", "net", "run", "--model", "resnet18", "--batch", "2", "--image", "32,32"]
    proc, _ = mpiexec(3, [*base, "--verify", "--json", str(out), "--save", str(save),
                          "--quiet", "--timeout", "60", "--repeat", "2"], 150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "measured bytes equal planned bytes on every rank, layer and redistribution: yes" \
        in proc.stdout
    rep = json.loads(out.read_text())
    assert rep["procs"] == 3 and rep["measured_equals_planned"] and rep["verify"]["ok"]
    assert all(len(r["wall_seconds_all"]) == 2 for r in rep["ranks"])
    assert rep["measured_total_bytes"] == rep["planned_total_bytes"] > 0
    conv1 = next(lay for lay in rep["layers"] if lay["name"] == "conv1")
    assert len(conv1["ranks"]) == 3
    assert all(r["layer"] == r["planned_layer"] for r in conv1["ranks"])
    saved = load_npz(save)
    assert saved["input"].shape == (2, 3, 32, 32) and saved["output"].shape == (2, 1000)
    assert saved["conv1.weight"].shape == (64, 3, 7, 7) and "conv1.bias" in saved
    assert "bn1.weight" not in saved              # folded into conv1
    # the saved parameters reproduce the saved logits (no batch norm left to fold)
    from parconv.network.reference import forward

    g = build("resnet18", (32, 32))
    plain = {k: v for k, v in saved.items() if k not in ("input", "output")}
    for n in g.conv_nodes():
        n.attrs["bn"], n.attrs["bias"] = None, True
    np.testing.assert_allclose(forward(g, plain, saved["input"]), saved["output"],
                               rtol=1e-4, atol=1e-4 * np.abs(saved["output"]).max())

    # refusals: before any communication, one message, exit 2 on every rank
    w = seeded_weights(build("resnet18", (32, 32)), 0)
    del w["layer2.1.bn1.running_var"]
    save_npz(tmp_path / "w.npz", **w)
    for extra, msg in ((["--dtype", "int8"], "requantisation"),
                       (["--weights", str(tmp_path / "w.npz")], "layer2.1.bn1.running_var"),
                       (["--batch", "0"], "--batch must be a positive"),
                       (["--image", "0,5"], "image size must be positive")):
        proc, secs = mpiexec(2, [*base, *extra], 60)
        assert proc.returncode == 2, (extra, proc.stdout, proc.stderr)
        assert proc.stderr.count("parconv net run: error:") == 1, proc.stderr
        assert msg in proc.stderr, proc.stderr
    proc, _ = mpiexec(2, [*base, "--model", "resnet9"], 60)
    assert proc.returncode == 2 and proc.stderr.count("unknown model") == 1
    assert Path(MPIEXEC).exists() and mpi_env()
