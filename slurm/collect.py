#!/usr/bin/env python3
"""Collect the JSON files of a sweep (``parconv run --json`` or ``parconv simulate --json``)
into one report: ``report.md`` (tables) and ``report.json`` (one row per file).

Usage::

    python slurm/collect.py DIR_OR_FILE... [--out-md FILE] [--out-json FILE]

Directories are searched for ``*.json`` (files named ``report*.json`` are skipped).
Outputs default to ``report.md`` / ``report.json`` in the first directory given. Each
row: the layer, P, the grid, the busiest / mean / least busy rank's received bytes, the
busiest rank's received + sent bytes, the memory-independent lower bound and the ratio
of received + sent to it (the quantity the bound bounds; the received-only ratio is kept
as ``recv_ratio_grid_family``, a grid-family figure), whether the measured bytes equal the
planned ones on every rank (runs), the slowest rank's wall time (runs) and, per layer
with several P, the scaling of the busiest rank's bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _grid_text(g: Any) -> str:
    if isinstance(g, dict):
        return "x".join(str(g[a]) for a in "bkchw")
    return str(g)


def _layer_name(d: dict[str, Any], path: Path) -> str:
    lay = d.get("layer")
    if isinstance(lay, dict) and lay.get("name") and lay["name"] != "custom":
        return str(lay["name"])
    if isinstance(lay, str):
        return lay
    return path.stem


def row_from_json(d: dict[str, Any], path: Path) -> dict[str, Any]:
    """One report row from a ``parconv run``/``simulate`` JSON payload.

    Raises
    ------
    ValueError
        If the payload has no per-rank ``ranks`` list with ``recv_bytes``.
    """
    ranks = d.get("ranks")
    if not isinstance(ranks, list) or not ranks or "recv_bytes" not in ranks[0]:
        raise ValueError(f"{path}: no per-rank 'ranks' list with 'recv_bytes' (not a "
                         "`parconv run --json` or `parconv simulate --json` file)")
    recv = [int(r["recv_bytes"]) for r in ranks]
    traffic = [int(r["recv_bytes"]) + int(r.get("send_bytes", 0)) for r in ranks]
    has_send = all("send_bytes" in r for r in ranks)
    kind = "simulate" if d.get("command") == "simulate" else "run"
    lb = d.get("lower_bound_bytes")
    row: dict[str, Any] = {
        "file": str(path), "kind": kind, "layer": _layer_name(d, path),
        "procs": len(ranks), "grid": _grid_text(d.get("grid", "?")),
        "max_recv_bytes": max(recv), "mean_recv_bytes": sum(recv) / len(recv),
        "min_recv_bytes": min(recv), "total_recv_bytes": sum(recv),
        "max_traffic_bytes": max(traffic) if has_send else None,
        "lower_bound_bytes": lb,
        # the bound bounds the busiest rank's received + sent bytes (docs/theory.md §5)
        "ratio_to_bound": (max(traffic) / lb) if lb and has_send else None,
        # received only against the busiest-processor lemma (written by run/simulate as
        # lemma_bound_bytes; older files without it: against the bound they recorded)
        "recv_ratio_grid_family": ((max(recv) / (d.get("lemma_bound_bytes") or lb))
                                   if lb else None),
    }
    if kind == "run":
        if all("planned_recv_bytes" in r for r in ranks):
            row["measured_equals_planned"] = all(
                r["recv_bytes"] == r["planned_recv_bytes"]
                and r.get("send_bytes") == r.get("planned_send_bytes") for r in ranks)
        walls = [r["wall_seconds"] for r in ranks if "wall_seconds" in r]
        row["max_wall_seconds"] = max(walls) if walls else None
        row["verify"] = d.get("verify")
    else:
        row["consistent"] = d.get("consistent")
    return row


def collect(paths: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for every JSON file under ``paths`` (sorted by layer, P) and the problems met
    (unreadable or foreign files, reported rather than fatal)."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.glob("*.json") if not f.name.startswith("report"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    rows, problems = [], []
    for f in files:
        try:
            rows.append(row_from_json(json.loads(f.read_text()), f))
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{f}: skipped: {exc}")
    rows.sort(key=lambda r: (r["layer"], r["procs"], r["kind"]))
    return rows, problems


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e5 else f"{v:.4g}"
    return str(v)


def markdown(rows: list[dict[str, Any]], problems: list[str]) -> str:
    """The report as markdown."""
    out = ["# parconv sweep report", "",
           f"{len(rows)} result file(s). Bytes are per rank. \"recv+send / bound\" compares the "
           "busiest rank's received + sent bytes with the memory-independent bound (what it "
           "bounds); \"recv / bound\" is a grid-family figure, not a bound ratio (a relaying "
           "schedule receives less than the bound).", ""]
    cols = [("layer", "layer"), ("kind", "kind"), ("procs", "P"), ("grid", "grid b×k×c×h×w"),
            ("max_recv_bytes", "max recv B"), ("mean_recv_bytes", "mean recv B"),
            ("min_recv_bytes", "min recv B"), ("max_traffic_bytes", "max recv+send B"),
            ("lower_bound_bytes", "lower bound B"), ("ratio_to_bound", "recv+send / bound"),
            ("recv_ratio_grid_family", "recv / lemma (grid family)"),
            ("measured_equals_planned", "measured = planned"),
            ("max_wall_seconds", "wall s (slowest rank)")]
    out.append("| " + " | ".join(h for _, h in cols) + " |")
    out.append("|" + "---|" * len(cols))
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |")
    by_layer: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], []).append(r)
    scaling = {k: v for k, v in by_layer.items() if len({r["procs"] for r in v}) > 1}
    if scaling:
        out += ["", "## Scaling of the busiest rank's received bytes", "",
                "| layer | P | max recv B | vs smallest P |", "|---|---|---|---|"]
        for name, rs in scaling.items():
            base = rs[0]
            for r in rs:
                rel = r["max_recv_bytes"] / base["max_recv_bytes"] if base["max_recv_bytes"] else None
                out.append(f"| {name} | {r['procs']} | {r['max_recv_bytes']} | {_fmt(rel)} |")
    bad = [r for r in rows if r.get("measured_equals_planned") is False or r.get("consistent") is False]
    if bad:
        out += ["", "## Problems", ""] + [f"- {r['file']}: measured bytes differ from the plan "
                                          "or the schedule is inconsistent" for r in bad]
    if problems:
        out += ["", "## Skipped files", ""] + [f"- {p}" for p in problems]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="collect.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", type=Path, help="directories or JSON files")
    ap.add_argument("--out-md", type=Path, help="markdown report (default DIR/report.md)")
    ap.add_argument("--out-json", type=Path, help="JSON report (default DIR/report.json)")
    args = ap.parse_args(argv)
    try:
        rows, problems = collect(args.paths)
    except FileNotFoundError as exc:
        print(f"collect.py: error: {exc}", file=sys.stderr)
        return 2
    first = args.paths[0]
    base = first if first.is_dir() else first.parent
    md, js = args.out_md or base / "report.md", args.out_json or base / "report.json"
    md.write_text(markdown(rows, problems))
    js.write_text(json.dumps({"rows": rows, "skipped": problems}, indent=2) + "\n")
    for p in problems:
        print(f"collect.py: {p}", file=sys.stderr)
    print(f"collect.py: {len(rows)} result(s) -> {md}, {js}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
