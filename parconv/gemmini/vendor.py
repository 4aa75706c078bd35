"""Re-implementation of the Gemmini C library's conv tile chooser (``tiled_conv_auto``).

Written from the description in ``docs/gemmini.md`` (no library code is copied). The
tile vector is ``[batches, porows, pocols, pochs, krows, kcols, kchs]``: batch,
pooled-output rows and cols, output channels, kernel rows and cols, input channels.

Algorithm
---------
1. Start from the whole layer ``[N, pool_out_rows, pool_out_cols, out_ch, k, k, in_ch]``.
2. Fit check in DIM-wide rows: inputs ``ceil(kchs/DIM)·batches·(irows>>ds)·(icols>>ds)``
   plus weights ``ceil(pochs/DIM)·krows·kcols·kchs`` must fit the scratchpad half
   (8192 rows), outputs ``ceil(pochs/DIM)·batches·orows·ocols`` the accumulator half
   (512 rows); ``irows = orows·stride + krows_dilated − 1`` (padding ignored).
3. Shrink while it does not fit: the largest entry (ties: earliest), skipping pocols
   when pocols ≤ DIM and porows > 1; channel entries go down to a multiple of DIM (or
   by DIM when already one, never below 1), other entries by 1.
4. Grow pocols by 1 while it fits; then sweep all entries +1 while anything still fits.
"""

from __future__ import annotations

from .config import DEFAULT, GemminiConfig

#: Names of the 7 tile entries, in the library's order.
TILE_FIELDS = ("batches", "porows", "pocols", "pochs", "krows", "kcols", "kchs")


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def tile_rows(tile: list[int], stride: int, kernel_dilation: int = 1, downsample: bool = False,
              pool_size: int = 1, pool_stride: int = 1,
              config: GemminiConfig = DEFAULT) -> tuple[int, int]:
    """(scratchpad rows, accumulator rows) the library charges a tile.

    Parameters
    ----------
    tile : ``[batches, porows, pocols, pochs, krows, kcols, kchs]``.
    stride, kernel_dilation : convolution stride and kernel dilation.
    downsample : the library's ``ds`` case (inputs loaded at every other pixel).
    pool_size, pool_stride : pooling (1, 1 when off).
    """
    dim = config.dim
    batches, porows, pocols, pochs, krows, kcols, kchs = tile
    orows = porows * pool_stride + pool_size - 1
    ocols = pocols * pool_stride + pool_size - 1
    krows_d = kernel_dilation * (krows - 1) + 1
    kcols_d = kernel_dilation * (kcols - 1) + 1
    irows = orows * stride + krows_d - 1
    icols = ocols * stride + kcols_d - 1
    ds = int(downsample)
    a = _ceil(kchs, dim) * batches * (irows >> ds) * (icols >> ds)
    b = _ceil(pochs, dim) * krows * kcols * kchs
    c = _ceil(pochs, dim) * batches * orows * ocols
    return a + b, c


def fits(tile: list[int], stride: int, kernel_dilation: int = 1, downsample: bool = False,
         pool_size: int = 1, pool_stride: int = 1, config: GemminiConfig = DEFAULT) -> bool:
    """The library's fit check (scratchpad and accumulator halves)."""
    sp, acc = tile_rows(tile, stride, kernel_dilation, downsample, pool_size, pool_stride, config)
    return sp <= config.sp_rows_tile and acc <= config.acc_rows_tile


def downsamples(in_dim: int, stride: int, padding: int, kernel_dim: int, pooled: bool) -> bool:
    """The library's ``ds`` rule: stride 2, 1×1 kernel, no padding, no pooling, even input."""
    return stride == 2 and kernel_dim == 1 and padding == 0 and not pooled and in_dim % 2 == 0


def vendor_tile(batch_size: int, in_dim: int, in_channels: int, out_channels: int, out_dim: int,
                stride: int, padding: int, kernel_dim: int, pool_size: int = 1,
                pool_stride: int = 0, pool_padding: int = 0,
                config: GemminiConfig | None = None, kernel_dilation: int = 1) -> list[int]:
    """The tile ``tiled_conv_auto`` chooses.

    Parameters
    ----------
    batch_size, in_dim, in_channels, out_channels, out_dim, stride, padding, kernel_dim :
        The layer (square input, output and kernel).
    pool_size, pool_stride, pool_padding :
        Fused max-pooling; ``pool_stride = 0`` means no pooling.
    config : the Gemmini build (default configuration when None).
    kernel_dilation : kernel dilation (widens the input window in the fit check).

    Returns
    -------
    list of int
        ``[batches, porows, pocols, pochs, krows, kcols, kchs]``.

    Raises
    ------
    ValueError
        For non-positive sizes or when even the smallest tile does not fit.
    """
    cfg = config or DEFAULT
    for name, v in (("batch_size", batch_size), ("in_dim", in_dim), ("in_channels", in_channels),
                    ("out_channels", out_channels), ("out_dim", out_dim), ("stride", stride),
                    ("kernel_dim", kernel_dim), ("kernel_dilation", kernel_dilation)):
        if v <= 0:
            raise ValueError(f"vendor_tile: {name} must be positive, got {v}")
    pooled = pool_stride != 0
    if not pooled:
        pool_size, pool_stride, pool_padding = 1, 1, 0
    pool_out_dim = (out_dim + 2 * pool_padding - pool_size) // pool_stride + 1
    ds = downsamples(in_dim, stride, padding, kernel_dim, pooled)
    dim = cfg.dim
    maxes = [batch_size, pool_out_dim, pool_out_dim, out_channels, kernel_dim, kernel_dim,
             in_channels]
    args = list(maxes)

    def ok(a: list[int]) -> bool:
        return fits(a, stride, kernel_dilation, ds, pool_size, pool_stride, cfg)

    while not ok(args):
        if all(a == 1 for a in args):
            raise ValueError("vendor_tile: even a 1x1x1 tile does not fit this Gemmini build")
        best, idx = -1, -1
        for i, a in enumerate(args):
            if i == 2 and args[2] <= dim and args[1] > 1:
                continue
            if a > best:
                best, idx = a, i
        if idx in (3, 6):
            args[idx] = args[idx] // dim * dim if args[idx] % dim else args[idx] - dim
            args[idx] = max(args[idx], 1)
        else:
            args[idx] -= 1

    # grow phase 1: pocols
    while args[2] + 1 <= maxes[2]:
        args[2] += 1
        if not ok(args):
            args[2] -= 1
            break
    # grow phase 2: sweep until nothing changes
    changed = True
    while changed:
        changed = False
        for i in range(7):
            args[i] += 1
            if args[i] <= maxes[i] and ok(args):
                changed = True
            else:
                args[i] -= 1
    return args
