"""Shampoo (THEORY section 9) beyond the registry suite: accumulated statistics in training and in
the lazy-regime predictor against hand-written dense loops, the degree of homogeneity 1 - 4p, the
polar factor at p = 1/4, the Gram (analytic) form of the residual map and its infinite-width limit,
and the option errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_ngd as nn
from ntk_ngd.curvature import KernelSource, get_method
from ntk_ngd.layers import factors, from_params, to_params
import oracle


def network(C=1, widths=(7, 20, 18), act="tanh", sb=0.5, n=4, seed=0):
    model = nn.MLP(widths + (C,), act, sigma_b=sb)
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.normal(k2, (n, widths[0]))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    xt = jax.random.normal(k4, (3, widths[0]))
    return model, model.init(k1), x, xt, 0.5 * jax.random.normal(k3, (n, C))


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def power(S, rho, p):
    """(S + rho I)^{-p}; at rho = 0 the pseudo-power (eigenvalues above 1e-13 max)."""
    lam, U = np.linalg.eigh(S)
    lam = np.clip(lam, 0, None)
    keep = lam > 1e-13 * lam.max() if rho == 0 else np.ones_like(lam, bool)
    w = np.zeros_like(lam)
    w[keep] = (lam[keep] + rho) ** (-p)
    return (U * w) @ U.T


def matrix_gradients(model, blocks, x, y):
    """G_l = d loss / d W~_l (M_l, M_{l-1}+1) of loss = ||f - y||^2 / (2N), by autodiff."""
    loss = lambda b: 0.5 * jnp.sum((model.apply(to_params(b), x) - y) ** 2) / x.shape[0]
    return [np.asarray(g) for g in jax.grad(loss)([jnp.asarray(b) for b in blocks])]


@pytest.mark.parametrize("C,rho", [(1, 1e-3), (3, 1e-3), (1, 0.0)])
def test_accumulated_training_equals_dense_loop(C, rho):
    model, params, x, xt, y = network(C)
    lr, steps, p = 0.05, 3, 0.25
    res = nn.train(model, params, (x, y, xt, y[:3]), "shampoo", accumulate=True, lr=lr, steps=steps, damping=rho)
    blocks = [np.asarray(b) for b in from_params(params)]
    Ls = [np.zeros((b.shape[0],) * 2) for b in blocks]
    Rs = [np.zeros((b.shape[1],) * 2) for b in blocks]
    ft, fx = [], []
    for _ in range(steps):
        ft.append(np.asarray(model.apply(to_params(blocks), x)))
        fx.append(np.asarray(model.apply(to_params(blocks), xt)))
        Gs = matrix_gradients(model, blocks, x, y)
        for l, G in enumerate(Gs):
            Ls[l] = Ls[l] + G @ G.T
            Rs[l] = Rs[l] + G.T @ G
            blocks[l] = blocks[l] - lr * power(Ls[l], rho, p) @ G @ power(Rs[l], rho, p)
    ft.append(np.asarray(model.apply(to_params(blocks), x)))
    fx.append(np.asarray(model.apply(to_params(blocks), xt)))
    # rho = 0: pseudo-powers of the rank-deficient L_t, R_t, whose small nonzero eigenvalues (the change
    # of G between steps) carry a relative rounding error ~1e-16 lambda_max / lambda: a looser bound
    tol = 1e-10 if rho > 0 else 1e-8
    errs = [rel(res.f_train, np.stack(ft)), rel(res.f_test, np.stack(fx))]
    errs += [rel(b, blocks[l]) for l, b in enumerate(from_params(res.params))]
    print("accumulated training", C, rho, max(errs))
    assert max(errs) < tol, errs
    # the accumulation matters: the one-step rule gives another trajectory after step 1
    one = nn.train(model, params, (x, y), "shampoo", lr=lr, steps=steps, damping=rho)
    assert rel(one.f_train[1], res.f_train[1]) < 1e-10 and rel(one.f_train[2:], res.f_train[2:]) > 1e-6


def test_accumulated_predictor_equals_lazy_dense_loop():
    """method_predictor with accumulate=True: r_{t+1} = r_t - eta J_0 d_t, statistics accumulated from
    the fixed factors at init."""
    model, params, x, xt, y = network(C=3)
    rho, lr, steps, p = 1e-3, 0.05, 4, 0.25
    src = nn.empirical_source(model, params, x, xt)
    f0, f0x = model.apply(params, x), model.apply(params, xt)
    pred = nn.dynamics.method_predictor("shampoo", src, y, lr, rho, accumulate=True)(steps, f0, f0x)
    dense = nn.curvature.dense_problem(model, params, x, y)
    Jx = oracle.jacobian(model, params, xt)
    n = x.shape[0]
    shapes = [(m, k + 1) for k, m in zip(model.widths[:-1], model.widths[1:])]
    Ls = [np.zeros((m, m)) for m, _ in shapes]
    Rs = [np.zeros((k, k)) for _, k in shapes]
    r, fxt, rs, fxs = np.asarray(f0 - y).ravel(), np.asarray(f0x).ravel(), [], []
    for _ in range(steps + 1):
        rs.append(r.copy())
        fxs.append(fxt.copy())
        d = []
        for l, (m, k) in enumerate(shapes):
            G = (dense.layer(l).T @ r / n).reshape(m, k)
            Ls[l] += G @ G.T
            Rs[l] += G.T @ G
            d.append((power(Ls[l], rho, p) @ G @ power(Rs[l], rho, p)).ravel())
        d = np.concatenate(d)
        r, fxt = r - lr * dense.J @ d, fxt - lr * Jx @ d
    assert rel(pred.train - y[None], np.stack(rs).reshape(pred.train.shape)) < 1e-10
    assert rel(pred.test, np.stack(fxs).reshape(pred.test.shape)) < 1e-10


def test_state_protocol():
    model, params, x, _, y = network(C=3)
    fac, g = factors(model, params, x), model.apply(params, x) - y
    m = get_method("shampoo", accumulate=True)
    assert get_method("shampoo").init(fac, g, 0.0) == () and m.stateful and not m.linear
    s0 = m.init(fac, g, 0.0)
    assert [(a.shape, b.shape) for a, b in s0] == [((w, w), (k + 1, k + 1))
                                                   for k, w in zip(model.widths[:-1], model.widths[1:])]
    assert all(float(jnp.abs(a).max()) == 0 and float(jnp.abs(b).max()) == 0 for a, b in s0)
    s1 = m.update(s0, fac, g, 0.0, 0)
    # first step: the accumulated step is the one-step step (also with an empty state)
    for rho in (0.0, 1e-3):
        one = get_method("shampoo").direction(fac, g, rho)
        for a, b, c in zip(m.direction(fac, g, rho, s1), one, m.direction(fac, g, rho)):
            assert rel(a, b) < 1e-9 and rel(c, b) < 1e-14


@pytest.mark.parametrize("p", [0.125, 0.25, 0.375, 0.5])
def test_degree_of_homogeneity_is_one_minus_4p(p):
    """rho = 0: Phi(c r) = c^(1-4p) Phi(r) for c > 0, and Phi is odd; the fitted degree is 1 - 4p."""
    model, params, x, xt, y = network(C=3, widths=(9, 24, 22))
    src = nn.empirical_source(model, params, x, xt)
    phi = nn.residual_map("shampoo", src, 0.0, exponent=p)
    r = np.asarray(model.apply(params, x) - y)
    base = np.asarray(phi(r))
    cs = np.array([0.01, 0.3, 2.0, 50.0])
    norms = []
    for c in cs:
        out = np.asarray(phi(c * r))
        assert rel(out, c ** (1 - 4 * p) * base) < 1e-10
        norms.append(np.linalg.norm(out))
    slope = np.polyfit(np.log(cs), np.log(norms), 1)[0]
    assert abs(slope - (1 - 4 * p)) < 1e-9, slope
    assert rel(phi(-2.0 * r), -(2.0 ** (1 - 4 * p)) * base) < 1e-10
    # damping breaks it: at rho > 0 and tiny residuals the step is GD-like (degree 1)
    phd = nn.residual_map("shampoo", src, 1e-2, exponent=p)
    assert rel(phd(1e-8 * r), 1e-3 * np.asarray(phd(1e-5 * r))) < 1e-6
    assert rel(phd(1e-3 * r), 1e-3 * np.asarray(phd(r))) > 1e-2


def test_quarter_exponent_gives_the_polar_factor():
    """p = 1/4, rho = 0: every layer's step is U V^T (singular values 1, as many as rank G); with rho > 0
    the step stays in span(G) (x) span(G^T)."""
    for C, widths in [(1, (7, 20, 18)), (3, (9, 24, 22)), (2, (3, 30))]:
        model, params, x, _, y = network(C, widths)
        d = nn.ngd_direction(model, params, x, y, "shampoo", 0.0)
        Gs = matrix_gradients(model, from_params(params), x, y)
        for dl, G in zip(from_params(d), Gs):
            s = np.linalg.svd(np.asarray(dl), compute_uv=False)
            rank = np.linalg.matrix_rank(G)
            assert np.allclose(s[:rank], 1.0, atol=1e-10) and np.all(s[rank:] < 1e-10), (s, rank)
            U, sg, Vt = np.linalg.svd(G, full_matrices=False)
            assert rel(dl, U[:, :rank] @ Vt[:rank]) < 1e-10
        d = nn.ngd_direction(model, params, x, y, "shampoo", 1e-3)
        for dl, G in zip(from_params(d), Gs):
            U, sg, Vt = np.linalg.svd(G, full_matrices=False)
            rank = np.linalg.matrix_rank(G)
            U, Vt = U[:, :rank], Vt[:rank]
            dl = np.asarray(dl)
            inside = U @ (U.T @ dl @ Vt.T) @ Vt
            assert rel(inside, dl) < 1e-12
            assert rel(dl, (U * (sg[:rank] * (sg[:rank] ** 2 + 1e-3) ** -0.5)) @ Vt) < 1e-10


@pytest.mark.parametrize("C,rho", [(1, 0.0), (3, 0.0), (3, 1e-3)])
def test_gram_form_equals_structured_map(C, rho):
    """The Grams-only residual map (what analytic sources use) on the empirical Grams equals J d(r):
    train and test rows."""
    model, params, x, xt, y = network(C, act="erf")
    src = nn.empirical_source(model, params, x, xt)
    grams_only = KernelSource(model, src.train, src.cross)
    r = np.asarray(model.apply(params, x) - y)
    for p in (0.25, 0.375):
        a, b = nn.residual_map("shampoo", grams_only, rho, exponent=p), nn.residual_map("shampoo", src, rho, exponent=p)
        assert rel(a(r), b(r)) < 1e-8 and rel(a.test(r), b.test(r)) < 1e-8
        assert rel(a(r.ravel()), np.asarray(b(r)).ravel()) < 1e-8 and a(r.ravel()).shape == (r.size,)


def test_errors():
    for bad in (0, 0.0, -0.25, 0.51, 1.0):
        with pytest.raises(ValueError, match=r"exponent must be in \(0, 1/2\]"):
            get_method("shampoo", exponent=bad)
    with pytest.raises(ValueError, match="exponent must be float"):
        get_method("shampoo", exponent="quarter")
    with pytest.raises(ValueError, match="accumulate must be bool"):
        get_method("shampoo", accumulate=1)
    with pytest.raises(ValueError, match="no option"):
        get_method("shampoo", power=0.25)
    get_method("shampoo", exponent=0.5)
    model, params, x, xt, y = network()
    src = nn.empirical_source(model, params, x, xt)
    with pytest.raises(ValueError, match="depends on the residual"):
        nn.preconditioned_kernel("shampoo", src)
    with pytest.raises(ValueError, match="not linear"):
        get_method("shampoo").kernel(src, 0.0)
    m = get_method("shampoo", accumulate=True)
    fac, g = src.fac_train, model.apply(params, x) - y
    state = m.update(m.init(fac, g, 0.0), fac, g, 0.0, 0)
    with pytest.raises(ValueError, match="no analytic residual map with a state"):
        m.residual_map(nn.analytic_source(model, x), 0.0, state)
    assert m.alpha(model, 4) is None
    terms = m.memory_terms(100, 1, (784, 2048, 2048, 1))
    assert terms["accumulated statistics L_t, R_t (state)"] == 2 * 2048 ** 2 + 785 ** 2 + 2 * 2049 ** 2 + 1
    assert "accumulated statistics L_t, R_t (state)" not in get_method("shampoo").memory_terms(100, 1, (784, 2048, 2048, 1))
