"""Network runtime benchmark: wall time of ResNet-18 inference (fp32, seeded weights,
batch norms folded) under ``mpiexec -n P parconv net run`` at P = 1, 2, 4, against
PyTorch on the CPU with the same total threads (P), and each run's measured bytes
against ``parconv net simulate`` rank by rank.

* parconv: ``mpiexec -n P parconv net run --model resnet18 --batch B --image H,W
  --repeat R --json ...`` (one thread per rank; the report is the slowest rank's fastest
  of R runs on one runner, planned and built once);
* PyTorch: ResNet-18 built by hand from ``torch.nn`` with torchvision's module names and
  the same weights, ``torch.set_num_threads(P)``, ``inference_mode``, fastest of R runs;
* measured == simulated: every rank's (recv, send) bytes of every layer and every
  redistribution of the run equal ``parconv net simulate --procs P``'s.

This machine has 2 cores shared with other work: P = 4 is oversubscribed (4 ranks on 2
cores, and PyTorch's 4 threads likewise), so its times are not a scaling result.

Writes ``bench/results/network_run.json`` and ``.md``. Reproduce (repository root):
``python bench/bench_network_run.py [--procs 1,2,4] [--batch 2] [--image 64] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
sys.path.insert(0, str(ROOT.parent / "tests"))   # the hand-built torch ResNet-18
from torch_resnet import load_numpy_weights, torch_resnet18  # noqa: E402


def torch_time(p: int, batch: int, image: int, repeat: int) -> dict:
    import torch

    from parconv.network.models import build
    from parconv.network.reference import seeded_input
    from parconv.network.weights import seeded_weights

    torch.set_num_threads(p)
    w = seeded_weights(build("resnet18", image), 0)
    net = torch_resnet18(torch).eval()
    load_numpy_weights(torch, net, w)
    x = torch.from_numpy(seeded_input((batch, 3, image, image), 0))
    times = []
    with torch.inference_mode():
        net(x)
        for _ in range(repeat):
            t0 = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t0)
    return {"threads": p, "seconds": min(times), "all_seconds": times,
            "torch": torch.__version__}


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_"))}
    e.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    e.setdefault("NUMBA_CACHE_DIR", str(ROOT.parent / ".numba_cache"))
    return e


def parconv_run(p: int, batch: int, image: int, repeat: int, tmp: Path) -> dict:
    base = ["--model", "resnet18", "--batch", str(batch), "--image", f"{image},{image}"]
    run_json, sim_json = tmp / f"run{p}.json", tmp / f"sim{p}.json"
    cmd = [MPIEXEC, "-n", str(p), "parconv", "net", "run", *base, "--repeat", str(repeat),
           "--quiet", "--json", str(run_json)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env())
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    sim = subprocess.run([sys.executable, "-m", "parconv", "net", "simulate", *base,
                          "--procs", str(p), "--json", str(sim_json)],
                         capture_output=True, text=True, timeout=600, env=env())
    if sim.returncode:
        raise SystemExit(f"net simulate failed:\n{sim.stdout}\n{sim.stderr}")
    run, simd = json.loads(run_json.read_text()), json.loads(sim_json.read_text())
    equal = True
    for lr, ls in zip(run["layers"], simd["layers"]):
        assert lr["name"] == ls["name"]
        got = np.array([r["layer"] for r in lr["ranks"]]).T
        want = np.array([ls["ranks"]["layer_recv"], ls["ranks"]["layer_send"]])
        equal &= bool(np.array_equal(got, want))
        for x, v in ls["ranks"]["redistributions"].items():
            got = np.array([r["redistributions"].get(x, [0, 0]) for r in lr["ranks"]]).T
            equal &= bool(np.array_equal(got, np.array([v["recv"], v["send"]])))
    return {"procs": p, "seconds": run["wall_seconds"],
            "measured_total_bytes": run["measured_total_bytes"],
            "planned_total_bytes": run["planned_total_bytes"],
            "measured_equals_planned": run["measured_equals_planned"],
            "measured_equals_simulated": equal and simd["consistent"],
            "grids": {lay["name"]: lay["grid"] for lay in run["layers"] if lay["grid"]},
            "command": " ".join(["mpiexec", "-n", str(p), "parconv", "net", "run", *base,
                                 "--repeat", str(repeat), "--json", "F"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", default="1,2,4")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--image", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    procs = [int(v) for v in a.procs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for p in procs:
            r = parconv_run(p, a.batch, a.image, a.repeat, Path(d))
            r["torch"] = torch_time(p, a.batch, a.image, a.repeat)
            rows.append(r)
            print(f"P={p}: parconv {r['seconds']:.3f} s, torch {r['torch']['seconds']:.3f} s, "
                  f"bytes measured == simulated: {r['measured_equals_simulated']}", flush=True)
    cores = os.cpu_count()
    command = (f"python bench/bench_network_run.py --procs {a.procs} --batch {a.batch} "
               f"--image {a.image} --repeat {a.repeat}")
    out = {"command": command, "model": "resnet18", "batch": a.batch, "image": a.image,
           "dtype": "fp32", "cores": cores, "machine": platform.platform(), "rows": rows}
    (ROOT / "results" / "network_run.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# Network runtime: ResNet-18 inference wall time (batch {a.batch}, "
             f"{a.image}x{a.image}, fp32)", "", f"Command: `{command}`", "",
             f"Machine: {platform.platform()}, {cores} cores shared with other work. "
             "P ranks of one thread each against PyTorch CPU with P threads; P > cores is "
             "**oversubscribed** (not a scaling result). Times: fastest of the repeats (parconv: "
             "slowest rank's fastest run on one runner, planned and built once).", "",
             "| P | parconv s | PyTorch s | parconv / PyTorch | bytes (busiest rank per step, "
             "summed) | measured == planned | measured == simulated (every rank, layer, "
             "redistribution) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        note = " (oversubscribed)" if r["procs"] > (cores or 1) else ""
        lines.append(f"| {r['procs']}{note} | {r['seconds']:.3f} | {r['torch']['seconds']:.3f} | "
                     f"{r['seconds'] / r['torch']['seconds']:.1f} | {r['measured_total_bytes']} | "
                     f"{'yes' if r['measured_equals_planned'] else 'NO'} | "
                     f"{'yes' if r['measured_equals_simulated'] else 'NO'} |")
    lines += ["", "parconv's local kernel is a numba direct convolution and every layer "
              "boundary is an MPI step; PyTorch runs oneDNN/MKL kernels in one process, so "
              "the ratio is the price of the distributed runtime at this small size, not of "
              "its communication (which the byte columns count).", ""]
    (ROOT / "results" / "network_run.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
