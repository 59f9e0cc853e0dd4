"""conv2d's Winograd F(2x2, 3x3) path (backends/_conv.py) on the backends that have it.

The path is only taken from WINOGRAD_MIN_CHANNELS channels on, which the op table's
small generated cases never reach: here the threshold is lowered to 1 and a spy checks
that the path ran. Values are checked against the float64 reference with the
rounding-error bound of the algorithm itself: gamma_k times the same computation on
absolute values (|A|ᵀ [(|G| |g| |G|ᵀ) ⊙ (|B|ᵀ |d| |B|)] |A| per tile), k the longest
chain of roundings (the transforms' few additions plus the GEMM's sum).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

import fastml
from fastml import layers
from fastml.backends import _conv

from optable import accelerated_backends

BACKENDS = [b for b in accelerated_backends() if b == "cython"]  # the ones with Winograd
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no backend with a Winograd path")

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)


def _windows(x, ph, pw, th, tw):
    """(n, c, th, tw, 4, 4): the padded plane's 4x4 windows at stride 2 (zero beyond)."""
    n, c, h, w = x.shape
    xp = np.zeros((n, c, 2 * th + 2, 2 * tw + 2))
    xp[:, :, ph:ph + h, pw:pw + w] = x
    return sliding_window_view(xp, (4, 4), axis=(2, 3))[:, :, ::2, ::2]


def _tiles_of(g, th, tw):
    """(n, o, th, tw, 2, 2): the 2x2 tiles of g (zero beyond its edge)."""
    n, o, ho, wo = g.shape
    gp = np.zeros((n, o, 2 * th, 2 * tw))
    gp[:, :, :ho, :wo] = g
    return gp.reshape(n, o, th, 2, tw, 2).transpose(0, 1, 2, 4, 3, 5)


def abs_forward(x, weight, ph, pw):
    """The Winograd forward run on |x|, |weight| and the transforms' |matrices|."""
    ho, wo = x.shape[2] + 2 * ph - 2, x.shape[3] + 2 * pw - 2
    th, tw = -(-ho // 2), -(-wo // 2)
    bt, g, at = abs(_BT), abs(_G), abs(_AT)
    v = bt @ abs(_windows(x, ph, pw, th, tw)) @ bt.T          # n c th tw 4 4
    u = g @ abs(weight.astype(float)) @ g.T                   # o c 4 4
    y = at @ np.einsum("ncijab,ocab->noijab", v, u) @ at.T    # n o th tw 2 2
    return y.transpose(0, 1, 2, 4, 3, 5).reshape(*y.shape[:2], 2 * th, 2 * tw)[:, :, :ho, :wo]


def abs_grad_weight(grad_out, x, ph, pw):
    """The Winograd grad_weight, Gᵀ [Σ (A γ Aᵀ) ⊙ (Bᵀ d B)] G, run on absolute values."""
    ho, wo = grad_out.shape[2:]
    th, tw = -(-ho // 2), -(-wo // 2)
    bt, g, at = abs(_BT), abs(_G), abs(_AT)
    v = bt @ abs(_windows(x, ph, pw, th, tw)) @ bt.T
    p = at.T @ abs(_tiles_of(grad_out.astype(float), th, tw)) @ at
    return g.T @ np.einsum("noijab,ncijab->ocab", p, v) @ g


def gamma(k, dtype):
    u = np.finfo(dtype).eps / 2
    return k * u / (1 - k * u)


def assert_within(actual, expected, bound, where):
    assert actual.shape == expected.shape == bound.shape, where
    err = np.abs(actual.astype(float) - expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else None
    assert np.all(err <= bound), (f"{where}: error {err[worst]:.3g} over the bound "
                                  f"{bound[worst]:.3g} at {worst}")


class Spy:
    """Counts the Winograd forward calls (conv2d and grad_x both make them)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = _conv._winograd_conv

        def spy(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(_conv, "_winograd_conv", spy)


@st.composite
def winograd_cases(draw):
    n, c, o = draw(st.integers(0, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, 3 - 2 * ph), 9))
    w = draw(st.integers(max(1, 3 - 2 * pw), 9))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    scale = 10.0 ** draw(st.integers(-3, 3))
    return n, c, o, h, w, (ph, pw), dtype, seed, scale


@pytest.mark.parametrize("backend", BACKENDS)
def test_winograd_within_its_rounding_bound(backend, monkeypatch):
    """conv2d and its backward by Winograd: within gamma_k of the abs-value algorithm
    of the float64 reference, on odd and even planes, padding 0..2 per side, bias or
    none, empty batches; and the path ran."""
    monkeypatch.setattr(_conv, "WINOGRAD_MIN_CHANNELS", 1)
    spy = Spy(monkeypatch)

    @settings(max_examples=60, deadline=None)
    @given(case=winograd_cases())
    def check(case):
        n, c, o, h, w, (ph, pw), dtype, seed, scale = case
        rng = np.random.default_rng(seed)
        x = (rng.standard_normal((n, c, h, w)) * scale).astype(dtype)
        weight = rng.standard_normal((o, c, 3, 3)).astype(dtype)
        bias = rng.standard_normal(o).astype(dtype) if seed % 2 else None
        ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
        g = rng.standard_normal((n, o, ho, wo)).astype(dtype)
        x64, w64, g64 = x.astype(float), weight.astype(float), g.astype(float)
        with fastml.use_backend("numpy"):
            y_ref = layers.conv2d(x64, w64, None if bias is None else bias.astype(float),
                                  padding=(ph, pw))
            gx_ref, gw_ref, gb_ref = layers.conv2d_backward(g64, x64, w64, padding=(ph, pw),
                                                           has_bias=True)
        before = spy.calls
        with fastml.use_backend(backend):
            y = layers.conv2d(x, weight, bias, padding=(ph, pw))
            gx, gw, gb = layers.conv2d_backward(g, x, weight, padding=(ph, pw), has_bias=True)
        assert (spy.calls > before) == (n > 0)  # a call per batch slice, none if empty
        for a in (y, gx, gw, gb):
            assert a.dtype == dtype
        # k: the transforms' roundings plus the GEMM's sum; in float64 the reference's
        # own dot products (of 9 C, 9 O and N Ho Wo terms) round as much, so add theirs
        f64 = dtype == np.float64
        tiles = n * -(-ho // 2) * (-(-wo // 2) + 1)
        bound_y = abs_forward(x64, w64, ph, pw) + (0 if bias is None else abs(bias)[:, None, None])
        assert_within(y, y_ref, gamma(c + 10 + f64 * 9 * c, dtype) * bound_y, "conv2d")
        flipped = w64[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        bound_gx = abs_forward(g64, flipped, 2 - ph, 2 - pw)
        assert_within(gx, gx_ref, gamma(o + 10 + f64 * 9 * o, dtype) * bound_gx, "grad_x")
        k = tiles + 10 + f64 * n * ho * wo
        assert_within(gw, gw_ref, gamma(k, dtype) * abs_grad_weight(g64, x64, ph, pw),
                      "grad_weight")
        assert_within(gb, gb_ref, gamma(k, dtype) * abs(g64).sum(axis=(0, 2, 3)), "grad_bias")

    check()
    assert spy.calls > 0


def _nonfinite_cases():
    """(name, x, weight, grad_out): a NaN, an inf, an inf weight, and finite values that
    overflow in the transforms (2e38 + 2e38) though the direct sums stay finite."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 6, 7)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    g = rng.standard_normal((2, 5, 6, 7)).astype(np.float32)
    cases = []
    for name, where, value in (("nan", (0, 1, 2, 3), np.nan), ("inf", (1, 0, 0, 6), np.inf),
                               ("ninf", (0, 3, 5, 0), -np.inf)):
        xi = x.copy()
        xi[where] = value
        gi = g.copy()
        gi[where[0], where[1] + 1, where[2], where[3]] = value
        cases.append((name, xi, w, gi))
    wi = w.copy()
    wi[2, 1, 1, 2] = np.inf
    cases.append(("inf weight", x, wi, g))
    big = x.copy()
    big[0, 0, 2:4, 2:4] = 2e38
    cases.append(("overflow", big, (w * 1e-3).astype(np.float32), g * np.float32(1e-3)))
    return cases


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", _nonfinite_cases(), ids=lambda c: c[0])
def test_winograd_nonfinite_results_are_the_direct_methods(backend, case, monkeypatch):
    """A result that is not all finite is computed again by im2col: NaN and ±inf come out
    exactly where the direct method puts them (a lone inf through the ± transforms
    would otherwise be NaN), and transform overflow never reaches a finite result."""
    name, x, w, g = case
    monkeypatch.setattr(_conv, "_SLICE_BYTES", 1)  # a slice per sample
    with fastml.use_backend(backend):
        monkeypatch.setattr(_conv, "WINOGRAD_MIN_CHANNELS", 10 ** 9)
        direct = (layers.conv2d(x, w, padding=1),
                  *layers.conv2d_backward(g, x, w, padding=1, has_bias=True))
        monkeypatch.setattr(_conv, "WINOGRAD_MIN_CHANNELS", 1)
        spy = Spy(monkeypatch)
        fast = (layers.conv2d(x, w, padding=1),
                *layers.conv2d_backward(g, x, w, padding=1, has_bias=True))
    assert spy.calls > 0
    assert not all(np.isfinite(a).all() for a in direct) or name == "overflow"
    for what, a, d in zip(("conv2d", "grad_x", "grad_weight", "grad_bias"), fast, direct):
        bad = ~np.isfinite(d)
        np.testing.assert_array_equal(a[bad], d[bad], err_msg=f"{name}: {what}")
        np.testing.assert_array_equal(np.isfinite(a), ~bad, err_msg=f"{name}: {what}")
        np.testing.assert_allclose(a[~bad], d[~bad], rtol=1e-4, atol=1e-4,
                                   err_msg=f"{name}: {what}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_winograd_kernels_check_their_shapes(backend):
    """The compiled transforms trust nothing: a tile array of the wrong shape, padding
    beyond 2, an empty output plane or a bias of the wrong length is a ValueError."""
    from fastml._cext import _layers
    x = np.zeros((2, 3, 5, 6), np.float32)
    tt = 3 * 4  # (5 + 2 - 2) / 2 -> 3 tile rows; (6 + 2 - 2) / 2 + 1 -> 4 tile columns
    _layers.winograd_input(x, 1, 1, np.zeros((16, 3, 2 * tt), np.float32))
    with pytest.raises(ValueError, match="expected"):
        _layers.winograd_input(x, 1, 1, np.zeros((16, 3, 2 * tt - 1), np.float32))
    with pytest.raises(ValueError, match="padding"):
        _layers.winograd_input(x, 3, 1, np.zeros((16, 3, 2 * tt), np.float32))
    with pytest.raises(ValueError, match="empty"):
        _layers.winograd_input(np.zeros((1, 1, 1, 5), np.float32), 0, 0,
                               np.zeros((16, 1, 0), np.float32))
    out = np.zeros((2, 4, 5, 6), np.float32)
    m = np.zeros((16, 4, 2 * tt), np.float32)
    assert _layers.winograd_output(m, None, out) is True
    with pytest.raises(ValueError, match="expected"):
        _layers.winograd_output(np.zeros((16, 3, 2 * tt), np.float32), None, out)
    with pytest.raises(ValueError, match="bias"):
        _layers.winograd_output(m, np.zeros(3, np.float32), out)
    with pytest.raises(ValueError, match="expected"):
        _layers.winograd_grad_output(out, np.zeros((16, 4, tt), np.float32))


def test_winograd_applies_only_where_it_is_exact_algebra():
    """3x3, stride 1, dilation 1, padding at most 2 (grad_x pads by 2 - p), enough
    channels; anything else goes to im2col."""
    x = np.zeros((1, 16, 8, 8), np.float32)
    w = np.zeros((16, 16, 3, 3), np.float32)
    assert _conv.winograd_applies(x, w, (1, 1), (1, 2), (1, 1))
    assert not _conv.winograd_applies(x, w, (2, 1), (1, 1), (1, 1))
    assert not _conv.winograd_applies(x, w, (1, 1), (3, 1), (1, 1))
    assert not _conv.winograd_applies(x, w, (1, 1), (1, 1), (1, 2))
    assert not _conv.winograd_applies(x, w[:, :, :2], (1, 1), (1, 1), (1, 1))
    assert not _conv.winograd_applies(x[:, :15], w[:, :15], (1, 1), (1, 1), (1, 1))
