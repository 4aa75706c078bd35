"""The closed-form per-axis index math (parconv.spec.Axis, parconv.planner.plan.axis_table,
inequalities) against the array definitions it replaced, on small random axes including
stride larger than the dilated kernel, dilation and padding larger than the input."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from parconv.inequalities import _axis_usage, stride_classes
from parconv.planner.partition import block_sizes
from parconv.planner.plan import _block_of, axis_table
from parconv.spec import Axis


def _reads(a: Axis, lo: int, hi: int) -> np.ndarray:
    """Every real input index read by outputs [lo, hi), with repetition (old definition)."""
    h = np.arange(lo, hi)[:, None]
    r = np.arange(a.kernel)[None, :]
    x = (a.stride * h + a.dilation * r - a.padding).ravel()
    return x[(x >= 0) & (x < a.in_size)]


def _old_axis_table(axis: Axis, p: int):
    """The array implementation of plan.axis_table before the closed forms (verbatim)."""
    n_out, n_in = axis.out_size, axis.in_size
    h = np.repeat(np.arange(n_out, dtype=np.int64), axis.kernel)
    x = axis.input_index(h, np.tile(np.arange(axis.kernel, dtype=np.int64), n_out))
    keep = (x >= 0) & (x < n_in)
    blk = _block_of(h[keep], n_out, p)
    key = np.unique(blk * n_in + x[keep])
    rb, xr = key // n_in, key % n_in
    owner = _block_of(xr, n_in, p)
    need = np.bincount(rb, minlength=p)
    self_need = np.bincount(rb[owner == rb], minlength=p)
    sent = np.bincount(owner, minlength=p)
    used = np.bincount(_block_of(np.unique(xr), n_in, p), minlength=p)
    lo = np.full(p, n_in, dtype=np.int64)
    hi = np.full(p, -1, dtype=np.int64)
    np.minimum.at(lo, rb, xr)
    np.maximum.at(hi, rb, xr)
    win = np.where(need > 0, hi - lo + 1, 0)
    out, own = block_sizes(n_out, p), block_sizes(n_in, p)
    feats = np.stack([out, own, used, need, self_need, win], axis=1)
    _, inv = np.unique(feats, axis=0, return_inverse=True)
    inv = inv.ravel()
    cls_max = np.full(inv.max() + 1, -1, dtype=np.int64)
    np.maximum.at(cls_max, inv, np.arange(p))
    pk, cnt = np.unique(rb * p + owner, return_counts=True)
    return dict(out=out, own=own, used=used, need=need, self_need=self_need, sent=sent,
                win=win, classes=np.sort(cls_max), pairs=(pk // p, pk % p, cnt))


@st.composite
def axes(draw):
    kernel = draw(st.integers(1, 6))
    dil = draw(st.integers(1, 5))
    stride = draw(st.integers(1, 13))          # often larger than the dilated kernel
    pad = draw(st.integers(0, 25))             # up to several times the input
    ext = dil * (kernel - 1) + 1
    in_size = draw(st.integers(max(1, ext - 2 * pad), 40))
    return Axis(in_size, kernel, stride, pad, dil)


@settings(max_examples=300, deadline=None)
@given(axes(), st.data())
def test_axis_closed_forms_match_arrays(a, data):
    n_out = a.out_size
    full = _reads(a, 0, n_out)
    cnt = np.bincount(full, minlength=a.in_size)
    assert a.multiplicity == (int(cnt.max()) if full.size else 0)
    assert a.used_count() == np.count_nonzero(cnt)
    np.testing.assert_array_equal(a.used_mask(), cnt > 0)
    # the stride classes and usage of parconv.inequalities
    old_cls = {k: (int(cnt[k::a.stride].sum()), int(cnt[k::a.stride].max()))
               for k in range(a.stride) if cnt[k::a.stride].sum() > 0}
    assert stride_classes(a) == old_cls
    h = np.arange(n_out)[:, None]
    x = a.input_index(h, np.arange(a.kernel)[None, :])
    real = (x >= 0) & (x < a.in_size)
    assert _axis_usage(a) == (int(real.sum()), int(real.any(axis=0).sum()),
                              int(real.any(axis=1).sum()))
    # arbitrary output ranges and input ranges
    for _ in range(4):
        lo = data.draw(st.integers(0, n_out))
        hi = data.draw(st.integers(lo, n_out))
        il = data.draw(st.integers(0, a.in_size))
        ih = data.draw(st.integers(il, a.in_size))
        idx = np.unique(_reads(a, lo, hi))
        assert a.used_count(lo, hi) == idx.size
        np.testing.assert_array_equal(a.used_indices(lo, hi), idx)
        sub = idx[(idx >= il) & (idx < ih)]
        np.testing.assert_array_equal(a.used_indices(lo, hi, il, ih), sub)
        assert int(a.read_counts(lo, hi, il, ih)[0]) == sub.size
        assert a.window(lo, hi) == ((int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 0))
    # the planner's per-block table
    p = data.draw(st.integers(1, min(n_out, 9)))
    new, old = axis_table(a, p), _old_axis_table(a, p)
    for k in ("out", "own", "used", "need", "self_need", "sent", "win", "classes"):
        np.testing.assert_array_equal(getattr(new, k), old[k], err_msg=k)
    for x_new, x_old in zip(new.pairs, old["pairs"]):
        np.testing.assert_array_equal(x_new, x_old)
