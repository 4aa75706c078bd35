"""Fixed distributed-convolution cases per rank count (consumed by tests/mpi/run_cases.py).

Together they split every grid dimension, with uneven blocks, stride 2, padding,
dilation 2, even kernels, 1x1, the 7x7/2 stem, batch 1, halos across diagonal and
several neighbours, every precision preset, and grids that must be refused.
"""

from __future__ import annotations


def case(name, grid, batch, c, k, hw, kernel, stride=1, padding=0, dilation=1, dtype="fp32",
         seed=0, expect_error=None, corrupt_rank=None, source=None) -> dict:
    def pair(v):
        return [v, v] if isinstance(v, int) else list(v)

    d = {"name": name, "grid": grid, "seed": seed,
         "spec": {"batch": batch, "in_channels": c, "out_channels": k, "in_size": pair(hw),
                  "kernel": pair(kernel), "stride": pair(stride), "padding": pair(padding),
                  "dilation": pair(dilation), "dtype": dtype}}
    if expect_error:
        d["expect_error"] = expect_error
    if source:
        d["source"] = source
    if corrupt_rank is not None:
        d["corrupt_rank"] = corrupt_rank
    return d


CASES: dict[int, list[dict]] = {
    1: [
        case("p1 3x3 pad fp32", "1x1x1x1x1", 2, 3, 4, 6, 3, padding=1),
        case("p1 stem int8", "1x1x1x1x1", 1, 3, 4, (15, 13), 7, stride=2, padding=3, dtype="int8"),
        case("p1 dilation fp64", "1x1x1x1x1", 1, 2, 3, 9, 3, dilation=2, padding=2, dtype="fp64"),
    ],
    2: [
        case("b split uneven batch 3", "2x1x1x1x1", 3, 3, 4, 7, 3, padding=1, dtype="int8"),
        case("k split 1x1", "1x2x1x1x1", 2, 3, 5, 6, 1, dtype="bf16"),
        case("c split uneven", "1x1x2x1x1", 1, 5, 3, 7, 3, dtype="fp16"),
        case("h split stride2 pad", "1x1x1x2x1", 2, 2, 3, 11, 3, stride=2, padding=1, dtype="uint8"),
        case("w split even kernel", "1x1x1x1x2", 1, 2, 3, (5, 10), (2, 4), padding=(0, 1)),
        case("k finer than K refused", "1x2x1x1x1", 1, 3, 1, 5, 3, expect_error="out-channels (1)"),
    ],
    3: [
        case("h split 3 stride2", "1x1x1x3x1", 2, 3, 2, 13, 3, stride=2, padding=1, dtype="int8"),
        case("k split 3 c-sub", "1x3x1x1x1", 2, 4, 7, 6, 3, padding=1),
        case("scattered from rank 0", "1x1x1x1x3", 2, 3, 4, (5, 9), 3, padding=1, dtype="int8",
             source="scatter"),
        case("c split 3 uneven", "1x1x3x1x1", 1, 4, 5, 5, 3, padding=1, dtype="fp64"),
        case("b split 3 uneven", "3x1x1x1x1", 4, 2, 3, 6, 2),
        case("w split 3 dilation", "1x1x1x1x3", 1, 2, 2, (6, 14), 3, dilation=2, padding=1,
             dtype="bf16"),
        case("c finer than C refused", "1x1x3x1x1", 1, 2, 4, 5, 3, expect_error="in-channels (2)"),
    ],
    4: [
        case("2x2 plane diag halo dilation", "1x1x1x2x2", 1, 3, 4, 10, 3, dilation=2, padding=2,
             dtype="int8"),
        case("halo over several neighbours", "1x1x1x4x1", 2, 2, 3, (9, 6), (7, 3), padding=(3, 1)),
        case("k x c", "1x2x2x1x1", 2, 5, 6, 6, 3, padding=1, dtype="fp16"),
        case("b x w stem", "2x1x1x1x2", 2, 3, 4, 17, 7, stride=2, padding=3, dtype="uint8"),
        case("stride > kernel skips pixels", "1x1x1x2x2", 1, 2, 3, 11, 1, stride=3),
        case("grid size mismatch refused", "1x1x1x1x2", 1, 2, 2, 6, 3, expect_error="has 2 ranks"),
        case("bad local block refused", "1x2x2x1x1", 1, 4, 4, 6, 3, corrupt_rank=2,
             expect_error="rank 2: local input block has dtype"),
        case("int overflow refused", "1x1x2x2x1", 1, 16000, 1, 4, 3, padding=1, dtype="uint8",
             expect_error="integer overflow possible"),
    ],
    6: [
        case("3x2 plane uneven", "1x1x1x3x2", 2, 2, 3, (10, 7), 3, padding=1, dtype="int8"),
        case("k3 x c2", "1x3x2x1x1", 1, 5, 7, 5, 3, padding=1, source="scatter"),
        case("b2 x c3 1x1", "2x1x3x1x1", 3, 7, 4, 5, 1, dtype="bf16"),
        case("k2 x w3 stride2", "1x2x1x1x3", 2, 3, 4, (8, 13), 3, stride=2, dtype="fp64"),
    ],
    8: [
        case("b2 k2 c2", "2x2x2x1x1", 2, 4, 4, 5, 3, padding=1, dtype="int8"),
        case("4x2 plane multi-neighbour", "1x1x1x4x2", 1, 2, 2, (8, 8), (5, 5), padding=2),
        case("b2 h2 w2 dilation", "2x1x1x2x2", 2, 2, 3, 12, 3, dilation=2, padding=2,
             dtype="fp16"),
        case("all five split", "1x2x1x2x2", 1, 3, 4, 8, 2, padding=1, dtype="uint8"),
    ],
}
