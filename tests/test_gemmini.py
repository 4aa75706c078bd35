"""Gemmini: the vendor tile chooser, configuration files, C export, CLI."""

from __future__ import annotations

import json

import pytest

from parconv.cli import main
from parconv.dtypes import PRESETS
from parconv.gemmini import GemminiConfig, Plan, load_config, vendor_tile
from parconv.gemmini.export import c_snippet
from parconv.gemmini.vendor import fits, tile_rows
from parconv.layers import layer, suite


@pytest.mark.parametrize("args, expected", [
    ((1, 56, 64, 64, 56, 1, 1, 3), [1, 22, 23, 16, 3, 3, 64]),
    ((1, 14, 256, 256, 14, 1, 1, 3), [1, 14, 14, 32, 3, 3, 240]),
    ((1, 7, 512, 512, 7, 1, 1, 3), [1, 7, 7, 112, 3, 3, 119]),
    ((1, 56, 64, 256, 56, 1, 0, 1), [1, 22, 23, 16, 1, 1, 64]),
])
def test_vendor_examples(args, expected):
    assert vendor_tile(*args) == expected


def test_vendor_56_accumulator_binds():
    sp, acc = tile_rows([1, 22, 23, 16, 3, 3, 64], stride=1)
    assert acc == 506 and acc <= 512
    assert 0.35 < sp / 8192 < 0.37


@pytest.mark.parametrize("batch", [1, 4])
def test_vendor_tiles_fit_and_are_maximal(batch):
    """Every entry is at its maximum or one more does not fit (the grow sweep's fixed point)."""
    for s in suite("resnet50", batch, PRESETS["int8"], unique=True):
        t = vendor_tile(s.B, s.in_size[0], s.C, s.K, s.H, s.stride[0], s.padding[0], s.R)
        ds = s.stride[0] == 2 and s.R == 1 and s.padding[0] == 0 and s.in_size[0] % 2 == 0
        assert fits(t, s.stride[0], 1, ds)
        maxes = [s.B, s.H, s.W, s.K, s.R, s.S, s.C]
        for i in range(7):
            bigger = list(t)
            bigger[i] += 1
            assert bigger[i] > maxes[i] or not fits(bigger, s.stride[0], 1, ds), (s.name, t, i)


def test_vendor_pooling_and_config():
    # pooling shrinks the pooled output dims in the start vector
    t = vendor_tile(1, 56, 64, 64, 56, 1, 1, 3, pool_size=3, pool_stride=2, pool_padding=1)
    assert t[1] <= 28 and t[2] <= 28
    # a bigger accumulator allows bigger output tiles
    big = vendor_tile(1, 56, 64, 64, 56, 1, 1, 3, config=GemminiConfig(acc_rows=4096))
    assert big[1] * big[2] * big[3] > 22 * 23 * 16
    with pytest.raises(ValueError, match="in_dim"):
        vendor_tile(1, 0, 64, 64, 56, 1, 1, 3)


def test_config_default_and_halves():
    c = GemminiConfig()
    assert (c.dim, c.sp_rows, c.acc_rows, c.sp_rows_tile, c.acc_rows_tile) == (16, 16384, 1024, 8192, 512)
    assert GemminiConfig(double_buffered=False).acc_rows_tile == 1024
    assert load_config(None) == c


def test_config_files(tmp_path):
    t = tmp_path / "g.toml"
    t.write_text("dim = 32\nacc_rows = 2048\ndram_latency = 64\n")
    c = load_config(t)
    assert (c.dim, c.acc_rows, c.dram_latency, c.sp_banks) == (32, 2048, 64, 4)
    t2 = tmp_path / "g2.toml"
    t2.write_text("[gemmini]\nsp_bank_rows = 1024\n")
    assert load_config(t2).sp_bank_rows == 1024
    j = tmp_path / "g.json"
    j.write_text(json.dumps({"dim": 8, "double_buffered": False}))
    c = load_config(j)
    assert c.dim == 8 and not c.double_buffered


@pytest.mark.parametrize("text, suffix, match", [
    ("dimm = 16\n", ".toml", "dimm"),
    ('{"acc_rows": "big"}', ".json", "acc_rows"),
    ('{"dim": -4}', ".json", "'dim'"),
    ('{"input_type": "fp32"}', ".json", "input_type"),
    ('{"double_buffered": 1}', ".json", "double_buffered"),
    ("dim = [", ".toml", "parse error"),
    ("dim = 16", ".yaml", ".toml or .json"),
])
def test_config_errors_name_the_field(tmp_path, text, suffix, match):
    p = tmp_path / f"bad{suffix}"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(p)


def test_plan_validation():
    with pytest.raises(ValueError, match="innermost"):
        Plan((1, 1, 1, 1, 1, 1, 1), ("r", "b", "h", "w", "k", "s", "c"), "parconv")
    with pytest.raises(ValueError, match="policy"):
        Plan((1, 1, 1, 1, 1, 1, 1), policy="lru")


def test_c_snippet():
    spec = layer("resnet50/layer1.0.conv2", 1, PRESETS["int8"])
    text = c_snippet(spec, [1, 22, 23, 16, 3, 3, 64], relu=True)
    assert "tiled_conv(" in text and text.rstrip().endswith("WS);")
    assert ("/*batches=*/1, /*porows=*/22, /*pocols=*/23, /*pochs=*/16, /*krows=*/3, "
            "/*kcols=*/3, /*kchs=*/64") in text
    assert "/*in_dim=*/56" in text and "/*padding=*/1" in text and "RELU" in text
    # argument order: layer, flags, tile factors, arrays, activation, pooling, type
    order = ["batch_size", "in_dim", "in_channels", "out_channels", "out_dim", "stride",
             "input_dilation", "kernel_dilation", "padding", "kernel_dim", "wrot180",
             "trans_weight_0132", "batches", "kchs", "input, weights, bias, output",
             "relu6_shift", "pool_size", "pool_stride", "pool_padding", "WS"]
    pos = [text.index(k) for k in order]
    assert pos == sorted(pos)
    d = c_snippet({"batch_size": 2, "in_dim": 7, "in_channels": 3, "out_channels": 4,
                   "out_dim": 7, "stride": 1, "padding": 1, "kernel_dim": 3}, [1] * 7)
    assert "/*batch_size=*/2" in d
    with pytest.raises(ValueError, match="in_dim"):
        c_snippet({"batch_size": 2}, [1] * 7)
    with pytest.raises(ValueError, match="7 positive"):
        c_snippet(spec, [1, 2, 3])


def test_cli_json(tmp_path, capsys):
    out = tmp_path / "g.json"
    assert main(["gemmini", "--layer", "resnet50/layer3.0.conv3", "--batch", "1",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    for side in ("vendor", "parconv"):
        assert set(data[side]) >= {"tile", "dram_bytes", "cycles", "utilisation"}
        assert len(data[side]["tile"]) == 7
        assert data[side]["dram_bytes"]["total"] == sum(
            v for k, v in data[side]["dram_bytes"].items() if k != "total")
    assert data["vendor"]["tile"] == vendor_tile(1, 14, 256, 1024, 14, 1, 0, 1)
    assert data["speedup"] == pytest.approx(data["vendor"]["cycles"] / data["parconv"]["cycles"])
    assert data["parconv"]["dram_bytes"]["total"] <= data["vendor"]["dram_bytes"]["total"]


def test_cli_table_and_errors(tmp_path, capsys):
    assert main(["gemmini", "--in-channels", "20", "--out-channels", "24", "--input", "9,9",
                 "--kernel", "3", "--padding", "1", "--emit-c"]) == 0
    text = capsys.readouterr().out
    assert "modelled cycles" in text and "tiled_conv(" in text and "speedup" in text
    assert main(["gemmini", "--in-channels", "4", "--out-channels", "4", "--input", "9,9",
                 "--kernel", "3,1"]) == 2
    assert "square kernels" in capsys.readouterr().err
    assert main(["gemmini", "--layer", "resnet50/conv1", "--dtype", "fp32"]) == 2
    assert "int8" in capsys.readouterr().err
    cfg = tmp_path / "c.toml"
    cfg.write_text("acc_rows = 'x'\n")
    assert main(["gemmini", "--layer", "resnet50/conv1", "--config", str(cfg)]) == 2
    assert "acc_rows" in capsys.readouterr().err
