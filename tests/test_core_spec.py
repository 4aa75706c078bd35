"""ConvSpec, Axis, dtypes and precision validation."""

import itertools

import numpy as np
import pytest

from parconv.dtypes import PRESETS, Precision, bits, canonical, numpy_dtype, parse_precision
from parconv.spec import Axis, ConvSpec


def brute_axis(a: Axis):
    """Count (h, r) pairs per real input index by brute force."""
    counts = np.zeros(a.in_size, dtype=int)
    for h in range(a.out_size):
        for r in range(a.kernel):
            x = a.stride * h + a.dilation * r - a.padding
            if 0 <= x < a.in_size:
                counts[x] += 1
    return counts


@pytest.mark.parametrize("n,k,s,p,d", [
    (n, k, s, p, d)
    for n, k, s, p, d in itertools.product([1, 2, 5, 8], [1, 2, 3, 4], [1, 2, 3], [0, 1, 2], [1, 2])
    if n + 2 * p >= d * (k - 1) + 1
])
def test_axis_matches_brute_force(n, k, s, p, d):
    a = Axis(n, k, s, p, d)
    assert a.out_size == (n + 2 * p - d * (k - 1) - 1) // s + 1
    counts = brute_axis(a)
    assert a.multiplicity == counts.max()
    assert a.used_count() == np.count_nonzero(counts)
    np.testing.assert_array_equal(a.used_mask(), counts > 0)
    for lo in range(a.out_size):
        for hi in range(lo + 1, a.out_size + 1):
            mask = a.used_mask(lo, hi)
            wlo, whi = a.window(lo, hi)
            idx = np.flatnonzero(mask)
            if idx.size:
                assert wlo <= idx.min() and idx.max() < whi
                assert wlo == idx.min() and whi == idx.max() + 1


def test_multiplicity_formula_without_dilation():
    # min(H, ceil(R/sigma)) in the interior for large inputs (THEORY §1)
    for r, s in itertools.product(range(1, 6), range(1, 4)):
        a = Axis(64, r, s, 0, 1)
        assert a.multiplicity == min(a.out_size, -(-r // s))


def test_stride_larger_than_kernel_skips_pixels():
    a = Axis(9, 1, 2, 0, 1)
    assert a.out_size == 5 and a.used_count() == 5 and a.multiplicity == 1
    spec = ConvSpec(2, 3, 4, 9, 1, stride=2)
    assert spec.input_used_elems == 2 * 3 * 5 * 5 < spec.input_elems


def test_spec_derived_sizes():
    s = ConvSpec(2, 3, 4, (10, 9), (3, 2), stride=2, padding=1, dilation=(1, 2))
    assert s.out_size == (5, 5)
    assert s.macs == 2 * 4 * 3 * 5 * 5 * 3 * 2
    assert s.input_shape == (2, 3, 10, 9) and s.filter_shape == (4, 3, 3, 2)
    assert s.output_shape == (2, 4, 5, 5)
    assert s.rho == s.multiplicity[0] * s.multiplicity[1]
    assert s.with_batch(7).B == 7 and s.with_batch(7).K == 4


@pytest.mark.parametrize("kwargs,needle", [
    (dict(batch=0), "batch"),
    (dict(in_channels=-1), "in_channels"),
    (dict(out_channels=0), "out_channels"),
    (dict(in_size=(0, 4)), "in_size"),
    (dict(kernel=(3, 0)), "kernel"),
    (dict(stride=0), "stride"),
    (dict(dilation=(1, -1)), "dilation"),
    (dict(padding=-1), "padding"),
    (dict(in_size=2, kernel=3), "empty output"),
    (dict(in_size=(1, 2, 3)), "in_size"),
])
def test_invalid_spec_names_field(kwargs, needle):
    base = dict(batch=1, in_channels=2, out_channels=2, in_size=5, kernel=3)
    base.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        ConvSpec(**base)


def test_dtypes_and_presets():
    assert bits("int8") == 8 and bits("bfloat16") == 16 and bits("float64") == 64
    assert canonical("bf16") == "bfloat16" and canonical(np.float32) == "float32"
    assert numpy_dtype("bfloat16").itemsize == 2
    p = parse_precision("int8")
    assert (p.p_input, p.p_filter, p.p_accum) == (8, 8, 32)
    assert parse_precision("bf16") == PRESETS["bf16"]
    q = parse_precision("bf16/bf16/fp32")
    assert (q.input, q.accum, q.output) == ("bfloat16", "float32", "float32")
    assert parse_precision("uint8/int8/int32/int32").is_integer


@pytest.mark.parametrize("args,needle", [
    (("int16", "int8", "int16"), "narrower"),
    (("float32", "float32", "float16"), "narrower"),
    (("int8", "float32", "float32"), "both be integer"),
    (("int8", "int8", "float32"), "integer accumulator"),
    (("float32", "float32", "int32"), "floating accumulator"),
    (("int9", "int8", "int32"), "unknown dtype"),
])
def test_invalid_precision(args, needle):
    with pytest.raises(ValueError, match=needle):
        Precision(*args)


def test_spec_accepts_the_cli_precision_strings():
    """ConvSpec(precision=...) takes every string --dtype takes, to the same Precision."""
    for name, preset in PRESETS.items():
        spec = ConvSpec(1, 2, 3, 5, 3, precision=name)
        assert spec.precision == preset == parse_precision(name)
    assert ConvSpec(1, 2, 3, 5, 3, precision="FP16").precision == PRESETS["fp16"]
    assert ConvSpec(1, 2, 3, 5, 3, precision="float32").precision == PRESETS["fp32"]
    custom = ConvSpec(1, 2, 3, 5, 3, precision="int8/int8/int32/int8").precision
    assert (custom.input, custom.accum, custom.output) == ("int8", "int32", "int8")
    assert ConvSpec(1, 2, 3, 5, 3).with_precision("bf16").precision == PRESETS["bf16"]
    with pytest.raises(ValueError, match="precision: dtype 'int4'.*preset"):
        ConvSpec(1, 2, 3, 5, 3, precision="int4")
    with pytest.raises(ValueError, match="precision.*narrower"):
        ConvSpec(1, 2, 3, 5, 3, precision="int16/int8/int16")
    with pytest.raises(ValueError, match="expected a Precision or a preset name"):
        ConvSpec(1, 2, 3, 5, 3, precision=32)


def test_parse_precision_rejects_garbage():
    with pytest.raises(ValueError, match="preset"):
        parse_precision("int8/int8")
