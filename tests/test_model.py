"""MLP (THEORY section 1) against a plain numpy float64 forward pass, the params layout and the init law.

    h_0 = x,  u_l = sigma_w / sqrt(M_{l-1}) W_l h_{l-1} + sigma_b b_l,  h_l = phi(u_l),  f = u_L
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf as scipy_erf

from ntk_ngd.model import MLP

NUMPY_PHI = {"relu": lambda u: np.maximum(u, 0.0), "erf": scipy_erf, "tanh": np.tanh, "linear": lambda u: u}


def numpy_forward(widths, act, sigma_w, sigma_b, params, x):
    """The forward pass of THEORY section 1 in numpy float64, from the weights alone."""
    h = np.asarray(x, np.float64)
    L = len(widths) - 1
    for l in range(L):
        W = np.asarray(params[l]["W"], np.float64)
        b = np.asarray(params[l]["b"], np.float64)
        u = sigma_w / np.sqrt(widths[l]) * (h @ W.T) + sigma_b * b
        h = NUMPY_PHI[act](u) if l < L - 1 else u
    return h


def _numpy_params(widths, rng):
    return [{"W": rng.standard_normal((m, k)), "b": rng.standard_normal(m)}
            for k, m in zip(widths[:-1], widths[1:])]


@pytest.mark.parametrize("act", ["relu", "erf", "tanh", "linear"])
@pytest.mark.parametrize("widths", [(5, 3), (7, 11, 2), (6, 9, 13, 1), (4, 8, 5, 7, 3)])
@pytest.mark.parametrize("sigma_b", [0.0, 0.7])
def test_apply_matches_numpy_forward(act, widths, sigma_b):
    """MLP.apply == the numpy forward pass to 1e-13 relative (max abs error / max |f|), for the
    model's own init and for numpy-drawn weights; depths 1-4, C = 1..3, bias off and on."""
    sigma_w = 1.3
    model = MLP(widths, act, sigma_w, sigma_b)
    rng = np.random.default_rng(len(widths) * 10 + widths[0])
    x = rng.standard_normal((9, widths[0])) * np.linspace(0.2, 3.0, 9)[:, None]   # unequal input norms
    for params in (model.init(jax.random.PRNGKey(3)), _numpy_params(widths, rng)):
        ours = np.asarray(model.apply(params, jnp.asarray(x)))
        assert ours.dtype == np.float64 and ours.shape == (9, widths[-1])
        ref = numpy_forward(widths, act, sigma_w, sigma_b, params, x)
        err = np.abs(ours - ref).max() / np.abs(ref).max()
        assert err < 1e-13, err
        if act == "relu" or act == "linear":   # positive homogeneity / linearity of these networks
            if sigma_b == 0.0:
                np.testing.assert_allclose(np.asarray(model.apply(params, jnp.asarray(2.5 * x))), 2.5 * ref,
                                           rtol=1e-13, atol=1e-13 * np.abs(ref).max())


def test_apply_depth_one_is_affine():
    """L = 1: f(x) = sigma_w / sqrt(M_0) W x + sigma_b b, whatever the activation (never applied)."""
    rng = np.random.default_rng(0)
    W, b = rng.standard_normal((3, 6)), rng.standard_normal(3)
    x = rng.standard_normal((4, 6))
    for act in ("relu", "erf", "tanh", "linear"):
        f = np.asarray(MLP((6, 3), act, 0.9, 0.4).apply([{"W": W, "b": b}], jnp.asarray(x)))
        np.testing.assert_allclose(f, 0.9 / np.sqrt(6) * x @ W.T + 0.4 * b, rtol=1e-14, atol=1e-15)


def test_callable_activation_matches_numpy():
    """A callable activation is applied as given (here sin) at every hidden layer and not at the output."""
    widths = (5, 10, 7, 2)
    rng = np.random.default_rng(1)
    params, x = _numpy_params(widths, rng), rng.standard_normal((6, 5))
    f = np.asarray(MLP(widths, jnp.sin, 1.1, 0.3).apply(params, jnp.asarray(x)))
    h = x
    for l, p in enumerate(params):
        u = 1.1 / np.sqrt(widths[l]) * h @ p["W"].T + 0.3 * p["b"]
        h = np.sin(u) if l < 2 else u
    assert np.abs(f - h).max() < 1e-13 * np.abs(h).max()


def test_params_layout():
    """init returns a list of L dicts {"W": (M_l, M_{l-1}), "b": (M_l,)} of float64 arrays."""
    widths = (7, 5, 4, 3)
    model = MLP(widths, "tanh")
    params = model.init(jax.random.PRNGKey(0))
    assert isinstance(params, list) and len(params) == model.depth == 3
    for l, p in enumerate(params):
        assert isinstance(p, dict) and set(p) == {"W", "b"}
        assert p["W"].shape == (widths[l + 1], widths[l]) and p["b"].shape == (widths[l + 1],)
        assert p["W"].dtype == jnp.float64 and p["b"].dtype == jnp.float64
    assert model.n_params == sum(m * (k + 1) for k, m in zip(widths[:-1], widths[1:])) == 40 + 24 + 15
    model.check_params(params)
    bad = [dict(p) for p in params]
    bad[1]["W"] = bad[1]["W"].T
    with pytest.raises(ValueError, match="layer 2"):
        model.check_params(bad)


def test_init_is_standard_normal():
    """Entries i.i.d. N(0, 1), loosely: mean, variance, kurtosis within 5 standard errors; layers and
    W vs b not correlated; a different key gives different weights, the same key the same."""
    model = MLP((300, 400, 200, 1), "relu")
    params = model.init(jax.random.PRNGKey(42))
    flat_w = [np.asarray(p["W"]).ravel() for p in params]
    allv = np.concatenate(flat_w + [np.asarray(p["b"]) for p in params])
    n = allv.size
    assert abs(allv.mean()) < 5 / np.sqrt(n)
    assert abs(allv.var() - 1.0) < 5 * np.sqrt(2.0 / n)
    assert abs(np.mean(allv ** 4) - 3.0) < 5 * np.sqrt(96.0 / n)
    for w in flat_w[:2]:                                   # each big layer on its own
        assert abs(w.mean()) < 5 / np.sqrt(w.size) and abs(w.var() - 1) < 5 * np.sqrt(2.0 / w.size)
        assert np.mean(np.abs(w) < 1.0) == pytest.approx(0.6826894921370859, abs=5 * 0.47 / np.sqrt(w.size))
    k = 200 * 400
    corr = np.corrcoef(flat_w[0][:k], flat_w[1][:k])[0, 1]
    assert abs(corr) < 5 / np.sqrt(k)
    b0 = np.asarray(params[0]["b"])
    assert abs(np.corrcoef(b0, flat_w[0][:b0.size])[0, 1]) < 5 / np.sqrt(b0.size)
    again = model.init(jax.random.PRNGKey(42))
    other = model.init(jax.random.PRNGKey(43))
    np.testing.assert_array_equal(np.asarray(again[1]["W"]), np.asarray(params[1]["W"]))
    assert not np.allclose(np.asarray(other[1]["W"]), np.asarray(params[1]["W"]))
