"""Shared CLI argument handling."""

import argparse

import pytest

from parconv.cli import build_parser, main
from parconv.cli.common import add_layer_args, add_memory_arg, memory_from_args, spec_from_args
from parconv.units import format_bytes, parse_bytes


def _parse(argv):
    p = argparse.ArgumentParser()
    add_layer_args(p)
    add_memory_arg(p)
    return p.parse_args(argv)


def test_layer_and_shape_flags():
    s = spec_from_args(_parse(["--layer", "resnet50/layer3.0.conv2", "--batch", "4", "--dtype", "int8"]))
    assert s.name == "resnet50/layer3.0.conv2" and s.B == 4 and s.precision.p_input == 8
    s = spec_from_args(_parse(["--in-channels", "3", "--out-channels", "8", "--input", "9,7",
                               "--kernel", "3", "--stride", "2,1", "--padding", "1",
                               "--dilation", "1,2", "--dtype", "bf16/bf16/fp32"]))
    assert (s.C, s.K, s.in_size, s.kernel, s.stride, s.padding, s.dilation) == \
        (3, 8, (9, 7), (3, 3), (2, 1), (1, 1), (1, 2))
    assert s.precision.input == "bfloat16"


@pytest.mark.parametrize("argv,needle", [
    (["--in-channels", "3"], "--out-channels, --input"),
    (["--layer", "resnet50/conv1", "--in-channels", "3"], "not both"),
    (["--batch", "0"], "--batch"),
    (["--dtype", "int4"], "dtype"),
    (["--in-channels", "3", "--out-channels", "2", "--input", "2", "--kernel", "5"], "empty output"),
])
def test_bad_flags_name_the_problem(argv, needle):
    with pytest.raises(ValueError, match=needle):
        spec_from_args(_parse(argv))


def test_memory_parsing():
    assert memory_from_args(_parse(["--memory", "256KiB"])) == 256 * 1024
    assert parse_bytes("1MiB") == 1 << 20 and parse_bytes("64kB") == 64000 and parse_bytes(4096) == 4096
    for bad in ("-1KiB", "0", "12 parsecs", "KiB"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    assert format_bytes(1536) == "1.50 KiB" and format_bytes(10) == "10 B"


def test_parser_builds_and_main_reports_errors(capsys):
    parser = build_parser()
    assert parser.prog == "parconv"
    with pytest.raises(SystemExit):
        main([])
