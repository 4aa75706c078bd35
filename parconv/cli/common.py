"""Argument handling shared by the subcommands: layer/shape flags, dtype, memory,
procs, and output helpers (tables and JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..dtypes import PRESETS, parse_precision
from ..layers import layer
from ..spec import ConvSpec
from ..units import parse_bytes

DEFAULT_LAYER = "resnet50/layer3.1.conv2"


def _pair_arg(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or N,M, got {text!r}")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from None
    return (vals[0], vals[-1])


def add_layer_args(p: argparse.ArgumentParser, default_batch: int = 1) -> None:
    """``--layer`` or explicit shape flags, ``--batch`` and ``--dtype``."""
    g = p.add_argument_group("layer", "a built-in layer (--layer) or an explicit shape")
    g.add_argument("--layer", help=f"built-in layer, e.g. resnet50/layer3.0.conv2 (default "
                   f"{DEFAULT_LAYER} when no shape flags are given)")
    g.add_argument("--in-channels", type=int, metavar="C")
    g.add_argument("--out-channels", type=int, metavar="K")
    g.add_argument("--input", type=_pair_arg, metavar="H,W", help="input height,width")
    g.add_argument("--kernel", type=_pair_arg, metavar="R,S", default=None)
    g.add_argument("--stride", type=_pair_arg, metavar="SH,SW", default=None)
    g.add_argument("--padding", type=_pair_arg, metavar="PH,PW", default=None)
    g.add_argument("--dilation", type=_pair_arg, metavar="DH,DW", default=None)
    g.add_argument("--batch", type=int, default=default_batch, help=f"batch size (default {default_batch})")
    g.add_argument("--dtype", default="fp32",
                   help=f"precision preset ({', '.join(PRESETS)}) or IN/FILTER/ACC[/OUT], "
                        "e.g. int8 = int8/int8/int32 (default fp32)")


def add_memory_arg(p: argparse.ArgumentParser, default: str | None = None, help_: str = "") -> None:
    p.add_argument("--memory", default=default, type=str,
                   help=help_ or "fast memory per processor, e.g. 256KiB, 1MiB")


def add_procs_arg(p: argparse.ArgumentParser, default: int | None = None) -> None:
    p.add_argument("--procs", type=int, default=default, help="number of processors P")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write JSON (to FILE, or stdout when no FILE is given) instead of a table")


def spec_from_args(args: argparse.Namespace) -> ConvSpec:
    """Build the layer from ``--layer`` or the shape flags.

    Raises
    ------
    ValueError
        Naming the missing or invalid flag.
    """
    precision = parse_precision(args.dtype)
    shape_flags = [args.in_channels, args.out_channels, args.input]
    if args.batch is None or args.batch <= 0:
        raise ValueError(f"--batch must be positive, got {args.batch}")
    if args.layer and any(v is not None for v in shape_flags):
        raise ValueError("give either --layer or the shape flags (--in-channels ...), not both")
    if args.layer or not any(v is not None for v in shape_flags):
        geometry = [f for f, v in (("--kernel", args.kernel), ("--stride", args.stride),
                                   ("--padding", args.padding), ("--dilation", args.dilation))
                    if v is not None]
        if geometry:  # would be ignored: a built-in layer has its own geometry
            verb = "applies" if len(geometry) == 1 else "apply"
            raise ValueError(f"{', '.join(geometry)} {verb} to an explicit shape only: give "
                             "--in-channels, --out-channels and --input too (a built-in "
                             "--layer has its own kernel, stride, padding and dilation)")
        return layer(args.layer or DEFAULT_LAYER, args.batch, precision)
    missing = [f for f, v in zip(("--in-channels", "--out-channels", "--input"), shape_flags) if v is None]
    if missing:
        raise ValueError(f"explicit shape needs {', '.join(missing)}")
    return ConvSpec(args.batch, args.in_channels, args.out_channels, args.input,
                    args.kernel or (1, 1), args.stride or (1, 1), args.padding or (0, 0),
                    args.dilation or (1, 1), precision, "custom")


PASS_CHOICES = ("forward", "dgrad", "wgrad", "step")


def add_pass_args(p: argparse.ArgumentParser, what: str = "plan") -> None:
    """``--pass`` and ``--recompute-window`` (training passes)."""
    p.add_argument("--pass", dest="pass_", default="forward", choices=PASS_CHOICES,
                   help=f"pass to {what}: forward (default), dgrad (input gradient), wgrad "
                        "(filter gradient) or step (forward + dgrad + wgrad on one grid). "
                        "Other than forward, --dtype names a training precision (fp32, bf16, "
                        "fp16, fp64: 16-bit activations, weights and gradients with fp32 "
                        "accumulation); integer training is refused")
    p.add_argument("--recompute-window", action="store_true",
                   help="step: do not keep the forward's input window for wgrad; gather it "
                        "again (more bytes, less memory between the passes)")


def pass_spec_from_args(args: argparse.Namespace) -> ConvSpec:
    """:func:`spec_from_args`, with ``--dtype`` read as a training precision
    (:func:`parconv.passes.training_precision`) when ``--pass`` is not ``forward``.

    Raises
    ------
    ValueError
        For integer training (``integer training is not supported``).
    """
    spec = spec_from_args(args)
    if getattr(args, "pass_", "forward") == "forward":
        return spec
    from ..passes import training_precision

    return spec.with_precision(training_precision(args.dtype).forward_precision)


def memory_from_args(args: argparse.Namespace) -> int | None:
    """``--memory`` in bytes (None when not given)."""
    return None if args.memory is None else parse_bytes(args.memory)


def emit_json(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``--json FILE`` or stdout."""
    text = json.dumps(payload, indent=2, default=_json_default)
    if args.json in (None, "-"):
        sys.stdout.write(text + "\n")
    else:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain aligned text table."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        return f"{c:.4g}" if abs(c) < 1e6 else f"{c:.4e}"
    return str(c)


def add_machine_args(p: argparse.ArgumentParser) -> None:
    """``--machine``, ``--ranks-per-node``, ``--overlap`` of the time model
    (:mod:`parconv.timemodel`, docs/timemodel.md)."""
    p.add_argument("--machine", default=None, metavar="PRESET|FILE",
                   help="time model: a preset (ib-hdr, ib-ndr, this-machine) or a machine file "
                        "from `parconv calibrate` (JSON/TOML); reports predicted seconds per "
                        "rank and phase")
    p.add_argument("--ranks-per-node", type=int, default=None, metavar="N",
                   help="override the machine's ranks per node")
    p.add_argument("--overlap", action="store_true",
                   help="time model: communication hidden behind compute "
                        "(pack + max(comm, compute) per rank) instead of phases in sequence")


def machine_from_args(args: argparse.Namespace):
    """The :class:`parconv.timemodel.Machine` of ``--machine`` (None without it)."""
    if getattr(args, "machine", None) is None:
        if getattr(args, "ranks_per_node", None) is not None or getattr(args, "overlap", False):
            raise ValueError("--ranks-per-node and --overlap need --machine")
        return None
    from ..timemodel import load_machine

    m = load_machine(args.machine)
    if args.ranks_per_node is not None:
        m = m.with_ranks_per_node(args.ranks_per_node)
    return m


def time_rows(pred) -> list[list[Any]]:
    """Table rows: predicted seconds per phase (max / mean / min over ranks, busiest rank)."""
    b = pred.busiest_rank
    rows = []
    for ph, v in pred.summary().items():
        busy = pred.rank_seconds[b] if ph == "total" else pred.phase_seconds(ph)[b]
        rows.append([ph, f"{v['max'] * 1e3:.4g}", f"{v['mean'] * 1e3:.4g}", f"{v['min'] * 1e3:.4g}",
                     f"{busy * 1e3:.4g}"])
    return rows


TIME_HEADER = ["phase (predicted)", "max ms", "mean ms", "min ms", "busiest rank ms"]
