"""Sequential tiling benchmark: ResNet-50 (batch 32, int8 and fp32), M = 256 KiB and 1 MiB.

Measures, per layer:
* the best box tiling's exact traffic ÷ the sequential lower bound
  (:func:`parconv.bounds.sequential_bound`); targets: geometric mean ≤ 1.3 per
  (preset, M), no layer above 2;
* beside it, the traffic ÷ the bound for schedules with one accumulation chain per
  output (``sequential_bound(..., single_chain=True)``), proved for a class that
  contains every box tiling with any loop order, hence the tighter yardstick for them;
* the Im2Col baseline's traffic ÷ the tiling's (how far below Im2Col the tiling is);
* the tiling ÷ the compulsory traffic (every datum moved once), for context;
* the optimiser's time per layer on this machine (target < 1 s).

Layers of identical shape are solved once (the result is a pure function of the shape,
precision and M) and reported under every name. Traffic is the exact formula of
:mod:`parconv.tiling`, which the tests check against the explicit-memory replay of
:mod:`parconv.replay` (too slow for full-size layers).

Writes ``bench/results/tiling.json`` and ``bench/results/tiling.md``.

Reproduce: ``.venv/bin/python bench/bench_tiling.py`` (from the repository root).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

from parconv.bounds import sequential_bound
from parconv.dtypes import PRESETS
from parconv.im2col import im2col_breakdown
from parconv.layers import suite
from parconv.tiling import best_tiling, compulsory_bits, traffic_breakdown

PRESET_NAMES = ("int8", "fp32")
MEMORIES = {"256KiB": 256 * 1024, "1MiB": 1024 * 1024}
BATCH = 32
TARGET_GEOMEAN, TARGET_MAX, TARGET_SECONDS = 1.3, 2.0, 1.0
ROOT = Path(__file__).resolve().parent
COMMAND = ".venv/bin/python bench/bench_tiling.py"


CAUSES = """\
Every figure above is the optimum over box tilings of the searched orders (exhaustive
over the candidate sizes; no random loop order did better in a one-off check), so the
misses measure the distance between what box tilings achieve and what the bound can
certify, not a search failure. The general bound lets each segment's footprint be
`2M + T` (a segment may merge partial sums created independently, which no box tiling
does); the bound for schedules with one accumulation chain per output (every box tiling
with any loop order) uses `M + T` and is the fair yardstick for box tilings, column
"traffic/one-chain bound". Causes of the gap, in order:

* **Segment footprint `2M + T` vs `M + T`** (general bound vs one-chain bound, where
  (I1) or (I1w) binds): the general bound's leading term is `sqrt(2)·G·sqrt(p_I·p_F·p_O/
  (rho·M))`, the one-chain bound's `2·G·sqrt(...)`, the tight matmul constant
  `2mnk/sqrt(M)` (Smith et al. 2019) for 1x1 layers. This accounts for up to 1.41x of
  the traffic/bound column; whether schedules merging partial sums can beat the
  one-chain bound is open (docs/theory.md §4), so the general bound cannot be raised.
* **Output stores.** Neither segment bound adds the one final store per output
  (`p_out·|Out|`; adding it to the segment term is invalid: real tilings go below the
  sum), while every tiling moves it, and a tiling whose reduction loops (c, r, s) are
  not innermost also stores and reloads partial sums.
* **Borders.** Edge tiles (a loop extent not divisible by its tile) and clipped or
  overlapping halo windows (an input row read by two h-blocks is loaded twice) move
  more per iteration than the interior tiles the bound's footprint optimum describes.
* **Integrality.** Tile counts are integers and tiles must fit: 32 images in blocks of
  5 take 7 passes where 6.4 would be ideal, and a channel count of 67 per tile leaves
  part of M unused.
* **Only the compulsory term binds** (int8 layer4.1/4.2.conv2 at 256 KiB: the filter is
  2.25 MiB and the input 0.77 MiB, neither fits, so one of them must be streamed several
  times). The segment terms are below the compulsory traffic there, so both bounds
  certify only compulsory traffic; the tiling keeps 8 images' input resident and
  streams the filter 4 times.
"""


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def shape_key(spec) -> tuple:
    return (spec.B, spec.C, spec.K, spec.in_size, spec.kernel, spec.stride, spec.padding,
            spec.dilation)


def measure(preset: str, memory: int) -> dict:
    rows, cache = [], {}
    for spec in suite("resnet50", BATCH, PRESETS[preset]):
        key = shape_key(spec)
        if key not in cache:
            t0, c0 = time.perf_counter(), time.process_time()
            tiling = best_tiling(spec, memory)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            bound = sequential_bound(spec, memory)
            chain = sequential_bound(spec, memory, single_chain=True)
            im2col = im2col_breakdown(spec, memory)
            cache[key] = {
                "tile": tiling.tile, "order": tiling.order, "loop_order": tiling.loop_order,
                "traffic_bytes": tiling.traffic_bits / 8,
                "breakdown_bytes": {k: v / 8 for k, v in
                                    traffic_breakdown(spec, tiling.tile, tiling.order).items()},
                "lower_bound_bytes": bound.bytes, "binding": bound.binding,
                "compulsory_bytes": compulsory_bits(spec) / 8,
                "im2col_traffic_bytes": im2col["total"] / 8,
                "ratio_to_bound": tiling.traffic_bits / bound.bits,
                "single_chain_bound_bytes": chain.bytes, "single_chain_binding": chain.binding,
                "ratio_to_single_chain_bound": tiling.traffic_bits / chain.bits,
                "ratio_to_compulsory": tiling.traffic_bits / compulsory_bits(spec),
                "im2col_over_tiling": im2col["total"] / tiling.traffic_bits,
                "optimiser_seconds": seconds, "optimiser_cpu_seconds": cpu,
                "stride": list(spec.stride), "kernel": list(spec.kernel),
            }
        rows.append({"layer": spec.name, **cache[key]})
    ratios = [r["ratio_to_bound"] for r in rows]
    worst = max(rows, key=lambda r: r["ratio_to_bound"])
    chain = [r["ratio_to_single_chain_bound"] for r in rows]
    worst_c = max(rows, key=lambda r: r["ratio_to_single_chain_bound"])
    return {
        "preset": preset, "precision": PRESETS[preset].label(), "memory_bytes": memory,
        "layers": rows,
        "geomean_ratio_to_bound": geomean(ratios),
        "max_ratio_to_bound": worst["ratio_to_bound"], "worst_layer": worst["layer"],
        "geomean_ratio_to_single_chain_bound": geomean(chain),
        "max_ratio_to_single_chain_bound": worst_c["ratio_to_single_chain_bound"],
        "worst_layer_single_chain": worst_c["layer"],
        "layers_above_2_single_chain": [r["layer"] for r in rows
                                        if r["ratio_to_single_chain_bound"] > TARGET_MAX],
        "layers_above_2": [r["layer"] for r in rows if r["ratio_to_bound"] > TARGET_MAX],
        "geomean_im2col_over_tiling": geomean([r["im2col_over_tiling"] for r in rows]),
        "min_im2col_over_tiling": min(r["im2col_over_tiling"] for r in rows),
        "geomean_ratio_to_compulsory": geomean([r["ratio_to_compulsory"] for r in rows]),
        "layers_bound_compulsory": sum(r["binding"] == "compulsory" for r in rows),
        "unique_shapes": len(cache),
        "max_optimiser_seconds": max(v["optimiser_seconds"] for v in cache.values()),
        "max_optimiser_cpu_seconds": max(v["optimiser_cpu_seconds"] for v in cache.values()),
        "total_optimiser_seconds": sum(v["optimiser_seconds"] for v in cache.values()),
    }


def render_md(result: dict) -> str:
    lines = [
        "# Sequential tiling vs lower bound and Im2Col (ResNet-50, batch 32)",
        "",
        f"Reproduce: `{COMMAND}` (from the repository root; {result['total_seconds']:.0f} s on "
        f"this machine: {result['machine']}).",
        "",
        "Traffic = exact bits moved between a fast memory of M bytes and slow memory by the "
        "best box tiling and tile-loop order (`parconv.tiling.best_tiling`; semantics and "
        "formula in `docs/tiling.md`, checked against the explicit-memory replay in the "
        "tests). Bound = `parconv.bounds.sequential_bound` (general: any schedule). One-chain "
        "bound = `sequential_bound(..., single_chain=True)`: schedules with one accumulation "
        "chain per output, a class containing every box tiling with any loop order "
        "(docs/theory.md §4), so the yardstick for box tilings. Im2Col = materialised matrix + "
        "best GEMM tiling (`parconv.im2col`).",
        "",
        f"Targets: geometric mean of traffic/bound ≤ {TARGET_GEOMEAN}, no layer above "
        f"{TARGET_MAX}, optimiser < {TARGET_SECONDS} s per layer.",
        "",
        "| preset | M | geomean traffic/bound | max (layer) | layers > 2 "
        "| geomean traffic/one-chain bound | max (layer) | layers > 2 | geomean Im2Col/tiling "
        "| min Im2Col/tiling | geomean traffic/compulsory | bound = compulsory | max optimiser s "
        "(wall / CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["configs"]:
        lines.append(
            f"| {c['preset']} | {c['memory_label']} | {c['geomean_ratio_to_bound']:.3f} | "
            f"{c['max_ratio_to_bound']:.3f} ({c['worst_layer'].split('/')[1]}) | "
            f"{len(c['layers_above_2'])}/{len(c['layers'])} | "
            f"{c['geomean_ratio_to_single_chain_bound']:.3f} | "
            f"{c['max_ratio_to_single_chain_bound']:.3f} ({c['worst_layer_single_chain'].split('/')[1]}) | "
            f"{len(c['layers_above_2_single_chain'])}/{len(c['layers'])} | "
            f"{c['geomean_im2col_over_tiling']:.2f} | "
            f"{c['min_im2col_over_tiling']:.2f} | {c['geomean_ratio_to_compulsory']:.3f} | "
            f"{c['layers_bound_compulsory']}/{len(c['layers'])} | {c['max_optimiser_seconds']:.2f} / "
            f"{c['max_optimiser_cpu_seconds']:.2f} |")
    lines += ["", "## Layers above the 2x target", ""]
    for c in result["configs"]:
        for r in c["layers"]:
            if r["ratio_to_bound"] > TARGET_MAX:
                lines.append(
                    f"- {c['preset']} {c['memory_label']} {r['layer']} ({r['kernel'][0]}x{r['kernel'][1]}, "
                    f"stride {r['stride'][0]}): {r['ratio_to_bound']:.2f}x the bound "
                    f"({r['binding']}), {r['ratio_to_single_chain_bound']:.2f}x the one-chain "
                    f"bound, {r['ratio_to_compulsory']:.2f}x compulsory")
    lines += ["", "## Causes of the misses", "", CAUSES, "", "## Per layer", ""]
    for c in result["configs"]:
        lines += [f"### {c['preset']} ({c['precision']}), M = {c['memory_label']}", "",
                  "| layer | order | tile b,k,c,h,w,r,s | traffic MiB | bound MiB (binding) | "
                  "traffic/bound | traffic/one-chain bound | Im2Col/tiling |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in c["layers"]:
            t = r["tile"]
            lines.append(
                f"| {r['layer'].split('/')[1]} | {r['order']} | "
                f"{','.join(str(t[d]) for d in 'bkchwrs')} | {r['traffic_bytes'] / 2**20:.2f} | "
                f"{r['lower_bound_bytes'] / 2**20:.2f} ({r['binding'].split(':')[0]}) | "
                f"{r['ratio_to_bound']:.3f} | {r['ratio_to_single_chain_bound']:.3f} | "
                f"{r['im2col_over_tiling']:.2f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results"), help="output directory")
    ap.add_argument("--render", metavar="JSON", help="only re-render the markdown from a results JSON")
    args = ap.parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        (Path(args.out) / "tiling.md").write_text(render_md(result))
        return 0
    t0 = time.perf_counter()
    configs = []
    for preset in PRESET_NAMES:
        for label, memory in MEMORIES.items():
            c = measure(preset, memory)
            c["memory_label"] = label
            configs.append(c)
            print(f"{preset:5s} M={label:6s} geomean traffic/bound {c['geomean_ratio_to_bound']:.3f}  "
                  f"traffic/one-chain bound {c['geomean_ratio_to_single_chain_bound']:.3f} "
                  f"(max {c['max_ratio_to_single_chain_bound']:.3f})  "
                  f"max {c['max_ratio_to_bound']:.3f} ({c['worst_layer']})  layers>2: "
                  f"{len(c['layers_above_2'])}  geomean Im2Col/tiling {c['geomean_im2col_over_tiling']:.2f}  "
                  f"max optimiser {c['max_optimiser_seconds']:.2f}s wall, {c['max_optimiser_cpu_seconds']:.2f}s CPU",
                  flush=True)
    result = {
        "command": COMMAND, "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                                       f"Python {platform.python_version()}",
        "batch": BATCH, "suite": "resnet50",
        "targets": {"geomean_ratio_to_bound": TARGET_GEOMEAN, "max_ratio_to_bound": TARGET_MAX,
                    "optimiser_seconds_per_layer": TARGET_SECONDS},
        "configs": configs, "total_seconds": time.perf_counter() - t0,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiling.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "tiling.md").write_text(render_md(result))
    print(f"wrote {out / 'tiling.json'} and {out / 'tiling.md'} ({result['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
