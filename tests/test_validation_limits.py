"""Validation and planning of absurd sizes: memory and time independent of the spatial
extents (10^9), exact sizes beyond int64 or a clean refusal, and clear messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parconv.dtypes import parse_precision
from parconv.planner.partition import Grid
from parconv.planner.plan import MAX_PROCS, check_plannable, plan
from parconv.reference import AccumulatorOverflow, reference_for_spec
from parconv.spec import MAX_KERNEL, ConvSpec

ROOT = Path(os.environ.get("VAL_ROOT") or Path(__file__).resolve().parents[1])
#: Address-space cap of the child (the old array code needed 7.5-15 GiB for these).
LIMIT_AS = 3 << 30
#: Peak resident memory allowed for one `parconv plan` (imports are about 110 MB).
MAX_RSS_MB = 400

# Peak RSS from VmHWM, the high-water mark of this process's own address space: Linux
# carries the forking parent's peak into a child's ru_maxrss across exec, so a large
# pytest process would inflate ru_maxrss.
_CHILD = """
import json, sys, time
from parconv.cli import main
t = time.perf_counter()
rc = main(sys.argv[1:])
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
print(json.dumps({"rc": rc, "secs": time.perf_counter() - t,
                  "rss_mb": int(hwm.split()[1]) / 1024}), file=sys.stderr)
"""


def _limit() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


def run_plan(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, dict]:
    """`parconv plan ARGS` in a child capped at LIMIT_AS; returns the process and
    {rc, secs (planning, imports excluded), rss_mb (peak)}."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _CHILD, "plan", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT, preexec_fn=_limit)
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("{"), proc.stderr[-2000:]
    return proc, json.loads(lines[-1])


GIGA = "1000000000"
SHAPE = ("--in-channels", "1", "--out-channels", "1")


@pytest.mark.parametrize("args,recv,total", [
    (("--input", f"{GIGA},1"), 4, 12),
    (("--input", "1,1", "--padding", f"{GIGA},0"), 8, 16),
    (("--input", f"{GIGA},1", "--kernel", "3,1", "--stride", "7,1", "--dilation", "5,1",
      "--padding", GIGA + ",0"), None, None),
])
def test_plan_of_giga_extents_is_small_and_fast(args, recv, total):
    proc, m = run_plan(*SHAPE, *args, "--procs", "4", "--json")
    assert m["rc"] == 0, proc.stderr
    assert m["rss_mb"] < MAX_RSS_MB and m["secs"] < 20, m
    out = json.loads(proc.stdout)
    assert out["procs"] == 4 and len(out["ranks"]) == 4
    if recv is not None:
        assert (out["max_rank_recv_bytes"], out["total_recv_bytes"]) == (recv, total)


def test_plan_of_huge_2d_layer_refuses_cleanly():
    """10^9 x 10^9 input: 2**62 bytes; the byte figures over 64 ranks exceed int64."""
    proc, m = run_plan(*SHAPE, "--input", f"{GIGA},{GIGA}", "--kernel", "3", "--procs", "64")
    assert m["rc"] == 2 and m["rss_mb"] < MAX_RSS_MB and m["secs"] < 20, m
    msg = proc.stderr.strip().splitlines()[:-1]
    assert len(msg) == 1 and "too large to plan exactly" in msg[0], proc.stderr


def test_int64_overflowing_layer_is_refused_with_exact_bytes():
    """B = C = K = 2**31 on 2x2: |In| = |Out| = 2**64, |F| = 2**62 elements; fp32 totals
    2**67 + 2**64 bytes (int64 used to wrap to 136 GiB or negative figures)."""
    proc, m = run_plan("--batch", "2147483648", "--in-channels", "2147483648",
                       "--out-channels", "2147483648", "--input", "2,2", "--procs", "4")
    assert m["rc"] == 2, proc.stdout[:2000]
    assert f"{4 * (2**64 + 2**62 + 2**64)} bytes" in proc.stderr
    spec = ConvSpec(2**31, 2**31, 2**31, 2, 1)
    assert (spec.input_elems, spec.filter_elems, spec.output_elems) == (2**64, 2**62, 2**64)
    with pytest.raises(ValueError, match="int64"):
        plan(spec, 4)


def test_guards_name_the_limit():
    spec = ConvSpec(1, 1, 1, (10**9, 1), (3, 1))
    with pytest.raises(ValueError, match="at most"):
        check_plannable(spec, MAX_PROCS + 1)
    with pytest.raises(ValueError, match="kernel"):
        ConvSpec(1, 1, 1, (2 * MAX_KERNEL, 1), (MAX_KERNEL + 1, 1))
    with pytest.raises(ValueError, match="blocks x taps"):
        check_plannable(ConvSpec(1, 1, 1, (10**9, 1), (10**6, 1)), 64)
    with pytest.raises(ValueError, match="2\\*\\*60"):
        ConvSpec(1, 1, 1, (2**61, 1), 1)


def test_grid_parse_non_ascii_digit_is_a_clear_error():
    with pytest.raises(ValueError, match="five positive integers"):
        Grid.parse("1x1x1x1x\u00b3")


def test_narrow_output_overflow_names_the_output_type():
    spec = ConvSpec(1, 64, 1, 3, 3, precision=parse_precision("int8/int8/int32/int8"))
    x = np.full(spec.input_shape, 127, np.int8)
    w = np.full(spec.filter_shape, 127, np.int8)
    with pytest.raises(AccumulatorOverflow, match="int8 output type") as exc:
        reference_for_spec(spec, x, w)
    assert "accumulator" not in str(exc.value)
