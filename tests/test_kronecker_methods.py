"""FOOF, EKFAC and TNT: the closed forms of their function-space operators (THEORY section 9, the
module docstrings) against dense float64 constructions from the Jacobian, their constants against
the measured operators, and their conditions."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_ngd as nn
from ntk_ngd.curvature import dense_problem, get_method
import oracle


def net(widths, act="relu", sb=0.0, n=4, seed=0, unit=True):
    model = nn.MLP(widths, act, sigma_b=sb)
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(k2, (n, widths[0]))
    if unit:
        x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    return model, model.init(k1), x


def dense_theta_g(method, model, params, x, rho=0.0):
    """J G^+ J^T / N from the method's dense reference (G built from the dense Jacobian)."""
    C = model.widths[-1]
    y = jnp.zeros((x.shape[0], C))
    dense = dense_problem(model, params, x, y)
    return dense.J @ get_method(method, force=True).to_dense(dense, rho) @ dense.J.T / x.shape[0]


def layer_deltas(model, params, x):
    """delta_l(x_n) (L, N, M_l, C) and h~_{l-1}(x_n) from the package's factors (checked against
    the dense Jacobian by test_model / test_methods)."""
    fac = nn.empirical_source(model, params, x).fac_train
    return [np.asarray(D) for D in fac.D], [np.asarray(H) for H in fac.H]


# ----------------------------------------------------------------------------- FOOF
@pytest.mark.parametrize("act,sb,C", [("relu", 0.0, 1), ("erf", 0.3, 2), ("tanh", 0.5, 1)])
def test_foof_operator_is_the_diagonal_of_the_delta_grams(act, sb, C):
    """Full-rank layer inputs (M_0 >= N): Theta_G = sum_l blockdiag_n(D_n^T D_n), with D_n the
    (M_l, C) backward signals of sample n; the last layer contributes I."""
    model, params, x = net((6, 16, 15, C), act, sb)
    tg = dense_theta_g("foof", model, params, x)
    D, H = layer_deltas(model, params, x)
    n = x.shape[0]
    assert all(np.linalg.matrix_rank(h) == n for h in H)  # the closed form's condition
    ref = np.zeros((n * C, n * C))
    for Dl in D:
        for i in range(n):
            ref[i * C:(i + 1) * C, i * C:(i + 1) * C] += Dl[i].T @ Dl[i]
    assert np.linalg.norm(tg - ref) / np.linalg.norm(ref) < 1e-10
    assert np.allclose(np.asarray(nn.preconditioned_kernel("foof", nn.empirical_source(model, params, x), 0.0)[0]),
                       ref, rtol=1e-9, atol=1e-12)


def test_foof_alpha_is_the_wide_operator_and_the_relu_closed_form():
    """alpha = sum_l B_l(x, x): L for relu at sigma_w^2 = 2, sigma_b = 0 (closed form), and the
    analytic operator on unit-norm inputs is alpha I."""
    for L in (2, 3, 4):
        model = nn.MLP((5,) + (64,) * (L - 1) + (1,), "relu", sigma_w=2 ** 0.5)
        assert get_method("foof").alpha(model, 4) == pytest.approx(L, rel=1e-12)
    model, _, x = net((5, 64, 64, 1), "erf", 0.3)
    a = get_method("foof").alpha(model, 4)
    tg, _ = nn.preconditioned_kernel("foof", nn.analytic_source(model, x), 0.0)
    assert np.asarray(tg) == pytest.approx(a * np.eye(4), rel=1e-10, abs=1e-10)
    assert a != pytest.approx(3.0, rel=1e-3)  # erf with bias: not L


# ----------------------------------------------------------------------------- TNT
def test_tnt_operator_closed_form_and_exact_last_layer():
    """Hidden layers with full-rank inputs: Theta_G,l = N diag(tr Theta_l / (N Theta_l(n, n)));
    the last layer gives exactly I; L = 1 is exactly isotropic with alpha = 1."""
    model, params, x = net((6, 16, 15, 1), "tanh", 0.4)
    n = x.shape[0]
    tg = dense_theta_g("tnt", model, params, x)
    th = np.asarray(nn.empirical_layerwise_ntk(model, params, x))  # (L, N, N)
    ref = np.eye(n)  # last layer
    for t in th[:-1]:
        ref = ref + np.diag(np.trace(t) / np.diag(t))
    assert np.linalg.norm(tg - ref) / np.linalg.norm(ref) < 1e-10
    model1, params1, x1 = net((6, 1), "relu", 0.0)
    assert dense_theta_g("tnt", model1, params1, x1) == pytest.approx(np.eye(4), abs=1e-12)
    assert get_method("tnt").alpha(model1, 4) == 1.0


def test_tnt_alpha_is_the_wide_operator():
    model, _, x = net((5, 64, 64, 1), "erf", 0.3)
    a = get_method("tnt").alpha(model, 4)
    assert a == (model.depth - 1) * 4 + 1
    tg, _ = nn.preconditioned_kernel("tnt", nn.analytic_source(model, x), 0.0)
    assert np.asarray(tg) == pytest.approx(a * np.eye(4), rel=1e-10, abs=1e-10)


# ----------------------------------------------------------------------------- EKFAC
@pytest.mark.parametrize("C", [1, 3])
def test_ekfac_is_kfac_for_one_layer(C):
    """L = 1 with expected statistics: delta = I_C, so EKFAC's second moments are K-FAC's
    eigenvalues (tikhonov damping), at rho = 0 and rho > 0."""
    model, params, x = net((6, C), "relu", 0.0)
    y = jnp.zeros((4, C))
    for rho in (0.0, 1e-2):
        d_e = oracle.flat_direction(nn.ngd_direction(model, params, x, y + 0.3, "ekfac", rho))
        d_k = oracle.flat_direction(nn.ngd_direction(model, params, x, y + 0.3, "kfac", rho))
        assert np.linalg.norm(d_e - d_k) / np.linalg.norm(d_k) < 1e-10


def test_ekfac_layer_traces_are_kfacs_and_the_operator_is_not_isotropic():
    """tr Theta_G,l = #(s_ij > 0) = rank B_l rank A_l, K-FAC's trace (N^2 for a full-rank hidden
    layer, N for the last, C = 1), while Theta_G itself is not a multiple of I."""
    model, params, x = net((6, 16, 15, 1), "erf", 0.3)
    n = x.shape[0]
    tg_e = dense_theta_g("ekfac", model, params, x)
    tg_k = dense_theta_g("kfac", model, params, x)
    assert np.trace(tg_e) == pytest.approx(np.trace(tg_k), rel=1e-9)
    assert np.trace(tg_e) == pytest.approx(2 * n * n + n, rel=1e-9)
    assert np.linalg.norm(tg_e - np.trace(tg_e) / n * np.eye(n)) > 1e-2 * np.linalg.norm(tg_e)
    assert get_method("ekfac").alpha(model, n) is None


# ----------------------------------------------------------------------------- conditions
@pytest.mark.parametrize("name", ["foof", "tnt"])
def test_conditions_refuse_rank_deficient_inputs(name):
    model, params, x = net((3, 9, 8, 1), n=5)
    y = jnp.zeros((5, 1))
    with pytest.raises(ValueError, match=rf"{name} needs M_0 >= N \(M_0=3, N=5\).*force=True"):
        nn.ngd_direction(model, params, x, y, name, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = nn.ngd_direction(model, params, x, y + 1.0, get_method(name, force=True), 0.0)
    assert all(np.isfinite(np.asarray(b["W"])).all() for b in d)


def test_statistics_options_are_validated():
    with pytest.raises(ValueError, match="statistics must be one of"):
        get_method("tnt", statistics="fisher")
    with pytest.raises(ValueError, match="samples"):
        nn.ngd_direction(*net((6, 9, 3))[:2], jnp.ones((4, 6)), jnp.zeros((4, 3)),
                         get_method("ekfac", statistics="sampled", samples=2), 1e-3)
    with pytest.raises(ValueError, match="depends on the residual"):
        model, params, x = net((6, 9, 1))
        nn.preconditioned_kernel(get_method("tnt", statistics="empirical"),
                                 nn.empirical_source(model, params, x), 0.0)
