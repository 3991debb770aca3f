"""Training loop, one-step theory check, cross-entropy against the dense oracle, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_ngd as nn
import oracle
from ntk_ngd.layers import from_params

from ntk_ngd.curvature import METHODS
from ntk_ngd.experiments import paper_methods

ISOTROPIC = [n for n in paper_methods() if METHODS[n].isotropy]  # exact, BD, BTD, K-FAC, unit-wise


@pytest.fixture(scope="module")
def wide():
    ds = nn.synthetic(16, 8, 32, seed=1)
    model = nn.MLP((32, 2048, 2048, 1))
    return model, model.init(jax.random.PRNGKey(0)), ds


def test_one_step_isotropic_methods_match_exact_ngd(wide):
    """rho -> 0, wide net: each isotropic method at eta = 1/alpha removes the residual in one step up
    to the finite-width error, like exact NGD; diagonal does not."""
    model, params, ds = wide
    ratio = {}
    for m in ISOTROPIC + ["diagonal"]:
        r = nn.train(model, params, ds, m, steps=1, damping=1e-10)
        ratio[m] = nn.one_step_ratio(r.f_train[1], r.f_train[0], ds.y_train)
    assert ratio["exact"] < 0.1, ratio
    for m in ISOTROPIC:
        assert ratio[m] < 0.25 and abs(ratio[m] - ratio["exact"]) < 0.2, ratio
    assert ratio["diagonal"] > 0.5, ratio


def test_kfac_one_step_follows_theory_alpha(wide):
    """K-FAC's alpha is (L-1)N + 1 = 33 here: eta = 1/33 converges in one step; the paper code's
    eta = 1/(N L) leaves |1 - 33/48| = 0.3125 of the residual, as the theory's alpha predicts."""
    model, params, ds = wide
    assert nn.isotropy_constant("kfac", model, 16) == 33
    assert nn.isotropy_constant("kfac", model, 16, convention="paper") == 48
    theory = nn.train(model, params, ds, "kfac", steps=1, damping=1e-10)
    paper = nn.train(model, params, ds, "kfac", lr="paper", steps=1, damping=1e-10)
    r_theory = nn.one_step_ratio(theory.f_train[1], theory.f_train[0], ds.y_train)
    r_paper = nn.one_step_ratio(paper.f_train[1], paper.f_train[0], ds.y_train)
    assert r_theory < 0.15
    assert abs(r_paper - (1 - 33 / 48)) < 0.1  # |1 - alpha_paper eta_paper| = 0 would be far off


def test_train_steps_equal_ngd_direction_updates():
    model = nn.MLP((6, 10, 10, 2), "erf", sigma_b=0.2)
    params = model.init(jax.random.PRNGKey(3))
    x = jax.random.normal(jax.random.PRNGKey(4), (5, 6))
    y = jax.random.normal(jax.random.PRNGKey(5), (5, 2))
    for method in ("exact", "kfac", "block_tridiagonal"):
        r = nn.train(model, params, (x, y), method, lr=0.3, steps=2, damping=1e-3)
        p = params
        for t in range(2):
            d = nn.ngd_direction(model, p, x, y, method, 1e-3)
            p = jax.tree_util.tree_map(lambda a, b: a - 0.3 * b, p, d)
            assert float(jnp.max(jnp.abs(model.apply(p, x) - r.f_train[t + 1]))) < 1e-12
        assert float(r.loss_train[0]) == pytest.approx(float(nn.mse(model.apply(params, x), y)))


@pytest.mark.parametrize("variant", ["exact", "exact_mse", "gd"])
def test_cross_entropy_directions_match_dense_oracle(variant):
    model = nn.MLP((6, 12, 12, 3), "relu", sigma_b=0.1)
    params = model.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 6))
    y = jax.nn.one_hot(jnp.array([0, 1, 2, 1, 0]), 3)
    rho = 1e-3
    d = nn.ngd_direction(model, params, x, y, variant, rho, loss="cross_entropy")
    d = np.concatenate([np.asarray(b).ravel() for b in from_params(d)])
    J = oracle.jacobian(model, params, x)
    f = model.apply(params, x)
    p = np.asarray(jax.nn.softmax(f))
    r = (p - np.asarray(y)).ravel()
    H = np.zeros((15, 15))
    for n in range(5):
        H[3 * n:3 * n + 3, 3 * n:3 * n + 3] = np.diag(p[n]) - np.outer(p[n], p[n])
    P = J.shape[1]
    if variant == "exact":
        ref = np.linalg.solve(J.T @ H @ J / 5 + rho * np.eye(P), J.T @ r / 5)
    elif variant == "exact_mse":
        target = np.linalg.solve(H + rho * np.eye(15), r)
        ref = np.linalg.solve(J.T @ J / 5 + rho * np.eye(P), J.T @ target / 5)
    else:
        ref = J.T @ r / 5
    assert np.linalg.norm(d - ref) / np.linalg.norm(ref) < 1e-9


def test_cross_entropy_training_reduces_loss():
    ds = nn.digits(classes=None, n_train=30, n_test=20, seed=0)
    model = nn.MLP((64, 256, 10))
    params = model.init(jax.random.PRNGKey(0))
    r = nn.train(model, params, ds, "exact", lr=1.0, steps=3, damping=1e-3, loss="cross_entropy")
    assert float(r.loss_train[-1]) < 0.5 * float(r.loss_train[0])


def test_bad_input_raises_clear_errors():
    model = nn.MLP((4, 8, 1))
    params = model.init(jax.random.PRNGKey(0))
    x, y = jnp.ones((3, 4)) / 2, jnp.zeros((3, 1))
    with pytest.raises(ValueError, match="shape"):
        nn.ngd_direction(model, params, jnp.ones((3, 5)), y, "exact")
    with pytest.raises(ValueError, match="y must have shape"):
        nn.ngd_direction(model, params, x, jnp.zeros((2, 1)), "exact")
    with pytest.raises(ValueError, match="NaN"):
        nn.ngd_direction(model, params, x.at[0, 0].set(jnp.nan), y, "exact")
    with pytest.raises(ValueError, match="NaN"):
        nn.ngd_direction(model, params, x, y.at[1, 0].set(jnp.inf), "exact")
    with pytest.raises(ValueError, match="damping"):
        nn.ngd_direction(model, params, x, y, "exact", -1e-3)
    with pytest.raises(ValueError, match="unknown method"):
        nn.ngd_direction(model, params, x, y, "adam")
    with pytest.raises(ValueError, match="width"):
        nn.MLP((4, 0, 1))
    with pytest.raises(ValueError, match="activation"):
        nn.MLP((4, 8, 1), "softsign")
    with pytest.raises(ValueError, match="layer 1"):
        nn.ngd_direction(model, [{"W": jnp.ones((8, 3)), "b": jnp.ones(8)}, params[1]], x, y, "exact")
    # K-FAC and unit-wise outside their stated conditions, unless forced
    narrow = nn.MLP((2, 8, 1))
    p2 = narrow.init(jax.random.PRNGKey(1))
    x2, y2 = jax.random.normal(jax.random.PRNGKey(2), (5, 2)), jnp.zeros((5, 1))
    with pytest.raises(ValueError, match="M_0 >= N"):
        nn.ngd_direction(narrow, p2, x2, y2, "kfac")
    with pytest.raises(ValueError, match="M_0 >= N"):
        nn.ngd_direction(narrow, p2, x2, y2, "unit_wise")
    nn.ngd_direction(narrow, p2, x2, y2, "kfac", force=True)
    multi = nn.MLP((4, 8, 2))
    with pytest.raises(ValueError, match="C = 1"):
        nn.ngd_direction(multi, multi.init(jax.random.PRNGKey(0)), x, jnp.zeros((3, 2)), "unit_wise")
    with pytest.raises(ValueError, match="N C <= M_l"):
        nn.ngd_direction(nn.MLP((4, 2, 1)), nn.MLP((4, 2, 1)).init(jax.random.PRNGKey(0)), x, y, "kfac")
    with pytest.raises(ValueError, match="damping_mode"):
        nn.ngd_direction(model, params, x, y, "kfac", damping_mode="sqrt")
    # singular systems where no pseudo-inverse meaning exists
    with pytest.raises(ValueError, match="damping > 0"):
        nn.ngd_direction(multi, multi.init(jax.random.PRNGKey(0)), x, jax.nn.one_hot(jnp.arange(3) % 2, 2),
                         "exact", 0.0, loss="cross_entropy")
    with pytest.raises(ValueError, match="C >= 2"):
        nn.ngd_direction(model, params, x, y, "exact", 1e-3, loss="cross_entropy")
    # block tri-diagonal at L = 3s + 2 and rho = 0: pseudo-inverse, with a warning
    deep = nn.MLP((4, 8, 1))
    with pytest.warns(UserWarning, match="pseudo-inverse"):
        nn.ngd_direction(deep, deep.init(jax.random.PRNGKey(0)), jax.random.normal(jax.random.PRNGKey(9), (3, 4)),
                         y, "block_tridiagonal", 0.0)
    with pytest.raises(ValueError, match="lr"):
        nn.train(model, params, (x, y), "exact", lr=-1.0, steps=1)


def test_custom_activation_uses_autodiff_derivative():
    model = nn.MLP((5, 9, 1), lambda u: jnp.sin(u) + 0.1 * u)
    params = model.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
    a = nn.empirical_layerwise_ntk(model, params, x)
    b = nn.autodiff_layer_kernels(model.apply, params, x)
    assert float(jnp.max(jnp.abs(a - b))) < 1e-12


def test_optimal_lr_of_a_nonlinear_method_is_refused_clearly():
    """No alpha and no Theta_G (the step is nonlinear in the residual): lr='optimal' says to give
    a number; a linear method without alpha uses 1/lambda_max of its measured Theta_G."""
    ds = nn.synthetic(6, 2, 5, seed=0)
    model = nn.MLP((5, 16, 1))
    params = model.init(jax.random.PRNGKey(0))
    for m in ("ngplus", "shampoo"):
        with pytest.raises(ValueError, match="nonlinear in the residual.*give a numeric lr"):
            nn.train(model, params, ds, m, lr="optimal", steps=1)
    lr = nn.train(model, params, ds, "ekfac", lr="optimal", steps=1, force=True).lr
    tg, _ = nn.preconditioned_kernel("ekfac", nn.empirical_source(model, params, ds.x_train), 0.0)
    assert lr == pytest.approx(1 / np.linalg.eigvalsh(np.asarray(tg))[-1], rel=1e-10)
