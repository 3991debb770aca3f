"""Function-space operators and predictors against dense linearized dynamics (THEORY section 3)."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_ngd as nn
import oracle

from ntk_ngd.curvature import METHODS as REGISTRY
from ntk_ngd.experiments import paper_methods

METHODS = paper_methods()  # the paper's seven, from the registry


def unit_rows(x):
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def setup(C=1, widths=(9, 16, 16), act="relu", sb=0.0, n=5, n_test=3, seed=0):
    model = nn.MLP(widths + (C,), act, sigma_b=sb)
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = model.init(k[0])
    x = unit_rows(jax.random.normal(k[1], (n, widths[0])))
    xt = unit_rows(jax.random.normal(k[2], (n_test, widths[0])))
    y = 0.5 * jnp.sign(jax.random.normal(k[3], (n, C)))
    return model, params, x, xt, y


def dense_linearized(model, params, x, xt, y, method, rho, lr, steps, J, Jx):
    """Run theta_{t+1} = theta_t - lr (G + rho I)^+ J0^T (f_lin - y) / N on f_lin = f0 + J0 (theta - theta0)."""
    Pinv = oracle.inverse_preconditioner(model, params, x, method, rho, J=J)
    n = x.shape[0]
    f0, fx0 = np.asarray(model.apply(params, x)).ravel(), np.asarray(model.apply(params, xt)).ravel()
    dtheta = np.zeros(J.shape[1])
    tr, te = [], []
    for _ in range(steps + 1):
        f, fx = f0 + J @ dtheta, fx0 + Jx @ dtheta
        tr.append(f)
        te.append(fx)
        dtheta = dtheta - lr * Pinv @ (J.T @ (f - np.asarray(y).ravel()) / n)
    return np.array(tr), np.array(te)


@pytest.mark.parametrize("C", [1, 2])
@pytest.mark.parametrize("rho", [0.0, 1e-3])
def test_predictor_equals_dense_linearized_dynamics(C, rho):
    model, params, x, xt, y = setup(C)
    src = nn.empirical_source(model, params, x, xt)
    f0, fx0 = model.apply(params, x), model.apply(params, xt)
    scale = float(jnp.linalg.norm(f0 - y))
    errs = {}
    J, Jx = oracle.jacobian(model, params, x), oracle.jacobian(model, params, xt)
    for method in METHODS:
        opts = {"force": True} if method == "unit_wise" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tg, tx = nn.preconditioned_kernel(method, src, rho, **opts)
        lr = 0.5 / float(nn.spectrum(tg)[-1])
        pred = nn.predict(tg, tx, f0, fx0, y, lr, 6)
        ref_tr, ref_te = dense_linearized(model, params, x, xt, y, method, rho, lr, 6, J, Jx)
        errs[method] = max(np.abs(np.asarray(pred.train).reshape(7, -1) - ref_tr).max(),
                           np.abs(np.asarray(pred.test).reshape(7, -1) - ref_te).max()) / scale
    assert max(errs.values()) < 1e-10, errs


def test_predict_iterative_path_and_limits_match_eigen_path():
    """nn.predict (eigen path for a symmetric Theta_G, step-by-step iteration for a non-symmetric
    one), train AND test rows, against the dense numpy iteration f_{t+1} = f_t - eta Theta_G (f_t - y),
    f_{t+1}(x') = f_t(x') - eta Theta_G(x', X) (f_t - y) with Theta_G = J G^{-1} J^T / N and
    Theta_G(x', X) = J(x') G^{-1} J^T / N formed from the oracle Jacobian (G = blockdiag_l
    J_l^T J_l / N + rho I, block-diagonal NGD): 1e-10 relative to max |f_0 - y|."""
    C, rho, lr, T = 2, 1e-3, 0.2, 400
    model, params, x, xt, y = setup(C)
    src = nn.empirical_source(model, params, x, xt)
    tg, tx = nn.preconditioned_kernel("block_diagonal", src, rho)
    f0, fx0 = model.apply(params, x), model.apply(params, xt)
    J, Jx = oracle.jacobian(model, params, x), oracle.jacobian(model, params, xt)
    lay, _ = oracle.labels(model)
    n = x.shape[0]
    G = (J.T @ J / n) * (lay[:, None] == lay[None, :]) + rho * np.eye(J.shape[1])
    Ginv_Jt = np.linalg.solve(G, J.T)
    dense_tg, dense_tx = J @ Ginv_Jt / n, Jx @ Ginv_Jt / n
    assert np.abs(np.asarray(tg) - dense_tg).max() < 1e-10 * np.abs(dense_tg).max()
    yv = np.asarray(y).ravel()
    scale = float(np.abs(np.asarray(f0).ravel() - yv).max())

    def dense_iteration(theta, cross):
        f, ft, tr, te = np.asarray(f0).ravel(), np.asarray(fx0).ravel(), [], []
        for _ in range(T + 1):
            tr.append(f)
            te.append(ft)
            f, ft = f - lr * theta @ (f - yv), ft - lr * cross @ (f - yv)
        return np.array(tr), np.array(te)

    perturb = 1e-6 * np.triu(dense_tg, 1)   # non-symmetric (relative asymmetry 1e-6 > 1e-10): iterated
    errs = {}
    for name, pkg_tg, ref_tg in (("eigen", tg, dense_tg),
                                 ("iterate", tg + 1e-6 * jnp.triu(tg, 1), dense_tg + perturb)):
        pred = nn.predict(pkg_tg, tx, f0, fx0, y, lr, T)
        assert pred.train.shape == (T + 1, n, C) and pred.test.shape == (T + 1, xt.shape[0], C)
        ref_tr, ref_te = dense_iteration(ref_tg, dense_tx)
        errs[name] = (np.abs(np.asarray(pred.train).reshape(T + 1, -1) - ref_tr).max() / scale,
                      np.abs(np.asarray(pred.test).reshape(T + 1, -1) - ref_te).max() / scale)
    assert max(max(e) for e in errs.values()) < 1e-10, errs
    a = nn.predict(tg, tx, f0, fx0, y, lr, T)
    lim_tr, lim_te = nn.predict_limit(tg, tx, f0, fx0, y, lr=lr)
    assert float(jnp.max(jnp.abs(a.train[-1] - lim_tr))) < 1e-10
    assert float(jnp.max(jnp.abs(a.test[-1] - lim_te))) < 1e-10
    with pytest.raises(ValueError, match="unstable"):
        nn.predict_limit(tg, tx, f0, fx0, y, lr=3.0 / float(nn.spectrum(tg)[-1]))


def test_gd_continuous_time_is_the_small_step_limit():
    """nn.predict_gd_continuous against scipy.linalg.expm (Theta = J J^T from the oracle Jacobian):
    f_t - y = expm(-eta t Theta / N) (f_0 - y) and f_t(x') = f_0(x') - eta (Theta(x', X) / N)
    int_0^t expm(-eta s Theta / N) ds (f_0 - y), the integral the top-right block of
    expm(t [[-eta Theta / N, eta I], [0, 0]]): 1e-12 relative to max |f_0 - y|, t = 0 .. past
    convergence. Also the small-step limit of the discrete predictor (eta = 1e-3, 2000 steps)."""
    from scipy.linalg import expm
    model, params, x, xt, y = setup(2)
    f0, fx0 = model.apply(params, x), model.apply(params, xt)
    J, Jx = oracle.jacobian(model, params, x), oracle.jacobian(model, params, xt)
    theta, cross = J @ J.T, Jx @ J.T
    n, m = theta.shape[0], x.shape[0]
    r0 = np.asarray(f0 - y).ravel()
    scale = float(np.abs(r0).max())
    lr, times = 0.7, [0.0, 1e-3, 0.1, 1.0, 3.0, 20.0, 200.0]
    cont = nn.predict_gd_continuous(jnp.asarray(theta), jnp.asarray(cross), f0, fx0, y, lr, times)
    A = lr * theta / m
    aug = np.block([[-A, lr * np.eye(n)], [np.zeros((n, n)), np.zeros((n, n))]])
    err_tr, err_te = [], []
    for i, t in enumerate(times):
        E = expm(t * aug)
        ref_tr = np.asarray(y).ravel() + E[:n, :n] @ r0
        ref_te = np.asarray(fx0).ravel() - (cross / m) @ E[:n, n:] @ r0
        err_tr.append(np.abs(np.asarray(cont.train[i]).ravel() - ref_tr).max() / scale)
        err_te.append(np.abs(np.asarray(cont.test[i]).ravel() - ref_te).max() / scale)
    assert max(err_tr) < 1e-12 and max(err_te) < 1e-12, (err_tr, err_te)
    np.testing.assert_array_equal(np.asarray(cont.steps), times)
    # the discrete GD predictor with a small step approaches the flow (error O(eta))
    tg, tx = nn.preconditioned_kernel("gd", nn.empirical_source(model, params, x, xt))
    disc = nn.predict(tg, tx, f0, fx0, y, 1e-3, [2000])
    flow = nn.predict_gd_continuous(jnp.asarray(theta), jnp.asarray(cross), f0, fx0, y, 1.0, [2.0])
    assert float(jnp.max(jnp.abs(disc.train - flow.train))) < 1e-3 * scale
    assert float(jnp.max(jnp.abs(disc.test - flow.test))) < 1e-3 * scale


@pytest.mark.parametrize("L", list(range(1, 11)))
def test_isotropy_exact_bd_btd(L):
    model = nn.MLP((8,) + (24,) * (L - 1) + (1,), "tanh")
    params = model.init(jax.random.PRNGKey(L))
    x = unit_rows(jax.random.normal(jax.random.PRNGKey(100 + L), (6, 8)))
    src = nn.empirical_source(model, params, x)
    for method in ("exact", "block_diagonal", "block_tridiagonal"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tg, _ = nn.preconditioned_kernel(method, src, 1e-12)
        alpha = nn.isotropy_constant(method, model, 6)
        assert float(jnp.max(jnp.abs(tg - alpha * jnp.eye(6)))) < 1e-8, (method, alpha)
    assert nn.isotropy_constant("block_tridiagonal", model, 6) == pytest.approx(-(-L // 3))


def test_isotropy_kfac_wide_input_and_forster():
    for L in (1, 2, 3, 4):
        model = nn.MLP((32,) + (64,) * (L - 1) + (2,), "relu")
        params = model.init(jax.random.PRNGKey(L))
        x = unit_rows(jax.random.normal(jax.random.PRNGKey(7), (6, 32)))
        tg, _ = nn.preconditioned_kernel("kfac", nn.empirical_source(model, params, x), 1e-12)
        alpha = nn.isotropy_constant("kfac", model, 6)
        assert alpha == (L - 1) * 6 + 1
        assert nn.isotropy_error(tg, alpha) < 1e-8
    # M_0 < N: Forster inputs give M_0 + (L - 2) N + 1
    ds = nn.synthetic(12, 4, 8, seed=3, forster=True)
    model = nn.MLP((8, 256, 256, 1), "relu")
    params = model.init(jax.random.PRNGKey(0))
    src = nn.empirical_source(model, params, jnp.asarray(ds.x_train))
    tg, _ = nn.preconditioned_kernel("kfac", src, 1e-12, forster=True)
    alpha = nn.isotropy_constant("kfac", model, 12, forster=True)
    assert alpha == 8 + 12 + 1
    assert nn.isotropy_error(tg, alpha) < 1e-8
    # without Forster the first layer gives N diag(leverage): not isotropic
    raw = unit_rows(jax.random.normal(jax.random.PRNGKey(5), (12, 8)))
    tg, _ = nn.preconditioned_kernel("kfac", nn.empirical_source(model, params, raw), 1e-12)
    assert nn.isotropy_error(tg, alpha) > 1e-2


def test_unit_wise_isotropy_error_falls_like_inverse_sqrt_width():
    widths, seeds = [64, 128, 256, 512, 1024], range(4)
    errs = []
    for M in widths:
        e = []
        for s in seeds:
            model = nn.MLP((12, M, M, 1), "relu")
            params = model.init(jax.random.PRNGKey(s))
            x = unit_rows(jax.random.normal(jax.random.PRNGKey(50 + s), (8, 12)))
            tg, _ = nn.preconditioned_kernel("unit_wise", nn.empirical_source(model, params, x), 1e-4 / M ** 2)
            e.append(nn.isotropy_error(tg, nn.isotropy_constant("unit_wise", model, 8)))
        errs.append(np.mean(e))
    slope = np.polyfit(np.log(widths), np.log(errs), 1)[0]
    assert -0.7 < slope < -0.3, (slope, errs)


def test_diagonal_is_not_isotropic():
    model, params, x, _, _ = setup(1, widths=(9, 24, 24), n=6)
    tg, _ = nn.preconditioned_kernel("diagonal", nn.empirical_source(model, params, x), 1e-12)
    w = np.asarray(nn.spectrum(tg))
    assert w[-1] / w[0] > 2  # isotropic methods: 1 + O(1e-8); no eta makes |1 - eta lambda| small for all lambda
    assert nn.isotropy_constant("diagonal", model, 6) is None


def test_converged_test_predictions():
    """Converged test outputs (predict_limit on the package's operators at rho = 0) against dense
    references from the oracle Jacobian and numpy alone: exact NGD and GD give kernel regression
    f0(x') - Theta(x', X) Theta^{-1} (f0 - y), Theta = J J^T; BD the mean of the L layer-wise
    regressors (Theta_l = J_l J_l^T); BTD weights them by c_l / alpha, c = T^+ 1 (numpy pinv of
    the tri-diagonal ones), alpha = 1^T c; K-FAC f0(x') - Theta_G(x', X) Theta_G^+ (f0 - y) with
    Theta_G = J G^+ J^T / N, G^+ = blockdiag_l B_l^+ (x) A_{l-1}^+ built from a numpy forward pass
    (h~) and the Jacobian (delta_l = J_l(x) h~ / |h~|^2)."""
    model, params, x, xt, y = setup(1, widths=(9, 20, 20), n=6)
    src = nn.empirical_source(model, params, x, xt)
    f0, fx0 = np.asarray(model.apply(params, x)).ravel(), np.asarray(model.apply(params, xt)).ravel()
    J, Jx = oracle.jacobian(model, params, x), oracle.jacobian(model, params, xt)
    lay, _ = oracle.labels(model)
    L, n = model.depth, x.shape[0]
    r = f0 - np.asarray(y).ravel()
    th = [J[:, lay == l] @ J[:, lay == l].T for l in range(L)]
    thx = [Jx[:, lay == l] @ J[:, lay == l].T for l in range(L)]
    krr = fx0 - (Jx @ J.T) @ np.linalg.solve(J @ J.T, r)
    layerwise = [fx0 - thx[l] @ np.linalg.solve(th[l], r) for l in range(L)]
    T = (np.abs(np.subtract.outer(np.arange(L), np.arange(L))) <= 1).astype(float)
    c = np.linalg.pinv(T) @ np.ones(L)
    np.testing.assert_allclose(c, [0.0, 1.0, 0.0], atol=1e-14)   # L = 3: only the middle layer moves
    btd = sum(c[l] / c.sum() * layerwise[l] for l in range(L))

    # K-FAC, dense: h~_{l-1} by a numpy forward pass, delta_l from the Jacobian rows delta (x) h~
    def h_tilde(xs):
        h, out = np.asarray(xs), []
        for l, p in enumerate(params):
            out.append(np.concatenate([model.sigma_w * h / np.sqrt(h.shape[1]),
                                       np.full((h.shape[0], 1), model.sigma_b)], 1))
            u = out[-1] @ np.concatenate([np.asarray(p["W"]), np.asarray(p["b"])[:, None]], 1).T
            h = np.maximum(u, 0.0)   # relu
        return out

    hs = h_tilde(x)
    blocks = []
    for l in range(L):
        H = hs[l]
        Jl = J[:, lay == l].reshape(n, -1, H.shape[1])           # rows delta_n (x) h~_n, (N, M_l, M_{l-1} + 1)
        D = np.einsum("nij,nj->ni", Jl, H) / np.sum(H * H, 1)[:, None]
        assert np.abs(Jl - D[:, :, None] * H[:, None, :]).max() < 1e-12 * np.abs(Jl).max()
        A, B = H.T @ H / n, D.T @ D / n
        blocks.append(np.kron(np.linalg.pinv(B, rcond=1e-12, hermitian=True),
                              np.linalg.pinv(A, rcond=1e-12, hermitian=True)))
    from scipy.linalg import block_diag
    Ginv = block_diag(*blocks)
    tg_kfac, tx_kfac = J @ Ginv @ J.T / n, Jx @ Ginv @ J.T / n
    kfac = fx0 - tx_kfac @ np.linalg.pinv(tg_kfac, rcond=1e-12, hermitian=True) @ r
    # the package's K-FAC operators themselves (rho = 0) equal the dense ones
    tg_pkg, tx_pkg = nn.preconditioned_kernel("kfac", src, 0.0)
    assert np.abs(np.asarray(tg_pkg) - tg_kfac).max() < 1e-10 * np.abs(tg_kfac).max()
    assert np.abs(np.asarray(tx_pkg) - tx_kfac).max() < 1e-10 * np.abs(tx_kfac).max()

    ref = {"gd": krr, "exact": krr, "block_diagonal": np.mean(layerwise, 0), "block_tridiagonal": btd,
           "kfac": kfac}
    errs = {}
    for method, want in ref.items():
        tg, tx = nn.preconditioned_kernel(method, src, 0.0)
        got = np.asarray(nn.predict_limit(tg, tx, jnp.asarray(f0)[:, None], jnp.asarray(fx0)[:, None], y)[1]).ravel()
        errs[method] = np.abs(got - want).max() / np.abs(r).max()
    assert max(errs.values()) < 1e-10, errs
    assert np.abs(ref["block_diagonal"] - krr).max() > 1e-3 * np.abs(r).max()   # they differ
    assert np.abs(ref["kfac"] - krr).max() > 1e-3 * np.abs(r).max()


def test_analytic_source_operators():
    """Infinite-width Grams feed the same operators: isotropic at rho -> 0, and the empirical GD
    operator of a wide network is close to the analytic one."""
    model = nn.MLP((8, 2048, 2048, 1), "relu")
    x = unit_rows(jax.random.normal(jax.random.PRNGKey(0), (6, 8)))
    xt = unit_rows(jax.random.normal(jax.random.PRNGKey(1), (3, 8)))
    src = nn.analytic_source(model, x, xt)
    for method in [n for n in METHODS if REGISTRY[n].isotropy]:  # exact, BD, BTD, K-FAC, unit-wise
        tg, _ = nn.preconditioned_kernel(method, src, 1e-12)
        assert nn.isotropy_error(tg, nn.isotropy_constant(method, model, 6)) < 1e-8, method
    emp = nn.empirical_source(model, model.init(jax.random.PRNGKey(2)), x, xt)
    a, ax = nn.preconditioned_kernel("gd", src)
    e, ex = nn.preconditioned_kernel("gd", emp)
    assert float(jnp.linalg.norm(a - e) / jnp.linalg.norm(a)) < 0.1
    assert float(jnp.linalg.norm(ax - ex) / jnp.linalg.norm(ax)) < 0.1
